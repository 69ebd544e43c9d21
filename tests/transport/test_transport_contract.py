"""The Transport contract: one suite, run unchanged against the memory and RabbitMQ transports."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from framework.errors import (
    ConfigurationError,
    PublishFailed,
    PublishNacked,
    TransportClosed,
    Unroutable,
)
from framework.transport.base import (
    BindingSpec,
    Delivery,
    ExchangeSpec,
    ExchangeType,
    OutgoingMessage,
    QueueSpec,
    Topology,
    Transport,
)
from tests.conftest import MakeTransport

WAIT = 10.0  # seconds; generous upper bound for anything that should happen at once


def message(body: bytes = b"{}", **fields: Any) -> OutgoingMessage:
    fields.setdefault("message_id", uuid.uuid4().hex)
    return OutgoingMessage(body=body, **fields)


class Inbox:
    """A consumer callback that collects deliveries, acking them when ``ack`` is set."""

    def __init__(self, *, ack: bool = False) -> None:
        self.ack = ack
        self.received: asyncio.Queue[Delivery] = asyncio.Queue()

    async def __call__(self, delivery: Delivery) -> None:
        if self.ack:
            await delivery.ack()
        self.received.put_nowait(delivery)

    async def get(self) -> Delivery:
        async with asyncio.timeout(WAIT):
            return await self.received.get()

    async def take(self, count: int) -> list[Delivery]:
        return [await self.get() for _ in range(count)]


async def declare_queues(transport: Transport, *specs: QueueSpec) -> None:
    await transport.declare(Topology(queues=specs))


async def routed(transport: Transport, queues: list[str]) -> dict[str, int]:
    return {name: await transport.queue_depth(name) for name in queues}


# -- routing ---------------------------------------------------------------------------------


async def test_direct_exchange_routes_by_exact_key(transport: Transport, prefix: str) -> None:
    """A direct exchange delivers to the queues bound with exactly the routing key."""
    ex, qa, qb = f"{prefix}.direct", f"{prefix}.a", f"{prefix}.b"
    await transport.declare(
        Topology(
            exchanges=(ExchangeSpec(ex, ExchangeType.DIRECT),),
            queues=(QueueSpec(qa), QueueSpec(qb)),
            bindings=(BindingSpec(qa, ex, "order.placed"), BindingSpec(qb, ex, "order.paid")),
        )
    )
    await transport.publish(message(), exchange=ex, routing_key="order.placed")
    assert await routed(transport, [qa, qb]) == {qa: 1, qb: 0}


async def test_topic_exchange_matches_star_and_hash(transport: Transport, prefix: str) -> None:
    """``*`` matches exactly one word and ``#`` zero or more, on dot-separated words."""
    ex = f"{prefix}.topic"
    patterns = {"star": "order.*", "hash": "order.#", "tail": "#.paid", "mid": "*.paid.*"}
    queues = {name: f"{prefix}.{name}" for name in patterns}
    await transport.declare(
        Topology(
            exchanges=(ExchangeSpec(ex, ExchangeType.TOPIC),),
            queues=tuple(QueueSpec(q) for q in queues.values()),
            bindings=tuple(BindingSpec(queues[n], ex, p) for n, p in patterns.items()),
        )
    )
    for key in ["order", "order.paid", "order.paid.eu", "invoice.paid", "x.paid.y.z"]:
        await transport.publish(message(), exchange=ex, routing_key=key, mandatory=False)
    depths = await routed(transport, list(queues.values()))
    # star: order.paid | hash: order, order.paid, order.paid.eu
    # tail: order.paid, invoice.paid | mid: order.paid.eu
    assert depths == {queues["star"]: 1, queues["hash"]: 3, queues["tail"]: 2, queues["mid"]: 1}


