"""Messages an attacker with publish rights crafts below every client, against a running worker.

Each used to stop a worker or loop it hot (issue 14): a ``timestamp`` of 2^64-1 or a header
table nested 2,000 deep dropped the connection on every redelivery; a header double of 1e300 or
an attempt count of 2^63-1 made the DLQ copy unencodable, and the message was requeued forever;
a 120 KB header array cost half a second of CPU per message; a query's forged ``reply_to`` sent
its answer to any queue; oversize bodies were copied through the worker; DLQs grew without end.

Now every such message ends in its DLQ exactly once (with leveret's reason where a copy could be
made, the broker's ``rejected`` where it could not), the worker keeps its connection and every
consumer, and valid messages published after them are handled.
"""

from __future__ import annotations

import asyncio
import base64
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiormq
import pytest
from structlog.testing import capture_logs

from contracts.orders import GetOrder, OrderView, PlaceOrder
from framework import App, AppConfig, Context, QueryContext, RejectMessage, RetryPolicy, Service
from framework import envelope as env
from framework.metrics import PrometheusMetrics
from framework.transport.amqp import AmqpTransport, _pamqp
from framework.transport.base import DIRECT_REPLY_TO, Delivery
from tests.support import amqp_fields as f
from tests.support.poll import until
from tests.support.raw_amqp import raw_channel

pytestmark = pytest.mark.rabbitmq

PLACE = "orders.place_order"
GET = "orders.get_order"


def body(order_id: str) -> bytes:
    return b'{"order_id":"%s","customer_id":"c","address":"a","items":[]}' % order_id.encode()


@dataclass
class Shop:
    """A running orders app, a consumer of its DLQs, and what each one saw."""

    app: App
    probe: AmqpTransport
    handled: asyncio.Queue[str]
    dead: dict[str, list[Delivery]]
    dead_count: asyncio.Queue[None]

    @property
    def queues(self) -> list[str]:
        return [self.app.naming.handler_queue("orders", w) for w in (PLACE, GET)]

    async def dead_letters(self, n: int, timeout: float = 20) -> None:
        async with asyncio.timeout(timeout):
            for _ in range(n):
                await self.dead_count.get()

    async def consumers_intact(self) -> None:
        for queue in self.queues:
            info = await self.probe.queue_info(queue)
            assert info.consumers == 1, f"{queue} lost its consumer"


@pytest.fixture
async def shop(amqp_url: str, prefix: str) -> AsyncIterator[Shop]:
    orders = Service("orders")
    handled: asyncio.Queue[str] = asyncio.Queue()

    @orders.command(retry=RetryPolicy(immediate=0, delays=(0.05,)))
    async def place_order(cmd: PlaceOrder, ctx: Context) -> None:
        if cmd.order_id.startswith("reject"):
            raise RejectMessage("no such order", reason="unknown_saga: test")
        handled.put_nowait(cmd.order_id)

    @orders.query
    async def get_order(q: GetOrder, ctx: QueryContext) -> OrderView:
        return OrderView(order_id=q.order_id, customer_id="c", status="placed", total_cents=1)

    app = App(
        [orders], url=amqp_url, config=AppConfig(prefix=prefix, prefetch=20, dlq_max_length=50)
    )
    await app.start()
    probe = AmqpTransport(amqp_url)
    await probe.connect()
    dead: dict[str, list[Delivery]] = {}
    dead_count: asyncio.Queue[None] = asyncio.Queue()

    async def on_dead(d: Delivery) -> None:
        await d.ack()
        key = d.body.decode(errors="replace")
        dead.setdefault(key, []).append(d)
        dead_count.put_nowait(None)

    for queue in (app.naming.handler_queue("orders", w) for w in (PLACE, GET)):
        await probe.consume(app.naming.dlq(queue), on_dead, prefetch=100)
    try:
        yield Shop(app, probe, handled, dead, dead_count)
    finally:
        await app.stop(grace=1)
        await probe.close()


def reason_of(dead: Delivery) -> str:
    """leveret's reason header; else why the client could not decode it; else the broker's."""
    undecodable = dead.headers.get(_pamqp.UNDECODABLE_REASON)
    if undecodable is not None:
        return f"undecodable: {undecodable}"
    if env.DEAD_REASON in dead.headers:
        value = dead.headers[env.DEAD_REASON]
        return value.decode() if isinstance(value, bytes) else str(value)
    return f"broker: {dead.headers['x-death'][0]['reason']}"


