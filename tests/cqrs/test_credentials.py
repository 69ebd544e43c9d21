"""Separate credentials on RabbitMQ: a query-side user answers queries but may not send
commands, and a refused publish is one clear configuration error, never a retry loop — from a
direct send, from the outbox relay (which stops, leaving its rows pending) and from a handler
(the app fails and the message waits in its queue)."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import pytest
from structlog.testing import capture_logs

from contracts.orders import GetOrder, OrderView, PlaceOrder
from framework import (
    AccessRefused,
    App,
    AppConfig,
    Command,
    ConfigurationError,
    Context,
    Event,
    Outbound,
    Service,
)
from framework.bus import Bus, PublishNext
from framework.store import store_from_url
from framework.worker import EXIT_CONFIGURATION, serve
from tests.support.broker import RabbitmqctlError, list_queues, rabbitmqctl, vhost_of


def with_user(url: str, user: str, password: str) -> str:
    """``url`` logging in as ``user`` instead."""
    parts = urlsplit(url)
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{parts.hostname}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


MakeUser = Callable[..., str]


@pytest.fixture
def make_user(amqp_url: str, prefix: str) -> Iterator[MakeUser]:
    """``make_user(name, configure=, write=, read=)``: a user of the test vhost with those
    permission regexes, as a URL; every user made is deleted after the test."""
    vhost = vhost_of(amqp_url)
    if vhost == "/":
        pytest.skip("needs the per-run test vhost (rabbitmqctl)")
    made: list[str] = []

    def make(name: str, *, configure: str, write: str, read: str) -> str:
        user, password = f"{prefix}-{name}", secrets.token_hex(8)
        try:
            rabbitmqctl("add_user", user, password)
        except RabbitmqctlError as exc:
            pytest.skip(f"rabbitmqctl add_user failed: {exc}")
        made.append(user)
        rabbitmqctl("set_permissions", "-p", vhost, user, configure, write, read)
        return with_user(amqp_url, user, password)

    try:
        yield make
    finally:
        for user in made:
            with contextlib.suppress(RabbitmqctlError):
                rabbitmqctl("delete_user", user)


@pytest.fixture
def reader_url(make_user: MakeUser, prefix: str) -> str:
    """A query-side user of the test vhost: may read the app's queues and write only to the
    queries exchange and the default exchange (for replies)."""
    return make_user(
        "reader",
        configure="^$",
        write=rf"^({prefix}\.queries|amq\.default)$",
        read=rf"^{prefix}\..*",
    )


@pytest.fixture
def no_events_url(make_user: MakeUser, prefix: str) -> str:
    """A command-side user that may do everything but publish to the events exchange."""
    return make_user("writer", configure=".*", write=rf"^(?!{prefix}\.events$).*", read=".*")


def grant_all(url: str) -> None:
    """Give the user of ``url`` every permission on its vhost (the deployment fixed)."""
    user = urlsplit(url).username
    assert user is not None
    rabbitmqctl("set_permissions", "-p", vhost_of(url), user, ".*", ".*", ".*")


class CountingPublishes:
    """Publish middleware that counts the publish attempts passing through it."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, out: Outbound, call_next: PublishNext) -> None:
        self.calls += 1
        await call_next(out)


def order(order_id: str) -> PlaceOrder:
    return PlaceOrder(order_id=order_id, customer_id="c", items=[], address="a")