async def test_fanout_exchange_ignores_routing_key(transport: Transport, prefix: str) -> None:
    """A fanout exchange copies each message to every bound queue, whatever the keys."""
    ex, qa, qb = f"{prefix}.fan", f"{prefix}.a", f"{prefix}.b"
    await transport.declare(
        Topology(
            exchanges=(ExchangeSpec(ex, ExchangeType.FANOUT),),
            queues=(QueueSpec(qa), QueueSpec(qb)),
            bindings=(BindingSpec(qa, ex, "one"), BindingSpec(qb, ex, "")),
        )
    )
    await transport.publish(message(), exchange=ex, routing_key="anything")
    assert await routed(transport, [qa, qb]) == {qa: 1, qb: 1}


async def test_default_exchange_routes_to_queue_named_by_key(
    transport: Transport, prefix: str
) -> None:
    """The default exchange "" delivers to the queue whose name is the routing key."""
    queue = f"{prefix}.q"
    await declare_queues(transport, QueueSpec(queue))
    await transport.publish(message(b"hello"), exchange="", routing_key=queue)
    inbox = Inbox(ack=True)
    await transport.consume(queue, inbox, prefetch=1)
    delivery = await inbox.get()
    assert (delivery.body, delivery.exchange, delivery.routing_key) == (b"hello", "", queue)


async def test_mandatory_unroutable_raises(transport: Transport, prefix: str) -> None:
    """A mandatory publish that reaches no queue raises Unroutable naming exchange and key."""
    ex = f"{prefix}.direct"
    await transport.declare(Topology(exchanges=(ExchangeSpec(ex, ExchangeType.DIRECT),)))
    with pytest.raises(Unroutable) as caught:
        await transport.publish(message(), exchange=ex, routing_key="nobody")
    assert (caught.value.exchange, caught.value.routing_key) == (ex, "nobody")
    with pytest.raises(Unroutable):
        await transport.publish(message(), exchange="", routing_key=f"{prefix}.missing")


async def test_non_mandatory_unroutable_is_dropped(transport: Transport, prefix: str) -> None:
    """Without mandatory, a message no queue takes is confirmed and silently dropped."""
    ex = f"{prefix}.direct"
    await transport.declare(Topology(exchanges=(ExchangeSpec(ex, ExchangeType.DIRECT),)))
    await transport.publish(message(), exchange=ex, routing_key="nobody", mandatory=False)


async def test_publish_to_missing_exchange_fails_and_transport_survives(
    transport: Transport, prefix: str
) -> None:
    """Publishing to an exchange that does not exist raises PublishFailed; publishing goes on."""
    queue = f"{prefix}.q"
    await declare_queues(transport, QueueSpec(queue))
    with pytest.raises(PublishFailed, match="does not exist"):
        await transport.publish(message(), exchange=f"{prefix}.nope", routing_key="k")
    await transport.publish(message(), exchange="", routing_key=queue)
    assert await transport.queue_depth(queue) == 1


# -- settling --------------------------------------------------------------------------------


async def test_ack_removes_the_message(make_transport: MakeTransport, prefix: str) -> None:
    """An acked message is gone: closing the consumer's connection does not bring it back."""
    consumer_side, observer = await make_transport(), await make_transport()
    queue = f"{prefix}.q"
    await declare_queues(observer, QueueSpec(queue))
    await observer.publish(message(), exchange="", routing_key=queue)
    inbox = Inbox(ack=True)
    await consumer_side.consume(queue, inbox, prefetch=1)
    await inbox.get()
    await consumer_side.close()
    assert await observer.queue_depth(queue) == 0


async def test_nack_requeue_redelivers(transport: Transport, prefix: str) -> None:
    """nack(requeue=True) hands the same message back, flagged redelivered."""
    queue = f"{prefix}.q"
    await declare_queues(transport, QueueSpec(queue))
    sent = message(b"again")
    await transport.publish(sent, exchange="", routing_key=queue)
    inbox = Inbox()
    await transport.consume(queue, inbox, prefetch=1)
    first = await inbox.get()
    assert not first.redelivered
    await first.nack(requeue=True)
    second = await inbox.get()
    assert (second.body, second.message_id, second.redelivered) == (b"again", sent.message_id, True)
    await second.ack()