def valid(message_id: bytes, **extra: bytes | int) -> dict[str, bytes | int]:
    return {"message_id": message_id, "type": PLACE.encode(), "delivery_mode": 2, **extra}


def nested(depth: int) -> bytes:
    value: f.Field = f.long_string(b"bottom")
    for _ in range(depth):
        value = f.table_value([(b"a", value)])
    return f.table([(b"deep", value)])


# Each case: a body (its order id names it) and raw properties, and the DLQ reason it must get.
# (A table with an undefined type code or cut short never reaches a consumer: RabbitMQ parses
# header tables itself and closes the publisher's connection with a frame error.)
CASES: dict[str, tuple[dict[str, bytes | int], str]] = {
    # 1. The AMQP client could not decode these frames and dropped the connection, forever.
    "timestamp-property-max": (
        valid(b"c1", timestamp=2**64 - 1),
        "undecodable: properties cannot be decoded: ValueError('year 584556019 is out of range')",
    ),
    "timestamp-header-max": (
        valid(b"c2", headers=f.table([(b"when", f.timestamp(2**64 - 1))])),
        "undecodable: timestamp 18446744073709551615 is out of range",
    ),
    "nested-2000": (
        valid(b"c3", headers=nested(2000)),
        "undecodable: header tables nested deeper than 16",
    ),
    # 3. 120,000 entries in one header: refused from its length, before decoding.
    "header-120k": (
        valid(b"c6", headers=f.table([(b"big", f.array([f.Field(b"V", b"")] * 120_000))])),
        "undecodable: header table of 120335 bytes exceeds 65536",
    ),
    # 2. The DLQ copy of these could not be encoded; now doubles stay doubles, the attempt
    # count is clamped, and a copy that still cannot be encoded is rejected to the broker.
    "reject-double-1e300": (
        valid(b"c7", headers=f.table([(b"ratio", f.double(1e300))])),
        "unknown_saga: test",
    ),
    "reject-attempt-max": (
        valid(b"c8", headers=f.table([(env.ATTEMPT.encode(), f.signed64(2**63 - 1))])),
        "unknown_saga: test",
    ),
    "reject-long-header-name": (
        valid(b"c9", headers=f.table([(b"n" * 200, f.long_string(b"v"))])),
        "broker: rejected",
    ),
    # 9. Over max_body_size: rejected unread, no copy through the worker.
    "oversize": (valid(b"c10"), "broker: rejected"),
}


async def test_crafted_properties_reach_the_dlq_once_and_the_worker_keeps_going(
    shop: Shop, amqp_url: str
) -> None:
    """Every case ends in the DLQ once with its reason; no connection is lost, both consumers
    stay, and a valid order published after them all is handled."""
    app = shop.app
    limit = app.config.max_body_size
    with capture_logs() as logs:
        async with raw_channel(amqp_url) as channel:
            for name, (props, _) in CASES.items():
                payload = body(name)
                if name == "oversize":
                    payload = payload[:-1] + b',"pad":"' + b"x" * limit + b'"}'
                channel.publish(
                    exchange=app.naming.commands,
                    routing_key=PLACE,
                    body=payload,
                    raw_properties=f.properties(**props),
                )
            channel.publish(
                exchange=app.naming.commands,
                routing_key=PLACE,
                body=body("after"),
                raw_properties=f.properties(**valid(b"after")),
            )
        async with asyncio.timeout(20):
            assert await shop.handled.get() == "after"
        await shop.dead_letters(len(CASES))
        await shop.consumers_intact()
        await asyncio.sleep(0.5)  # a duplicate, or a requeue loop, would show by now
    events = Counter(e["event"] for e in logs)
    assert events["broker_connection_lost"] == 0
    assert events["consumers_verified"] == 0  # no recovery was ever needed
    assert shop.handled.empty()
    got: dict[str, str] = {}
    for key, deliveries in shop.dead.items():
        name = next(n for n in CASES if f'"order_id":"{n}"' in key)
        assert len(deliveries) == 1, f"{name} dead-lettered {len(deliveries)} times"
        got[name] = reason_of(deliveries[0])
    assert got == {name: reason for name, (_, reason) in CASES.items()}
    copy = shop.dead[body("reject-double-1e300").decode()][0]
    assert copy.headers["ratio"] == 1e300  # the copy kept the double
    assert shop.dead[body("reject-attempt-max").decode()][0].headers[env.ATTEMPT] == (1 << 30) + 1
    # Rejected unread: the broker's dead letter is the original, byte for byte.
    oversize = next(d for k, d in shop.dead.items() if '"order_id":"oversize"' in k)[0]
    assert len(oversize.body) > limit
    assert env.DEAD_REASON not in oversize.headers


