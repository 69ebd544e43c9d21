"""Properties that are not UTF-8 reach the DLQ unchanged instead of killing the connection.

RabbitMQ passes any bytes in a short string or header name; pamqp used to raise on them, aiormq
dropped the connection, and the redelivered message dropped it again, forever. Published below
every Python client (``publish_raw`` with a patched header frame), each such message must be
rejected to its DLQ once, byte for byte, while the worker keeps its connection and consumes on.
"""

from __future__ import annotations

import asyncio

import aio_pika
import msgspec
import pytest
from pamqp import commands, frame
from pamqp.commands import Basic
from pamqp.header import ContentHeader
from structlog.testing import capture_logs

from contracts.orders import PlaceOrder
from framework import App, AppConfig, Context, Service
from framework import envelope as env
from framework.dlq.scan import peek
from framework.transport.amqp import AmqpTransport, _frames, _pamqp
from tests.support.raw_amqp import publish_raw

pytestmark = pytest.mark.rabbitmq

WIRE = "orders.place_order"
BODY = b'{"order_id":"o","customer_id":"c","address":"a","items":[]}'
MARK = "\x01\x02"  # two bytes in the encoded frame that the patch turns into 0xff 0xfe


def breaking(frame_bytes: bytes) -> bytes:
    assert frame_bytes.count(MARK.encode()) == 1
    return frame_bytes.replace(MARK.encode(), b"\xff\xfe")


CASES: dict[str, tuple[Basic.Properties, str]] = {
    "message_id": (
        Basic.Properties(message_id=f"id-{MARK}", message_type=WIRE, headers={env.VERSION: 1}),
        "message_id",
    ),
    "type": (
        Basic.Properties(message_id="t-1", message_type=f"orders.{MARK}", headers={}),
        "message_type",
    ),
    "header_name": (
        Basic.Properties(message_id="h-1", message_type=WIRE, headers={f"x-{MARK}": 1}),
        "headers",
    ),
}


async def test_properties_that_are_not_utf8_are_dead_lettered_unchanged(
    amqp_url: str, prefix: str
) -> None:
    """Each lands in the DLQ once with the broker's ``rejected`` x-death; the connection
    survives and the next good messages (one with a header value that is not UTF-8) are
    handled."""
    orders = Service("orders")
    handled: asyncio.Queue[PlaceOrder] = asyncio.Queue()

    @orders.command
    async def place_order(cmd: PlaceOrder, ctx: Context) -> None:
        handled.put_nowait(cmd)

    app = App([orders], url=amqp_url, config=AppConfig(prefix=prefix))
    queue = app.naming.handler_queue("orders", WIRE)
    with capture_logs() as logs:
        await app.start()
        try:
            for properties, _ in CASES.values():
                await publish_raw(
                    amqp_url,
                    exchange=app.naming.commands,
                    routing_key=WIRE,
                    body=BODY,
                    properties=properties,
                    patch_header=breaking,
                )
            # A header *value* that is not UTF-8 is kept as bytes: the message is fine.
            await publish_raw(
                amqp_url,
                exchange=app.naming.commands,
                routing_key=WIRE,
                body=BODY.replace(b'"o"', b'"o-bytes-header"'),
                properties=Basic.Properties(
                    message_id="v-1", message_type=WIRE, headers={"x-note": MARK}
                ),
                patch_header=breaking,
            )
            await app.send(PlaceOrder(order_id="o-good", customer_id="c", address="a", items=[]))
            async with asyncio.timeout(15):
                got = {(await handled.get()).order_id for _ in range(2)}
            assert got == {"o-bytes-header", "o-good"}
        finally:
            await app.stop(grace=5)
    events = [e["event"] for e in logs]
    assert "broker_connection_lost" not in events
    rejected = [e["field"] for e in logs if e["event"] == "message_rejected_undecodable"]
    assert sorted(r.split(":")[0] for r in rejected) == sorted(f for _, f in CASES.values())
    assert "headers: a header name is not UTF-8" in rejected

    # Inspecting the DLQ (leveret dlq's scan) sees them and leaves them: a queue without a
    # dead-letter exchange must not reject them, that would drop them.
    inspector = AmqpTransport(amqp_url)
    await inspector.connect()
    try:
        seen = await peek(inspector, app.naming.dlq(queue), idle=10)
    finally:
        await inspector.close()
    # The header-name case's whole header table (x-death included) is one opaque value.
    assert sorted(info.reason for info in seen) == ["broker: rejected"] * 2 + [
        "undecodable: a header name is not UTF-8"
    ]
    assert "id-\\xff\\xfe" in {info.message_id for info in seen}  # printable, and as JSON
    assert msgspec.json.encode(seen)

    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        dlq = await channel.get_queue(app.naming.dlq(queue))
        dead = []
        while (message := await dlq.get(fail=False, timeout=10)) is not None:
            await message.ack()
            dead.append(message)
    finally:
        await connection.close()
    assert len(dead) == len(CASES)
    for message in dead:
        assert message.body == BODY
        raw = message.headers.get(_pamqp.UNDECODABLE_HEADERS)
        if isinstance(raw, bytes):  # the header name case: the broker's x-death is in there
            assert b"x-death" in raw
            assert b"rejected" in raw
            continue
        death = message.headers["x-death"]
        assert isinstance(death, list)
        assert death[0]["reason"] == "rejected"  # type: ignore[index]  # a field table
    ids = sorted(m.message_id.encode("utf-8", "surrogateescape") for m in dead if m.message_id)
    assert ids == sorted([b"h-1", b"id-\xff\xfe", b"t-1"])


def test_a_routing_key_that_is_not_utf8_is_named() -> None:
    """A basic.deliver whose routing key is not UTF-8 decodes, and the key is reported."""
    _pamqp.install()
    deliver = commands.Basic.Deliver("tag", 1, False, "ex", f"rk-{MARK}")
    _, _, decoded = frame.unmarshal(breaking(frame.marshal(deliver, 1)))
    assert isinstance(decoded, commands.Basic.Deliver)
    assert _pamqp.undecodable(Basic.Properties(), decoded.routing_key) == "routing_key"
    assert _pamqp.undecodable(Basic.Properties(message_id="fine"), "rk") is None


def test_kept_bytes_are_published_back_unchanged() -> None:
    """A short string holding kept bytes encodes to the very bytes it came from, on leveret's
    fast path and through pamqp (a DLQ replay republishes them exactly)."""
    _pamqp.install()
    kept = "id-\udcff\udcfe"
    fast = _frames.encode_properties(
        content_type=None,
        headers=None,
        delivery_mode=2,
        correlation_id=None,
        reply_to=None,
        expiration=None,
        message_id=kept,
        timestamp=None,
        message_type=None,
    )
    assert b"\x05id-\xff\xfe" in fast
    slow = frame.marshal(ContentHeader(0, 1, Basic.Properties(message_id=kept)), 1)
    assert b"\x05id-\xff\xfe" in slow
    _, _, decoded = frame.unmarshal(slow)
    assert isinstance(decoded, ContentHeader)
    assert decoded.properties.message_id == kept