async def test_query_side_user_answers_queries_but_cannot_send_commands(
    amqp_url: str, reader_url: str, prefix: str
) -> None:
    """Queries run under the query user; its command publish is refused once with an
    AccessRefused naming exchange and user, and both connections stay usable afterwards."""
    orders = Service("orders")
    placed: asyncio.Queue[str] = asyncio.Queue()

    @orders.command
    async def place(cmd: PlaceOrder) -> None:
        placed.put_nowait(cmd.order_id)

    @orders.query
    async def get_order(q: GetOrder) -> OrderView:
        return OrderView(order_id=q.order_id, customer_id="c", status="placed", total_cents=0)

    app = App([orders], url=amqp_url, query_url=reader_url, config=AppConfig(prefix=prefix))
    async with app:
        assert (await app.request(GetOrder(order_id="o-1"), timeout=10)).order_id == "o-1"
        assert app.query_transport is not None
        counting = CountingPublishes()
        reader = Bus(app.query_transport, app.codec, app.naming, middleware=[counting])
        with capture_logs() as logs, pytest.raises(AccessRefused) as refused:
            await reader.send(order("o-2"))
        error = refused.value
        assert isinstance(error, ConfigurationError)
        assert error.exchange == f"{prefix}.commands"
        assert error.user == f"{prefix}-reader"
        assert f"user '{prefix}-reader' may not publish to exchange '{prefix}.commands'" in str(
            error
        )
        assert "ACCESS_REFUSED" in str(error)
        assert counting.calls == 1
        assert [e["event"] for e in logs if e["log_level"] in ("error", "warning")] == [
            "publish_access_refused"
        ]
        # The refused channel is reopened: the query side still answers, the command side sends.
        assert (await app.request(GetOrder(order_id="o-3"), timeout=10)).order_id == "o-3"
        await app.send(order("o-4"))
        async with asyncio.timeout(10):
            assert await placed.get() == "o-4"


class Record(Command):
    __wire_name__ = "ledger.record"

    n: int


class Recorded(Event):
    __wire_name__ = "ledger.recorded"

    n: int


def refusal_events(logs: list[dict[str, object]]) -> list[object]:
    """The warnings and errors logged, by event name."""
    return [e["event"] for e in logs if e["log_level"] in ("error", "warning")]


class Ledger:
    """A ``ledger`` service whose ``Record`` handler publishes ``Recorded`` (through the outbox
    when ``transactional``), and an ``audit`` service that notes each ``Recorded``."""

    def __init__(self, url: str, prefix: str, db: Path, *, transactional: bool) -> None:
        ledger, audit = Service("ledger"), Service("audit")
        self.runs = 0
        self.audited: asyncio.Queue[int] = asyncio.Queue()

        async def record(cmd: Record, ctx: Context) -> None:
            self.runs += 1
            await ctx.publish(Recorded(n=cmd.n))

        ledger.command(transactional=transactional)(record)

        @audit.event
        async def note(evt: Recorded) -> None:
            self.audited.put_nowait(evt.n)

        self.app = App(
            [ledger, audit],
            url=url,
            store=store_from_url(f"sqlite:///{db}"),
            config=AppConfig(prefix=prefix, shutdown_grace=5.0),
        )
        self.queue = self.app.naming.handler_queue("ledger", Record.__wire_name__)

    async def next_audited(self) -> int:
        async with asyncio.timeout(20):
            return await self.audited.get()


async def send_as_client(url: str, prefix: str, command: Command) -> None:
    """Send ``command`` from a client of its own (not on the publish channel of the app under
    test, where a refused publish would close the channel before this one is confirmed)."""
    client = App([], url=url, config=AppConfig(prefix=prefix), contracts=[type(command)])
    await client.start(consume=False)
    try:
        await client.send(command)
    finally:
        await client.stop()