async def test_a_flood_of_120kb_headers_does_not_stall_valid_orders(
    shop: Shop, amqp_url: str
) -> None:
    """A hundred 120 KB header tables are refused unread; orders sent in the middle of the
    flood complete, each bad message is dead-lettered once, the DLQ keeps its bound."""
    app = shop.app
    big = f.table([(b"big", f.array([f.Field(b"V", b"")] * 120_000))])
    async with raw_channel(amqp_url) as channel:
        for i in range(100):
            channel.publish(
                exchange=app.naming.commands,
                routing_key=PLACE,
                body=body(f"flood-{i}"),
                raw_properties=f.properties(**valid(b"flood-%d" % i, headers=big)),
            )
            if i == 50:
                await app.send(PlaceOrder(order_id="o-mid", customer_id="c", address="a", items=[]))
            await channel.drain()
    await app.send(PlaceOrder(order_id="o-end", customer_id="c", address="a", items=[]))
    async with asyncio.timeout(30):
        assert {await shop.handled.get(), await shop.handled.get()} == {"o-mid", "o-end"}
    await shop.consumers_intact()
    # The DLQ is bounded at 50 (drop-head): the consumer saw them all as they came, once each.
    await shop.dead_letters(100, timeout=30)
    assert all(len(d) == 1 for d in shop.dead.values())
    dlq = app.naming.dlq(shop.queues[0])
    assert (await shop.probe.queue_info(dlq)).messages <= 50


async def test_a_query_with_a_forged_reply_to_is_dead_lettered_unanswered(
    shop: Shop, amqp_url: str
) -> None:
    """A reply_to naming another queue gets no answer there: the query goes to the DLQ with
    ``forbidden_reply_to``, and real queries over direct reply-to are still answered."""
    app = shop.app
    victim = app.naming.dlq(shop.queues[0])  # any queue: the orders DLQ, which we watch
    query = b'{"order_id":"q-forged"}'
    async with raw_channel(amqp_url) as channel:
        for i in range(5):
            channel.publish(
                exchange=app.naming.queries,
                routing_key=GET,
                body=query,
                raw_properties=f.properties(
                    message_id=b"q-%d" % i, type=GET.encode(), reply_to=victim.encode()
                ),
            )
    await shop.dead_letters(5)
    assert [reason_of(d) for d in shop.dead[query.decode()]] == [
        f"forbidden_reply_to: {victim!r} is not a direct reply-to address "
        "(amq.rabbitmq.reply-to) nor on the app's reply_queues"
    ] * 5
    # Nothing but the five dead letters reached any DLQ (no reply landed in the victim).
    assert sum(len(d) for d in shop.dead.values()) == 5
    reply = await app.request(GetOrder(order_id="o-1"), timeout=5)
    assert reply.order_id == "o-1"


async def test_the_dlq_bound_drops_the_oldest_dead_letters(amqp_url: str, prefix: str) -> None:
    """With dlq_max_length=5, twenty invalid messages leave the newest five in the DLQ, and
    the metrics sample reports the DLQ at its bound."""
    orders = Service("orders")

    @orders.command
    async def place_order(cmd: PlaceOrder) -> None:
        raise AssertionError("never called: every message is invalid")

    app = App([orders], url=amqp_url, config=AppConfig(prefix=prefix, dlq_max_length=5))
    await app.start()
    probe = AmqpTransport(amqp_url)
    await probe.connect()
    dlq = app.naming.dlq(app.naming.handler_queue("orders", PLACE))
    try:
        async with raw_channel(amqp_url) as channel:
            for i in range(20):
                channel.publish(
                    exchange=app.naming.commands,
                    routing_key=PLACE,
                    body=b"not json %d" % i,
                    raw_properties=f.properties(**valid(b"bad-%d" % i)),
                )

        async def settled() -> Any:
            info = await probe.queue_info(app.naming.handler_queue("orders", PLACE))
            return info.messages == 0 and (await probe.queue_info(dlq)).messages == 5

        await until(settled, timeout=20, what="the DLQ at its bound")
        metrics = PrometheusMetrics()
        with capture_logs() as logs:
            await metrics.sample(app)  # what `leveret run --metrics-port` does every 5 s
        labels = {"queue": dlq}
        assert metrics.registry.get_sample_value("leveret_dlq_messages", labels) == 5
        assert metrics.registry.get_sample_value("leveret_dlq_at_bound", labels) == 1
        assert [e["queue"] for e in logs if e["event"] == "dlq_bound_reached"] == [dlq]
    finally:
        await app.stop(grace=1)
    try:
        kept: list[bytes] = []
        got: asyncio.Queue[Delivery] = asyncio.Queue()

        async def on_dead(d: Delivery) -> None:
            await d.ack()
            got.put_nowait(d)

        await probe.consume(dlq, on_dead, prefetch=10)
        async with asyncio.timeout(10):
            while len(kept) < 5:
                kept.append((await got.get()).body)
    finally:
        await probe.close()
    assert kept == [b"not json %d" % i for i in range(15, 20)]