def dead_letter_topology(prefix: str, **queue_args: Any) -> Topology:
    dlx, dlq, work = f"{prefix}.dlx", f"{prefix}.dlq", f"{prefix}.work"
    return Topology(
        exchanges=(ExchangeSpec(dlx, ExchangeType.TOPIC),),
        queues=(QueueSpec(dlq), QueueSpec(work, dead_letter_exchange=dlx, **queue_args)),
        bindings=(BindingSpec(dlq, dlx, "#"),),
    )


async def test_nack_without_requeue_dead_letters(transport: Transport, prefix: str) -> None:
    """nack(requeue=False) moves the message to the DLX with an x-death entry, key unchanged."""
    await transport.declare(dead_letter_topology(prefix))
    work = f"{prefix}.work"
    await transport.publish(message(b"bad", headers={"k": "v"}), exchange="", routing_key=work)
    inbox, dead = Inbox(), Inbox(ack=True)
    await transport.consume(work, inbox, prefetch=1)
    await (await inbox.get()).nack(requeue=False)
    await transport.consume(f"{prefix}.dlq", dead, prefetch=1)
    delivery = await dead.get()
    assert (delivery.body, delivery.routing_key, delivery.exchange) == (
        b"bad",
        work,
        f"{prefix}.dlx",
    )
    assert delivery.headers["k"] == "v"
    [death] = delivery.headers["x-death"]
    assert death["reason"] == "rejected"
    assert death["queue"] == work
    assert death["count"] == 1
    assert death["exchange"] == ""
    assert death["routing-keys"] == [work]


async def test_dead_letter_routing_key_overrides_key(transport: Transport, prefix: str) -> None:
    """A queue's dead_letter_routing_key replaces the routing key of its dead letters."""
    await transport.declare(dead_letter_topology(prefix, dead_letter_routing_key="failed.work"))
    work = f"{prefix}.work"
    await transport.publish(message(), exchange="", routing_key=work)
    inbox, dead = Inbox(), Inbox(ack=True)
    await transport.consume(work, inbox, prefetch=1)
    await (await inbox.get()).nack(requeue=False)
    await transport.consume(f"{prefix}.dlq", dead, prefetch=1)
    delivery = await dead.get()
    assert delivery.routing_key == "failed.work"
    assert delivery.headers["x-death"][0]["routing-keys"] == [work]


async def test_nack_without_requeue_and_no_dlx_drops(
    make_transport: MakeTransport, prefix: str
) -> None:
    """Without a dead-letter exchange, a rejected message is dropped for good."""
    consumer_side, observer = await make_transport(), await make_transport()
    queue = f"{prefix}.q"
    await declare_queues(observer, QueueSpec(queue))
    await observer.publish(message(), exchange="", routing_key=queue)
    inbox = Inbox()
    await consumer_side.consume(queue, inbox, prefetch=1)
    await (await inbox.get()).nack(requeue=False)
    await consumer_side.close()
    assert await observer.queue_depth(queue) == 0


async def test_expired_message_dead_letters(transport: Transport, prefix: str) -> None:
    """A message past its per-message TTL is dead-lettered with reason "expired"."""
    await transport.declare(dead_letter_topology(prefix))
    work = f"{prefix}.work"
    dead = Inbox(ack=True)
    await transport.consume(f"{prefix}.dlq", dead, prefetch=1)
    await transport.publish(message(b"late", expiration_ms=50), exchange="", routing_key=work)
    delivery = await dead.get()
    assert delivery.body == b"late"
    death = delivery.headers["x-death"][0]
    assert (death["reason"], death["queue"], death["original-expiration"]) == (
        "expired",
        work,
        "50",
    )
    assert await transport.queue_depth(work) == 0


async def test_settling_twice_is_harmless(transport: Transport, prefix: str) -> None:
    """A second ack or nack of a delivery does nothing, and the consumer keeps working."""
    queue = f"{prefix}.q"
    await declare_queues(transport, QueueSpec(queue))
    inbox = Inbox()
    await transport.consume(queue, inbox, prefetch=1)
    for _ in range(2):
        await transport.publish(message(), exchange="", routing_key=queue)
    first = await inbox.get()
    await first.ack()
    await first.ack()
    await first.nack(requeue=True)
    second = await inbox.get()
    assert not second.redelivered
    await second.nack(requeue=False)
    await second.ack()
    await transport.publish(message(b"third"), exchange="", routing_key=queue)
    third = await inbox.get()
    assert third.body == b"third"
    await third.ack()


