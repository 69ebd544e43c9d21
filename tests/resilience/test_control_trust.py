"""Who the breakers' control plane obeys, on memory and on RabbitMQ.

An outsider is a broker user of its own with write permission on the control exchange (on
memory, a transport of another user on the same broker). It publishes what case 7 of issue 14
published — ``forced_open``, ``open`` with a wait of 1e300, a status request aimed at another
queue — and the running worker's breakers stay closed, the other queue stays empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from contracts.orders import PlaceOrder
from framework import App, Service
from framework.errors import AccessRefused
from framework.resilience import (
    BreakerConfig,
    BreakerEvent,
    BreakerOpened,
    Breakers,
    Downstream,
    State,
    TransitionReason,
)
from framework.resilience.control import (
    SIGNATURE,
    ControlSeal,
    StatusReply,
    StatusRequest,
    TransitionNote,
    control_message,
    decode_reply,
    encode,
    status_inbox,
)
from framework.resilience.registry import SECRET_ENV, control_secret
from framework.transport.base import Delivery, OutgoingMessage, QueueSpec, Topology, Transport
from framework.transport.memory import MemoryTransport
from tests.resilience.conftest import Backend, next_item, start_app
from tests.support.broker import RabbitmqctlError, rabbitmqctl, vhost_of

WAIT = 60.0
SECRET = "the-workers-own-secret-0123456789"


def worker() -> Service:
    """A service whose workers share breakers (the handler is beside the point)."""
    service = Service("orders")

    @service.command
    async def place_order(cmd: PlaceOrder) -> None:
        return None

    return service


def shared_breakers() -> Breakers:
    config = BreakerConfig(window_size=3, minimum_calls=3, wait_in_open=WAIT)
    return Breakers(
        [Downstream("inventory", config=config), Downstream("payment", config=config)],
        shared=True,
    )


async def running_worker(backend: Backend) -> tuple[App, Breakers]:
    breakers = shared_breakers()
    app = await start_app(backend, [worker()], breakers=breakers)
    return app, breakers


def exchange_of(breakers: Breakers) -> str:
    assert breakers.control is not None
    return breakers.control.exchange


@contextlib.asynccontextmanager
async def outsider_transport(backend: Backend) -> AsyncIterator[Transport]:
    """A connected transport of another broker user, who may write the control exchanges."""
    if backend.kind == "memory":
        transport: Transport = MemoryTransport(backend.broker, user="mallory")
        await transport.connect()
        try:
            yield transport
        finally:
            await transport.close()
        return
    from framework.transport.amqp import AmqpTransport

    assert backend.amqp_url is not None
    vhost = vhost_of(backend.amqp_url)
    if vhost == "/":
        pytest.skip("needs the per-run test vhost (rabbitmqctl)")
    user, password = f"{backend.prefix}-outsider", uuid.uuid4().hex
    try:
        rabbitmqctl("add_user", user, password)
    except RabbitmqctlError as exc:
        pytest.skip(f"rabbitmqctl add_user failed: {exc}")
    try:
        writes = rf"^{backend.prefix}\.breakers\..*$"
        rabbitmqctl("set_permissions", "-p", vhost, user, "^$", writes, "^$")
        login = urlsplit(backend.amqp_url)
        netloc = f"{user}:{password}@{login.hostname}:{login.port or 5672}"
        url = urlunsplit(login._replace(netloc=netloc))
        transport = AmqpTransport(url)
        await transport.connect()
        try:
            yield transport
        finally:
            await transport.close()
    finally:
        with contextlib.suppress(RabbitmqctlError):
            rabbitmqctl("delete_user", user)


async def publish(transport: Transport, exchange: str, message: OutgoingMessage) -> None:
    await transport.publish(message, exchange=exchange, routing_key="", mandatory=False)


def forged(body: bytes, **changes: Any) -> OutgoingMessage:
    """A control message as a raw client would publish it."""
    message = control_message(body)
    for name, value in changes.items():
        setattr(message, name, value)
    return message


async def status_of(backend: Backend, app: App, breakers: Breakers) -> StatusReply:
    """The worker's answer to a status request sent now with the workers' own credentials.

    A worker judges control messages in the order they arrive, so once it answers, everything
    published to the exchange before the request has been judged.
    """
    transport = await backend.connected()
    exchange = exchange_of(breakers)
    seal = ControlSeal(exchange, user=transport.user, secret=control_secret(app))
    request_id = uuid.uuid4().hex
    inbox = status_inbox(exchange, request_id)
    await transport.declare(Topology(queues=(QueueSpec(inbox, durable=False, auto_delete=True),)))
    answers: asyncio.Queue[Delivery] = asyncio.Queue()

    async def on_answer(delivery: Delivery) -> None:
        await delivery.ack()
        answers.put_nowait(delivery)

    await transport.consume(inbox, on_answer, prefetch=10)
    request = StatusRequest(reply_to=inbox, request_id=request_id, sent_at=seal.now())
    await publish(transport, exchange, seal.seal(encode(request)))
    answer: Delivery = await next_item(answers)
    assert answer.user_id == transport.user
    assert seal.refusal(answer) is None
    return decode_reply(answer.body)


def states(reply: StatusReply) -> dict[str, str]:
    return {b.name: b.state for b in reply.breakers}


def note(breakers: Breakers, state: str, wait: float | None = None, **fields: Any) -> bytes:
    return encode(
        TransitionNote(
            worker="elsewhere:0badc0de",
            breaker="inventory",
            state=state,
            reason="manual",
            wait=wait,
            **fields,
        )
    )


async def test_an_outsider_cannot_open_breakers_or_aim_status_answers(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """forced_open, open for 1e300 s and a status request to another queue from another user:
    the breakers stay closed, the other queue gets nothing, and each refusal is counted."""
    monkeypatch.delenv(SECRET_ENV, raising=False)
    app, breakers = await running_worker(backend)
    exchange = exchange_of(breakers)
    victim = f"{backend.prefix}.payment.dlq"
    probe = await backend.connected()
    await probe.declare(Topology(queues=(QueueSpec(victim),)))
    async with outsider_transport(backend) as outsider:
        assert outsider.user != probe.user
        sent = [
            forged(note(breakers, "forced_open")),
            forged(note(breakers, "open", wait=1e300)),
            forged(note(breakers, "open", wait=1e300), user_id=outsider.user),
            forged(encode(StatusRequest(reply_to=victim, request_id="r1"))),
            forged(encode(StatusRequest(reply_to=victim, request_id="r2")), user_id=outsider.user),
        ]
        for message in sent:
            await publish(outsider, exchange, message)
        # Claiming the workers' user is refused by the broker itself.
        with pytest.raises(AccessRefused):
            await publish(outsider, exchange, forged(note(breakers, "open"), user_id=probe.user))
    reply = await status_of(backend, app, breakers)
    assert states(reply) == {"inventory": "closed", "payment": "closed"}
    assert [b.state for b in breakers] == [State.CLOSED, State.CLOSED]
    assert await probe.queue_depth(victim) == 0
    assert breakers.control is not None
    assert breakers.control.refusals.count == len(sent)


async def test_the_workers_own_user_cannot_aim_status_answers_either(backend: Backend) -> None:
    """A status request from the workers' user naming a queue that is no status inbox is
    refused: nothing reaches that queue."""
    app, breakers = await running_worker(backend)
    exchange = exchange_of(breakers)
    victim = f"{backend.prefix}.payment.dlq"
    probe = await backend.connected()
    await probe.declare(Topology(queues=(QueueSpec(victim),)))
    seal = ControlSeal(exchange, user=probe.user, secret=control_secret(app))
    for _ in range(3):
        request = StatusRequest(reply_to=victim, request_id="r", sent_at=seal.now())
        await publish(probe, exchange, seal.seal(encode(request)))
    await status_of(backend, app, breakers)
    assert await probe.queue_depth(victim) == 0
    assert breakers.control is not None
    assert breakers.control.refusals.count == 3


async def test_a_note_of_the_workers_own_user_is_followed_with_its_wait_clamped(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An open note with a wait of 1e300 from the workers' user opens the breaker for at most
    the configured 60 s, marked remote."""
    monkeypatch.delenv(SECRET_ENV, raising=False)
    _, breakers = await running_worker(backend)
    exchange = exchange_of(breakers)
    opened = asyncio.Event()
    heard: list[BreakerEvent] = []

    def on_event(event: BreakerEvent) -> None:
        heard.append(event)
        if isinstance(event, BreakerOpened):
            opened.set()

    breakers["inventory"].subscribe(on_event)
    sibling = await backend.connected()
    seal = ControlSeal(exchange, user=sibling.user)
    await publish(sibling, exchange, seal.seal(note(breakers, "open", wait=1e300)))
    async with asyncio.timeout(10):
        await opened.wait()
    event = heard[0]
    assert isinstance(event, BreakerOpened)
    assert (event.reason, event.origin, event.wait) == (
        TransitionReason.REMOTE,
        "elsewhere:0badc0de",
        WAIT,
    )
    retry_after = breakers["inventory"].retry_after()
    assert retry_after is not None
    assert 0 < retry_after <= WAIT
    assert breakers["payment"].state is State.CLOSED