def unknown_node_reply_to(genuine: str) -> str:
    """A well-formed direct reply-to address whose pid names a node RabbitMQ does not know."""
    key, _, suffix = genuine.removeprefix(DIRECT_REPLY_TO).partition(".")
    pid = base64.b64decode(key)
    node_length = pid[3] * 256 + pid[4]  # NEW_PID_EXT, then the node as an ATOM_UTF8_EXT
    node = pid[5 : 5 + node_length]
    forged = pid.replace(node, node[:-1] + (b"1" if node[-1:] != b"1" else b"2"))
    return DIRECT_REPLY_TO + base64.b64encode(forged).decode() + "." + suffix


async def test_a_reply_address_the_broker_cannot_resolve_costs_one_reply(
    shop: Shop, amqp_url: str
) -> None:
    """RabbitMQ closes the connection that publishes to a direct reply-to address of an unknown
    node (INTERNAL_ERROR): such queries, forged or left over from a dead node, lose their reply
    only; the worker's consumers stay, each query is handled once and acked, and real queries
    are answered."""
    app = shop.app
    seen: list[str] = []
    handler = next(p for p in app.pipelines if p.queue == shop.queues[1])
    with capture_logs() as logs:
        genuine = await app.request(GetOrder(order_id="o-0"), timeout=5)  # opens the replies
        assert genuine.order_id == "o-0"
        address = unknown_node_reply_to(await own_reply_address(amqp_url))
        async with raw_channel(amqp_url) as channel:
            for i in range(3):
                channel.publish(
                    exchange=app.naming.queries,
                    routing_key=GET,
                    body=b'{"order_id":"q-%d"}' % i,
                    raw_properties=f.properties(
                        message_id=b"fq-%d" % i, type=GET.encode(), reply_to=address.encode()
                    ),
                )

        async def settled() -> bool:
            seen[:] = [e["message_id"] for e in logs if e["event"] == "query_reply_failed"]
            info = await shop.probe.queue_info(shop.queues[1])
            return len(seen) == 3 and info.messages == 0

        await until(settled, timeout=30, what="three lost replies, the queries acked")
        reply = await app.request(GetOrder(order_id="o-1"), timeout=10)
        assert reply.order_id == "o-1"
        await shop.consumers_intact()
    assert sorted(seen) == ["fq-0", "fq-1", "fq-2"]
    lost = [e for e in logs if e["event"] == "broker_connection_lost"]
    assert lost, "the broker did not close the replies connection: nothing was tested"
    assert {e["connection"] for e in lost} == {"replies"}  # never the consuming connection
    assert handler.in_flight == set()


async def own_reply_address(amqp_url: str) -> str:
    """A genuine direct reply-to address of this broker (to forge a look-alike from)."""
    connection = await aiormq.connect(amqp_url)
    try:
        channel = await connection.channel()
        declared = await channel.queue_declare(exclusive=True)
        queue = declared.queue
        assert queue is not None
        await channel.basic_consume("amq.rabbitmq.reply-to", _ignore, no_ack=True)
        await channel.basic_publish(
            b"",
            routing_key=queue,
            properties=aiormq.spec.Basic.Properties(reply_to="amq.rabbitmq.reply-to"),
        )
        message = await channel.basic_get(queue, no_ack=True)
        reply_to = message.header.properties.reply_to
        assert reply_to
        return reply_to
    finally:
        await connection.close()


async def _ignore(_: object) -> None:
    return None