async def test_refused_outbox_row_stops_the_relay_and_fails_the_app(
    amqp_url: str, no_events_url: str, prefix: str, tmp_path: Path
) -> None:
    """The relay publishes a refused row once, then stops with the row pending; the app fails
    with the AccessRefused and stops consuming; with the permission granted, a fresh start
    publishes the row."""
    db = tmp_path / "ledger.db"
    ledger = Ledger(no_events_url, prefix, db, transactional=True)
    app = ledger.app
    with capture_logs() as logs:
        await app.start()
        try:
            await send_as_client(amqp_url, prefix, Record(n=1))
            async with asyncio.timeout(20):
                failure = await app.wait_stopped_or_failed(asyncio.Event())
            assert isinstance(failure, AccessRefused)
            assert failure.exchange == f"{prefix}.events"
            assert failure.user == f"{prefix}-writer"
            assert app.failure is failure
            assert app.relay is not None
            assert app.relay.refused is failure
            assert app.store is not None
            pending = await app.store.pending_outbox()
            assert [row.routing_key for row in pending] == [Recorded.__wire_name__]
            # Stopped: neither the sweeper nor another commit tries the row again.
            assert await app.relay.sweep() == 0
            assert await app.relay.publish(pending) is False
        finally:
            await app.stop()
    # The command was handled once (its effects committed with the row) and acked.
    assert ledger.runs == 1
    assert list_queues(vhost_of(amqp_url))[ledger.queue] == (0, 0, 0)
    assert refusal_events(logs) == ["publish_access_refused", "outbox_relay_stopped", "app_failed"]

    grant_all(no_events_url)
    fixed = Ledger(no_events_url, prefix, db, transactional=True)
    async with fixed.app:
        assert fixed.app.relay is not None
        assert fixed.app.store is not None
        assert await fixed.app.relay.publish(await fixed.app.store.pending_outbox()) is True
        assert await fixed.next_audited() == 1
        assert await fixed.app.store.pending_outbox() == []


async def test_refused_publish_in_a_handler_fails_the_app_and_keeps_the_message(
    amqp_url: str, no_events_url: str, prefix: str, tmp_path: Path
) -> None:
    """A handler whose publish is refused runs once: no retry, no dead letter; the worker's
    serve() returns the configuration-error exit code and the command waits in its queue
    until a deployment with the permission handles it."""
    db = tmp_path / "ledger.db"
    # Declare the topology and queue the command first, as a client with full rights would.
    setup = Ledger(amqp_url, prefix, db, transactional=False).app
    await setup.start(consume=False)
    await setup.stop()
    await send_as_client(amqp_url, prefix, Record(n=7))
    ledger = Ledger(no_events_url, prefix, db, transactional=False)
    with capture_logs() as logs:
        async with asyncio.timeout(30):
            assert await serve(ledger.app, asyncio.Event()) == EXIT_CONFIGURATION
    assert isinstance(ledger.app.failure, AccessRefused)
    assert ledger.runs == 1
    assert refusal_events(logs) == ["publish_access_refused", "app_failed"]
    queues = list_queues(vhost_of(amqp_url))
    assert queues[ledger.queue] == (1, 0, 0)  # back in its queue, nobody consuming
    assert queues[f"{ledger.queue}.dlq"][0] == 0

    grant_all(no_events_url)
    fixed = Ledger(no_events_url, prefix, db, transactional=False)
    async with fixed.app:
        assert await fixed.next_audited() == 7
    assert fixed.runs == 1


async def test_refused_publish_fails_others_on_its_channel_as_unknown_not_refused(
    no_events_url: str, prefix: str, tmp_path: Path
) -> None:
    """A publish in flight on the channel a refusal closes has an unknown outcome: it is sent
    again, with the same message id, on the reopened channel, and succeeds; it never gets the
    AccessRefused of an exchange it may write to."""
    ledger = Ledger(no_events_url, prefix, tmp_path / "ledger.db", transactional=True)
    await ledger.app.start(consume=False)
    try:
        refused, collateral = await asyncio.gather(
            ledger.app.publish(Recorded(n=1)),
            ledger.app.send(Record(n=2)),
            return_exceptions=True,
        )
        assert isinstance(refused, AccessRefused)
        assert refused.exchange == f"{prefix}.events"
        assert isinstance(collateral, str), collateral  # its message id: confirmed
        await ledger.app.send(Record(n=3))  # the channel is reopened
    finally:
        await ledger.app.stop()