async def test_with_a_secret_only_signed_fresh_notes_are_followed(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With LEVERET_SECRET set, notes of the workers' own user with no, a wrong or an old
    signature are refused; a signed, fresh one is followed."""
    monkeypatch.setenv(SECRET_ENV, SECRET)
    app, breakers = await running_worker(backend)
    assert control_secret(app) == SECRET
    exchange = exchange_of(breakers)
    opened = asyncio.Event()
    breakers["inventory"].subscribe(
        lambda e: opened.set() if isinstance(e, BreakerOpened) else None
    )
    insider = await backend.connected()  # the workers' user, without the secret
    unsigned = ControlSeal(exchange, user=insider.user)
    wrong = ControlSeal(exchange, user=insider.user, secret="another-secret-0123456789")
    right = ControlSeal(exchange, user=insider.user, secret=SECRET)
    body = note(breakers, "forced_open", sent_at=right.now())
    for message in (unsigned.seal(body), wrong.seal(body)):
        await publish(insider, exchange, message)
    mangled = right.seal(body)
    mangled.headers[SIGNATURE] = mangled.headers[SIGNATURE][::-1]
    await publish(insider, exchange, mangled)
    replayed = note(breakers, "forced_open", sent_at=right.now() - 3600)
    await publish(insider, exchange, right.seal(replayed))
    assert states(await status_of(backend, app, breakers))["inventory"] == "closed"
    assert breakers.control is not None
    assert breakers.control.refusals.count == 4
    await publish(insider, exchange, right.seal(note(breakers, "open", sent_at=right.now())))
    async with asyncio.timeout(10):
        await opened.wait()
    assert breakers["inventory"].state is State.OPEN
    assert breakers.control.refusals.count == 4


async def test_signed_siblings_still_share_transitions(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workers with the same secret: one forced open, the other follows; then both close."""
    monkeypatch.setenv(SECRET_ENV, SECRET)
    first, second = shared_breakers(), shared_breakers()
    await start_app(backend, [worker()], breakers=first)
    await start_app(backend, [worker()], breakers=second)
    changed = asyncio.Event()
    second["payment"].subscribe(lambda _: changed.set())
    first["payment"].transition_to_forced_open()
    async with asyncio.timeout(10):
        await changed.wait()
    assert second["payment"].state is State.FORCED_OPEN
    assert second["payment"].open_reason is TransitionReason.REMOTE
    changed.clear()
    first["payment"].transition_to_closed()
    async with asyncio.timeout(10):
        await changed.wait()
    assert second["payment"].state is State.CLOSED
    assert second.control is not None
    assert second.control.refusals.count == 0