async def test_settling_in_any_order_settles_each_message_once(
    make_transport: MakeTransport, prefix: str
) -> None:
    """Deliveries acked and nacked out of order are each settled once: none lost, none twice."""
    consumer_side, observer = await make_transport(), await make_transport()
    queue = f"{prefix}.q"
    await declare_queues(observer, QueueSpec(queue))
    count, prefetch = 60, 20
    for i in range(count):
        await observer.publish(message(str(i).encode()), exchange="", routing_key=queue)
    inbox = Inbox()
    await consumer_side.consume(queue, inbox, prefetch=prefetch)
    acked: list[bytes] = []
    nacked: set[bytes] = set()
    while len(acked) < count:
        batch = await inbox.take(min(prefetch, count - len(acked)))
        # Newest first, and every third message nacked back once: acks overtake older
        # deliveries and nacks sit between acks.
        for delivery in reversed(batch):
            if int(delivery.body) % 3 == 0 and delivery.body not in nacked:
                nacked.add(delivery.body)
                await delivery.nack(requeue=True)
            else:
                acked.append(delivery.body)
                await delivery.ack()
    assert sorted(acked, key=int) == [str(i).encode() for i in range(count)]
    # A message acked twice (a channel error) or never would be back in the queue now.
    await consumer_side.close()
    assert await observer.queue_depth(queue) == 0


# -- consumers -------------------------------------------------------------------------------


async def test_prefetch_bounds_unacked_deliveries(transport: Transport, prefix: str) -> None:
    """With prefetch=2 at most two deliveries are unacked; acking one lets the next through."""
    queue = f"{prefix}.q"
    await declare_queues(transport, QueueSpec(queue))
    release = asyncio.Event()
    in_flight: list[Delivery] = []
    peak = 0
    two_arrived, all_done = asyncio.Event(), asyncio.Event()
    done = 0

    async def slow(delivery: Delivery) -> None:
        nonlocal peak, done
        in_flight.append(delivery)
        peak = max(peak, len(in_flight))
        if len(in_flight) == 2:
            two_arrived.set()
        await release.wait()
        in_flight.remove(delivery)
        await delivery.ack()
        done += 1
        if done == 5:
            all_done.set()

    for i in range(5):
        await transport.publish(message(str(i).encode()), exchange="", routing_key=queue)
    await transport.consume(queue, slow, prefetch=2)
    async with asyncio.timeout(WAIT):
        await two_arrived.wait()
    assert await transport.queue_depth(queue) == 3  # the broker holds back the rest
    assert len(in_flight) == 2
    release.set()
    async with asyncio.timeout(WAIT):
        await all_done.wait()
    assert peak == 2


async def test_consumers_of_one_queue_share_messages(
    make_transport: MakeTransport, prefix: str
) -> None:
    """Two consumers of one queue (on separate connections) both receive messages."""
    one, two = await make_transport(), await make_transport()
    queue = f"{prefix}.q"
    await declare_queues(one, QueueSpec(queue))
    first, second = Inbox(), Inbox()
    await one.consume(queue, first, prefetch=1)
    await two.consume(queue, second, prefetch=1)
    for _ in range(4):
        await one.publish(message(), exchange="", routing_key=queue)
    # Each holds one unacked message, so each must have received one.
    a, b = await first.get(), await second.get()
    assert a.message_id != b.message_id
    await a.ack()
    await b.ack()
    rest = [await first.get(), await second.get()]
    for delivery in rest:
        await delivery.ack()


