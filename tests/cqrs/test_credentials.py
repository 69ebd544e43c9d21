"""Separate query-side credentials on RabbitMQ: a query-side user answers queries but may not
send commands, and the refusal is one clear configuration error, not a retry loop."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Iterator
from urllib.parse import quote, urlsplit, urlunsplit

import pytest
from structlog.testing import capture_logs

from contracts.orders import GetOrder, OrderView, PlaceOrder
from framework import AccessRefused, App, AppConfig, ConfigurationError, Outbound, Service
from framework.bus import Bus, PublishNext
from tests.support.broker import RabbitmqctlError, rabbitmqctl, vhost_of


def with_user(url: str, user: str, password: str) -> str:
    """``url`` logging in as ``user`` instead."""
    parts = urlsplit(url)
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{parts.hostname}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


@pytest.fixture
def reader_url(amqp_url: str, prefix: str) -> Iterator[str]:
    """A query-side user of the test vhost: may read the app's queues and write only to the
    queries exchange and the default exchange (for replies); deleted after the test."""
    vhost = vhost_of(amqp_url)
    if vhost == "/":
        pytest.skip("needs the per-run test vhost (rabbitmqctl)")
    user, password = f"{prefix}-reader", secrets.token_hex(8)
    try:
        rabbitmqctl("add_user", user, password)
    except RabbitmqctlError as exc:
        pytest.skip(f"rabbitmqctl add_user failed: {exc}")
    try:
        rabbitmqctl(
            "set_permissions",
            "-p",
            vhost,
            user,
            "^$",
            rf"^({prefix}\.queries|amq\.default)$",
            rf"^{prefix}\..*",
        )
        yield with_user(amqp_url, user, password)
    finally:
        with contextlib.suppress(RabbitmqctlError):
            rabbitmqctl("delete_user", user)


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
