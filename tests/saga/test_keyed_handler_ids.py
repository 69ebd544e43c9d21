"""Ids of the messages transactional handlers emit are keyed (issue 14, case 6, outside sagas).

They used to be ``<incoming id>/<handler>/<n>``: whoever chose the incoming message's id could
publish a message with one of them first and have the receiver's inbox drop the real one. Now
they end in an HMAC tag under the app's secret, as the saga runner's ids do.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import pytest

from framework import App, AppConfig, Command, Context, Service
from framework.saga.signing import Signer
from framework.store.memory import MemoryStore
from tests.app.conftest import Backend, next_item

SECRET = "s3cret-for-tests-only-0123456789"
CLIENT_ID = "client-chosen-42"


class Ping(Command):
    __wire_name__ = "keyed.ping"


class Pong(Command):
    __wire_name__ = "keyed.pong"

    note: str


Received = asyncio.Queue[tuple[str, str]]


def services(received: Received) -> list[Service]:
    """``front`` answers each Ping with two Pongs from a transactional handler; ``back`` (also
    transactional, so its inbox drops duplicate ids) records each Pong's id and note."""
    front, back = Service("front"), Service("back")

    @front.command(transactional=True)
    async def relay(cmd: Ping, ctx: Context) -> None:
        await ctx.send(Pong(note="real-0"))
        await ctx.send(Pong(note="real-1"))

    @back.command(transactional=True)
    async def record(cmd: Pong, ctx: Context) -> None:
        received.put_nowait((ctx.message_id, cmd.note))

    return [front, back]


def handler_name(app: App) -> str:
    """The name ``relay`` runs under (the one the ids it emits show)."""
    return next(p.spec.name for p in app.pipelines if p.spec.message_type is Ping)


@pytest.fixture
async def received() -> Received:
    """The Pongs ``back`` handled: (message id, note)."""
    return asyncio.Queue()


@pytest.fixture
async def app(backend: Backend, received: Received) -> AsyncIterator[App]:
    """Both services on the test's backend, with a memory store and a known secret."""
    app = App(
        services(received),
        transport=backend.transport(),
        config=AppConfig(prefix=backend.prefix, secret=SECRET),
        store=MemoryStore(),
    )
    async with app:
        yield app


async def test_emitted_ids_are_keyed_and_deterministic(app: App, received: Received) -> None:
    """A transactional handler's n-th message gets ``<incoming id>/<handler>/<n>/<tag>``, the
    id a signer with the app's secret derives for it, and not the old guessable one."""
    await app.send(Ping(), message_id=CLIENT_ID)
    got = dict([await next_item(received), await next_item(received)])
    handler = handler_name(app)
    signer = Signer(SECRET)
    expected = {signer.emitted_id(CLIENT_ID, handler, n): f"real-{n}" for n in (0, 1)}
    assert got == expected
    for message_id in got:
        assert re.fullmatch(rf"{CLIENT_ID}/{re.escape(handler)}/[01]/[0-9a-f]{{16}}", message_id)
    assert got.keys().isdisjoint(f"{CLIENT_ID}/{handler}/{n}" for n in (0, 1))


async def test_ids_taken_in_advance_do_not_make_the_inbox_drop_the_real_messages(
    app: App, received: Received
) -> None:
    """Pongs pre-published under the ids the old scheme would derive for a Ping whose id the
    attacker chose are handled as what they are, and the real Pongs still arrive after them."""
    handler = handler_name(app)
    for n in (0, 1):
        await app.send(Pong(note=f"intruder-{n}"), message_id=f"{CLIENT_ID}/{handler}/{n}")
    intruders = {await next_item(received) for _ in range(2)}
    assert {note for _, note in intruders} == {"intruder-0", "intruder-1"}

    await app.send(Ping(), message_id=CLIENT_ID)
    real = {await next_item(received) for _ in range(2)}
    assert {note for _, note in real} == {"real-0", "real-1"}


def test_emitted_ids_differ_by_secret_message_handler_and_position() -> None:
    """One signer derives one id per (incoming id, handler, n); another secret derives others."""
    one, same, other = Signer(SECRET), Signer(SECRET), Signer("another-secret-0123456789")
    derived = one.emitted_id("m-1", "svc.handle", 0)
    assert derived == same.emitted_id("m-1", "svc.handle", 0)
    assert derived != other.emitted_id("m-1", "svc.handle", 0)
    variants = {
        one.emitted_id(m, h, n) for m in ("m-1", "m-2") for h in ("a.x", "a.y") for n in (0, 1)
    }
    assert len(variants) == 8
    # Not the saga runner's id for the same fields: each purpose has its own digests.
    assert derived.rsplit("/", 1)[1] != one.message_id("m-1", 0, "svc.handle").rsplit("/", 1)[1]


def test_emitted_ids_fit_an_amqp_short_string() -> None:
    """Ids of a 255-byte multi-byte incoming id or a very long handler name are cut to 255
    bytes, keep their position and tag, and stay distinct."""
    signer = Signer(SECRET)
    long_id = "é" * 127  # 254 bytes: a valid AMQP message id
    ids = {signer.emitted_id(long_id + tail, "svc.handle", 3) for tail in ("", "a")}
    ids |= {signer.emitted_id("m-1", "svc." + "h" * 300 + tail, 3) for tail in ("a", "b")}
    assert len(ids) == 4
    for derived in ids:
        assert len(derived.encode()) <= 255
        assert re.fullmatch(r".+…(/svc\.handle)?/3/[0-9a-f]{16}", derived), derived