async def test_session_is_shared_by_one_consumer_and_not_by_another(
    transport: Transport, prefix: str
) -> None:
    """Deliveries of one consumer carry one ``session``; another consumer's carry another."""
    queue_a, queue_b = f"{prefix}.a", f"{prefix}.b"
    await declare_queues(transport, QueueSpec(queue_a), QueueSpec(queue_b))
    first, second = Inbox(ack=True), Inbox(ack=True)
    await transport.consume(queue_a, first, prefetch=10)
    await transport.consume(queue_b, second, prefetch=10)
    for queue in (queue_a, queue_a, queue_b):
        await transport.publish(message(), exchange="", routing_key=queue)
    a1, a2 = await first.take(2)
    (b,) = await second.take(1)
    assert a1.session is not None
    assert a1.session is a2.session
    assert b.session is not a1.session


async def test_close_returns_unacked_messages(make_transport: MakeTransport, prefix: str) -> None:
    """Closing a transport returns its unsettled deliveries to the queue, as redelivered."""
    first, second = await make_transport(), await make_transport()
    queue = f"{prefix}.q"
    await declare_queues(first, QueueSpec(queue))
    sent = message(b"unfinished")
    await first.publish(sent, exchange="", routing_key=queue)
    held = Inbox()
    await first.consume(queue, held, prefetch=1)
    await held.get()
    await first.close()
    again = Inbox(ack=True)
    await second.consume(queue, again, prefetch=1)
    delivery = await again.get()
    assert (delivery.message_id, delivery.redelivered) == (sent.message_id, True)


async def test_cancelled_consumer_gets_nothing_more(transport: Transport, prefix: str) -> None:
    """After cancel(), new messages stay in the queue; an in-flight one can still be acked."""
    queue = f"{prefix}.q"
    await declare_queues(transport, QueueSpec(queue))
    inbox = Inbox()
    consumer = await transport.consume(queue, inbox, prefetch=1)
    await transport.publish(message(), exchange="", routing_key=queue)
    in_flight = await inbox.get()
    await consumer.cancel()
    await in_flight.ack()
    await transport.publish(message(), exchange="", routing_key=queue)
    assert await transport.queue_depth(queue) == 1
    assert inbox.received.empty()


async def test_consume_missing_queue_raises(transport: Transport, prefix: str) -> None:
    """Consuming a queue that does not exist raises ConfigurationError."""
    with pytest.raises(ConfigurationError, match="does not exist"):
        await transport.consume(f"{prefix}.missing", Inbox(), prefetch=1)


# -- properties ------------------------------------------------------------------------------


async def test_properties_and_headers_round_trip(transport: Transport, prefix: str) -> None:
    """Every property and str/int/bool/bytes/nested header arrives as it was sent."""
    queue = f"{prefix}.q"
    await declare_queues(transport, QueueSpec(queue))
    headers = {
        "s": "text",
        "i": 42,
        "neg": -7,
        "big": 2**40,
        "t": True,
        "f": False,
        "raw": b"\x00\xff",
        "nested": {"k": "v", "n": 1, "deeper": {"x": [1, "two"]}},
        "list": ["a", 1, True],
    }
    sent = message(
        b'{"a":1}',
        type="shop.order_placed",
        correlation_id="corr-1",
        content_type="application/json",
        headers=headers,
        reply_to="somewhere",
        timestamp=1_700_000_000,
        persistent=False,
    )
    await transport.publish(sent, exchange="", routing_key=queue)
    inbox = Inbox(ack=True)
    await transport.consume(queue, inbox, prefetch=1)
    got = await inbox.get()
    assert (got.body, got.message_id, got.type, got.correlation_id) == (
        sent.body,
        sent.message_id,
        "shop.order_placed",
        "corr-1",
    )
    assert (got.content_type, got.reply_to, got.timestamp) == (
        "application/json",
        "somewhere",
        1_700_000_000,
    )
    assert dict(got.headers) == headers


async def test_publisher_mutating_headers_after_publish_changes_nothing(
    transport: Transport, prefix: str
) -> None:
    """The broker keeps the headers as published, not the caller's dict."""
    queue = f"{prefix}.q"
    await declare_queues(transport, QueueSpec(queue))
    sent = message(headers={"a": "1"})
    await transport.publish(sent, exchange="", routing_key=queue)
    sent.headers["a"] = "changed"
    inbox = Inbox(ack=True)
    await transport.consume(queue, inbox, prefetch=1)
    assert (await inbox.get()).headers == {"a": "1"}


# -- request / reply -------------------------------------------------------------------------


async def respond_to(
    transport: Transport, queue: str, *, count: int, reverse: bool
) -> asyncio.Task[None]:
    """Answer requests on ``queue``: after ``count`` arrived, in reverse order if asked."""
    waiting: list[Delivery] = []
    all_in = asyncio.Event()

    async def on_request(delivery: Delivery) -> None:
        waiting.append(delivery)
        if len(waiting) == count:
            all_in.set()

    await transport.consume(queue, on_request, prefetch=count)

    async def answer() -> None:
        await all_in.wait()
        for request in reversed(waiting) if reverse else waiting:
            assert request.reply_to is not None
            reply = message(b"re:" + request.body, correlation_id=request.correlation_id)
            await transport.publish(reply, exchange="", routing_key=request.reply_to)
            await request.ack()

    return asyncio.get_running_loop().create_task(answer())


async def test_request_gets_reply_via_direct_reply_to(
    make_transport: MakeTransport, prefix: str
) -> None:
    """request() sets a direct reply-to address and returns the reply matched by correlation id."""
    client, server = await make_transport(), await make_transport()
    queue = f"{prefix}.rpc"
    await declare_queues(server, QueueSpec(queue))
    seen: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()

    async def on_request(delivery: Delivery) -> None:
        seen.set_result(delivery.reply_to)
        assert delivery.reply_to is not None
        reply = message(b"pong", correlation_id=delivery.correlation_id)
        await server.publish(reply, exchange="", routing_key=delivery.reply_to)
        await delivery.ack()

    await server.consume(queue, on_request, prefetch=1)
    ask = message(b"ping", correlation_id=uuid.uuid4().hex)
    reply = await client.request(ask, exchange="", routing_key=queue, timeout=WAIT)
    assert (reply.body, reply.correlation_id) == (b"pong", ask.correlation_id)
    assert (await seen or "").startswith("amq.rabbitmq.reply-to.")


async def test_concurrent_requests_complete_out_of_order(
    make_transport: MakeTransport, prefix: str
) -> None:
    """50 requests are in flight at once and each gets its own reply, answered in reverse."""
    client, server = await make_transport(), await make_transport()
    queue = f"{prefix}.rpc"
    await declare_queues(server, QueueSpec(queue))
    answering = await respond_to(server, queue, count=50, reverse=True)
    asks = [message(str(i).encode(), correlation_id=uuid.uuid4().hex) for i in range(50)]
    replies = await asyncio.gather(
        *(client.request(a, exchange="", routing_key=queue, timeout=WAIT) for a in asks)
    )
    await answering
    assert [r.body for r in replies] == [b"re:" + a.body for a in asks]


async def test_request_without_reply_times_out(transport: Transport, prefix: str) -> None:
    """A request nobody answers raises TimeoutError after its timeout."""
    queue = f"{prefix}.rpc"
    await declare_queues(transport, QueueSpec(queue))
    ask = message(correlation_id=uuid.uuid4().hex)
    with pytest.raises(TimeoutError):
        await transport.request(ask, exchange="", routing_key=queue, timeout=0.2)


async def test_request_to_unroutable_key_raises(transport: Transport, prefix: str) -> None:
    """A request no queue receives raises Unroutable at once."""
    ask = message(correlation_id=uuid.uuid4().hex)
    with pytest.raises(Unroutable):
        await transport.request(ask, exchange="", routing_key=f"{prefix}.nobody", timeout=WAIT)


async def test_reply_nobody_waits_for_is_dropped(transport: Transport, prefix: str) -> None:
    """Publishing a reply to a reply-to address whose requester is gone does not raise."""
    queue = f"{prefix}.rpc"
    await declare_queues(transport, QueueSpec(queue))
    ask = message(correlation_id=uuid.uuid4().hex)
    with pytest.raises(TimeoutError):
        await transport.request(ask, exchange="", routing_key=queue, timeout=0.05)
    inbox = Inbox(ack=True)
    await transport.consume(queue, inbox, prefetch=1)
    late = await inbox.get()
    assert late.reply_to is not None
    reply = message(correlation_id=late.correlation_id)
    await transport.publish(reply, exchange="", routing_key=late.reply_to)


# -- topology --------------------------------------------------------------------------------


async def test_declare_is_idempotent(transport: Transport, prefix: str) -> None:
    """Declaring the same topology twice changes nothing and keeps messages."""
    topology = dead_letter_topology(prefix, max_length=10)
    await transport.declare(topology)
    await transport.publish(message(), exchange="", routing_key=f"{prefix}.work")
    await transport.declare(topology)
    assert await transport.queue_depth(f"{prefix}.work") == 1


async def test_redeclare_with_other_settings_raises_and_transport_works(
    transport: Transport, prefix: str
) -> None:
    """Redeclaring a queue or exchange differently raises ConfigurationError; the rest works."""
    queue, ex = f"{prefix}.q", f"{prefix}.ex"
    await transport.declare(
        Topology(
            exchanges=(ExchangeSpec(ex, ExchangeType.DIRECT),),
            queues=(QueueSpec(queue, max_length=5),),
        )
    )
    with pytest.raises(ConfigurationError, match=queue) as caught:
        await declare_queues(transport, QueueSpec(queue, max_length=6))
    assert "max" in str(caught.value)
    with pytest.raises(ConfigurationError, match=ex):
        await transport.declare(Topology(exchanges=(ExchangeSpec(ex, ExchangeType.TOPIC),)))
    await declare_queues(transport, QueueSpec(queue, max_length=5))
    await transport.publish(message(b"still"), exchange="", routing_key=queue)
    inbox = Inbox(ack=True)
    await transport.consume(queue, inbox, prefetch=1)
    assert (await inbox.get()).body == b"still"


async def test_binding_to_missing_exchange_or_queue_raises(
    transport: Transport, prefix: str
) -> None:
    """A binding that names a missing exchange or queue raises ConfigurationError."""
    queue, ex = f"{prefix}.q", f"{prefix}.ex"
    await transport.declare(
        Topology(exchanges=(ExchangeSpec(ex, ExchangeType.DIRECT),), queues=(QueueSpec(queue),))
    )
    with pytest.raises(ConfigurationError, match=f"{prefix}.nope"):
        await transport.declare(Topology(bindings=(BindingSpec(queue, f"{prefix}.nope", "k"),)))
    with pytest.raises(ConfigurationError, match=f"{prefix}.gone"):
        await transport.declare(Topology(bindings=(BindingSpec(f"{prefix}.gone", ex, "k"),)))


async def test_unbind_removes_only_that_binding(transport: Transport, prefix: str) -> None:
    """After unbind, the exchange no longer routes that key to the queue; its other bindings do."""
    queue, ex = f"{prefix}.q", f"{prefix}.ex"
    await transport.declare(
        Topology(
            exchanges=(ExchangeSpec(ex, ExchangeType.DIRECT),),
            queues=(QueueSpec(queue),),
            bindings=(BindingSpec(queue, ex, "old"), BindingSpec(queue, ex, "kept")),
        )
    )
    await transport.unbind(BindingSpec(queue, ex, "old"))
    with pytest.raises(Unroutable):
        await transport.publish(message(), exchange=ex, routing_key="old")
    await transport.publish(message(), exchange=ex, routing_key="kept")
    assert await transport.queue_depth(queue) == 1


async def test_unbinding_what_does_not_exist_does_nothing(
    transport: Transport, prefix: str
) -> None:
    """Unbinding a missing binding, or one naming a missing queue or exchange, neither raises
    nor harms the transport, and unbinding twice is the same as once."""
    queue, ex = f"{prefix}.q", f"{prefix}.ex"
    await transport.declare(
        Topology(
            exchanges=(ExchangeSpec(ex, ExchangeType.DIRECT),),
            queues=(QueueSpec(queue),),
            bindings=(BindingSpec(queue, ex, "k"),),
        )
    )
    await transport.unbind(BindingSpec(queue, ex, "never-bound"))
    await transport.unbind(BindingSpec(queue, f"{prefix}.nope", "k"))
    await transport.unbind(BindingSpec(f"{prefix}.gone", ex, "k"))
    await transport.publish(message(b"still"), exchange=ex, routing_key="k")
    assert await transport.queue_depth(queue) == 1
    for _ in range(2):
        await transport.unbind(BindingSpec(queue, ex, "k"))
    with pytest.raises(Unroutable):
        await transport.publish(message(), exchange=ex, routing_key="k")


async def test_full_queue_with_reject_publish_nacks(transport: Transport, prefix: str) -> None:
    """A queue at max_length with overflow=reject-publish makes publish raise PublishNacked."""
    queue = f"{prefix}.q"
    await declare_queues(transport, QueueSpec(queue, max_length=2, overflow="reject-publish"))
    for _ in range(2):
        await transport.publish(message(), exchange="", routing_key=queue)
    with pytest.raises(PublishNacked):
        await transport.publish(message(), exchange="", routing_key=queue)
    assert await transport.queue_depth(queue) == 2


async def test_full_queue_with_drop_head_drops_oldest(transport: Transport, prefix: str) -> None:
    """A queue at max_length with the default overflow drops its oldest message."""
    queue = f"{prefix}.q"
    await declare_queues(transport, QueueSpec(queue, max_length=2))
    for body in (b"1", b"2", b"3"):
        await transport.publish(message(body), exchange="", routing_key=queue)
    inbox = Inbox(ack=True)
    await transport.consume(queue, inbox, prefetch=2)
    assert [d.body for d in await inbox.take(2)] == [b"2", b"3"]


async def test_quorum_delivery_limit_dead_letters(transport: Transport, prefix: str) -> None:
    """A quorum queue counts deliveries and dead-letters past delivery_limit."""
    await transport.declare(dead_letter_topology(prefix, quorum=True, delivery_limit=1))
    work = f"{prefix}.work"
    await transport.publish(message(b"poison"), exchange="", routing_key=work)
    inbox, dead = Inbox(), Inbox(ack=True)
    await transport.consume(work, inbox, prefetch=1)
    await transport.consume(f"{prefix}.dlq", dead, prefetch=1)
    first = await inbox.get()
    assert first.headers.get("x-delivery-count", 0) == 0
    await first.nack(requeue=True)
    second = await inbox.get()
    assert second.headers["x-delivery-count"] == 1
    await second.nack(requeue=True)
    assert (await dead.get()).headers["x-death"][0]["reason"] == "delivery_limit"


async def test_delete_queue_removes_it(transport: Transport, prefix: str) -> None:
    """delete_queue drops the queue and its messages; deleting it again is fine."""
    queue = f"{prefix}.q"
    await declare_queues(transport, QueueSpec(queue))
    await transport.publish(message(), exchange="", routing_key=queue)
    await transport.delete_queue(queue)
    await transport.delete_queue(queue)
    with pytest.raises(ConfigurationError):
        await transport.queue_depth(queue)
    with pytest.raises(Unroutable):
        await transport.publish(message(), exchange="", routing_key=queue)


async def test_closed_transport_refuses_work(transport: Transport, prefix: str) -> None:
    """After close(), operations raise TransportClosed; closing again is a no-op."""
    await transport.close()
    await transport.close()
    with pytest.raises(TransportClosed):
        await transport.publish(message(), exchange="", routing_key=f"{prefix}.q")
    with pytest.raises(TransportClosed):
        await transport.declare(Topology(queues=(QueueSpec(f"{prefix}.q"),)))
    with pytest.raises(TransportClosed):
        await transport.unbind(BindingSpec(f"{prefix}.q", f"{prefix}.ex", "k"))
