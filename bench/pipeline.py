"""Pipeline contenders: consume an order, decode it, send a follow-up command with publisher
confirm (awaited, mandatory), then ack. Prefetch 100 everywhere; durable queues, persistent
messages, the same 188-byte body and the same wire properties for every contender.

Each contender is a worker process (see ``bench.worker``). The orchestrator declares the
exchange, the sink and (except for leveret, which declares its own handler queue) the input
queue, fills it or offers load at a fixed rate, and reads the result.

Modes: ``throughput`` (drain N pre-published messages), ``latency`` (messages arrive at a fixed
rate carrying their publish time; the handler records publish-to-confirmed-follow-up time) and
``memory`` (leveret only: RSS after a warm-up and after N messages, with progress events so the
orchestrator can keep the queue fed without flooding the broker).
"""

from __future__ import annotations

import gc
import resource
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec

from bench.worker import Contender, Params, Tracker, emit, rss_bytes, wait_go
from bench.workload import (
    FOLLOW_UP_TYPE,
    ORDER_TYPE,
    PREFETCH,
    SENT_HEADER,
    BenchFollowUp,
    BenchOrder,
    Names,
)
from framework import App, AppConfig, Context, Service

CONTENT_TYPE = "application/json"


def make_tracker(p: Params) -> Tracker:
    if p.mode != "memory":
        return Tracker(p.messages)
    state = {"warm": 0}

    def on_count(count: int) -> None:
        if count == p.warmup:
            state["warm"] = rss_bytes()
            emit("warm", rss=state["warm"])
        if count % p.progress_every == 0:
            emit("progress", count=count, rss=rss_bytes())

    return Tracker(p.messages, on_count)


def report(p: Params, tracker: Tracker, elapsed: float, cpu: float) -> None:
    result: dict[str, Any] = {
        "rate": p.messages / elapsed,
        "elapsed": elapsed,
        "cpu_us_per_msg": cpu / p.messages * 1e6,
    }
    usage = resource.getrusage(resource.RUSAGE_SELF)  # whole process, set-up included
    result["user_s"], result["sys_s"] = usage.ru_utime, usage.ru_stime
    result.update(tracker.summary())
    if p.mode == "memory":
        result["rss_end"] = rss_bytes()
        gc.collect()
        result["rss_end_after_gc"] = rss_bytes()
    emit("result", **result)


# -- leveret -----------------------------------------------------------------------------------


async def run_leveret(p: Params) -> None:
    """The handler as a leveret user writes it."""
    names = Names(p.tag)
    tracker = make_tracker(p)
    bench = Service("bench")

    @bench.command
    async def place_order(cmd: BenchOrder, ctx: Context) -> None:
        await ctx.send(BenchFollowUp(order_id=cmd.order_id, items=cmd.items))
        tracker.hit(ctx.headers.get(SENT_HEADER))

    config = AppConfig(prefix=names.prefix, prefetch=PREFETCH, queue_type=p.queue_type)
    app = App([bench], url=p.url, config=config)
    await app.start(consume=False)
    try:
        (pipeline,) = app.pipelines
        emit("ready", queues=[pipeline.queue, app.naming.dlq(pipeline.queue)])
        await wait_go()
        started, cpu = time.perf_counter(), time.process_time()
        # What App.start() does for each handler, after the fill instead of before it.
        consumer = await app.transport.consume(pipeline.queue, pipeline, prefetch=PREFETCH)
        await tracker.done.wait()
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        await consumer.cancel()
    finally:
        await app.stop(grace=1)
    report(p, tracker, elapsed, cpu)


# -- hand-written aio-pika ---------------------------------------------------------------------


async def run_aio_pika(p: Params) -> None:
    """The loop a team writes with aio-pika's object API and no framework."""
    import aio_pika

    names = Names(p.tag)
    tracker = make_tracker(p)
    conn = await aio_pika.connect(p.url)
    try:
        publish_ch = await conn.channel(publisher_confirms=True, on_return_raises=True)
        consume_ch = await conn.channel()
        await consume_ch.set_qos(prefetch_count=PREFETCH)
        queue = await consume_ch.get_queue(names.input)
        exchange = await publish_ch.get_exchange(names.exchange)
        decoder = msgspec.json.Decoder(BenchOrder)
        encoder = msgspec.json.Encoder()

        async def handle(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            order = decoder.decode(message.body)
            follow = BenchFollowUp(order_id=order.order_id, items=order.items)
            await exchange.publish(
                aio_pika.Message(
                    encoder.encode(follow),
                    message_id=uuid.uuid4().hex,
                    correlation_id=message.correlation_id or message.message_id,
                    type=FOLLOW_UP_TYPE,
                    content_type=CONTENT_TYPE,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    timestamp=int(time.time()),
                    headers={"leveret-version": 1, "leveret-causation-id": message.message_id},
                ),
                routing_key=FOLLOW_UP_TYPE,
                mandatory=True,
            )
            await message.ack()
            tracker.hit(message.headers.get(SENT_HEADER))

        emit("ready", queues=[])
        await wait_go()
        started, cpu = time.perf_counter(), time.process_time()
        await queue.consume(handle)
        await tracker.done.wait()
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    finally:
        await conn.close()
    report(p, tracker, elapsed, cpu)


# -- bare aiormq: the practical ceiling ----------------------------------------------------------


async def run_aiormq(p: Params) -> None:
    """The same handler one layer down: aiormq's basic_publish (confirm, mandatory), basic_ack."""
    import aiormq
    from pamqp.commands import Basic

    names = Names(p.tag)
    tracker = make_tracker(p)
    conn = await aiormq.connect(p.url)
    try:
        publish_ch = await conn.channel(publisher_confirms=True)  # returns raise PublishError
        consume_ch = await conn.channel(publisher_confirms=False)
        await consume_ch.basic_qos(prefetch_count=PREFETCH)
        decoder = msgspec.json.Decoder(BenchOrder)
        encoder = msgspec.json.Encoder()

        async def on_message(message: aiormq.abc.DeliveredMessage) -> None:
            props = message.header.properties
            order = decoder.decode(message.body)
            follow = BenchFollowUp(order_id=order.order_id, items=order.items)
            confirm = await publish_ch.basic_publish(
                encoder.encode(follow),
                exchange=names.exchange,
                routing_key=FOLLOW_UP_TYPE,
                mandatory=True,
                properties=Basic.Properties(
                    content_type=CONTENT_TYPE,
                    delivery_mode=2,
                    message_id=uuid.uuid4().hex,
                    correlation_id=props.correlation_id or props.message_id,
                    timestamp=datetime.now(UTC),
                    message_type=FOLLOW_UP_TYPE,
                    headers={"leveret-version": 1, "leveret-causation-id": props.message_id},
                ),
            )
            if not isinstance(confirm, Basic.Ack):
                raise RuntimeError(f"publish not confirmed: {confirm!r}")
            await message.channel.basic_ack(message.delivery.delivery_tag)
            tracker.hit((props.headers or {}).get(SENT_HEADER))

        emit("ready", queues=[])
        await wait_go()
        started, cpu = time.perf_counter(), time.process_time()
        await consume_ch.basic_consume(names.input, on_message)
        await tracker.done.wait()
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    finally:
        await conn.close()
    report(p, tracker, elapsed, cpu)


# -- FastStream ------------------------------------------------------------------------------


async def _run_faststream(p: Params, *, use_msgspec: bool) -> None:
    """FastStream as its documentation sets it up for this job: the subscriber consuming on a
    channel of its own (prefetch 100), follow-ups sent through a publisher object built once
    (``broker.publisher(...)``) on the broker's default channel (confirms, returns raise); its
    default pydantic models, or msgspec Structs."""
    from faststream.rabbit import (
        Channel,
        ExchangeType,
        RabbitBroker,
        RabbitExchange,
        RabbitMessage,
        RabbitQueue,
    )

    names = Names(p.tag)
    tracker = make_tracker(p)
    exchange = RabbitExchange(names.exchange, type=ExchangeType.DIRECT, durable=True)
    queue = RabbitQueue(names.input, durable=True, routing_key=ORDER_TYPE)
    # logger=None: no per-message log lines, as for every other contender. Returns raise, as
    # with every other contender (a mandatory publish nobody received is a failure).
    publish_channel = Channel(on_return_raises=True)
    consume_channel = Channel(prefetch_count=PREFETCH)
    if use_msgspec:
        from fast_depends.msgspec import MsgSpecSerializer

        broker = RabbitBroker(
            p.url, logger=None, default_channel=publish_channel, serializer=MsgSpecSerializer()
        )
    else:
        broker = RabbitBroker(p.url, logger=None, default_channel=publish_channel)
    # The follow-ups' fixed options live in the publisher object; per message only the ids.
    follow_ups = broker.publisher(
        exchange=exchange,
        routing_key=FOLLOW_UP_TYPE,
        mandatory=True,
        persist=True,
        message_type=FOLLOW_UP_TYPE,
        headers={"leveret-version": 1},
    )
    if use_msgspec:

        @broker.subscriber(queue, exchange, channel=consume_channel)
        async def handle_struct(body: BenchOrder, message: RabbitMessage) -> None:
            await follow_ups.publish(
                BenchFollowUp(order_id=body.order_id, items=body.items),
                message_id=uuid.uuid4().hex,
                correlation_id=message.correlation_id,
                headers={"leveret-causation-id": message.message_id},
            )
            tracker.hit(message.headers.get(SENT_HEADER))
    else:
        from pydantic import BaseModel

        class ItemModel(BaseModel):
            sku: str
            qty: int
            unit_price_cents: int

        class OrderModel(BaseModel):
            order_id: str
            customer_id: str
            items: list[ItemModel]
            address: str

        class FollowUpModel(BaseModel):
            order_id: str
            items: list[ItemModel]

        @broker.subscriber(queue, exchange, channel=consume_channel)
        async def handle_model(body: OrderModel, message: RabbitMessage) -> None:
            await follow_ups.publish(
                FollowUpModel(order_id=body.order_id, items=body.items),
                message_id=uuid.uuid4().hex,
                correlation_id=message.correlation_id,
                headers={"leveret-causation-id": message.message_id},
            )
            tracker.hit(message.headers.get(SENT_HEADER))

    await broker.connect()
    try:
        # FastStream keeps one exchange object per exchange, on the channel that declared it
        # first; declared here, it is the publishing channel's (the subscriber, started first,
        # would otherwise claim it for its consuming channel).
        await broker.declare_exchange(exchange)
        emit("ready", queues=[])
        await wait_go()
        started, cpu = time.perf_counter(), time.process_time()
        await broker.start()
        await tracker.done.wait()
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    finally:
        await broker.stop()
    report(p, tracker, elapsed, cpu)


async def run_faststream(p: Params) -> None:
    await _run_faststream(p, use_msgspec=False)


async def run_faststream_msgspec(p: Params) -> None:
    await _run_faststream(p, use_msgspec=True)


CONTENDERS: dict[str, Contender] = {
    "leveret": run_leveret,
    "aio-pika": run_aio_pika,
    "aiormq": run_aiormq,
    "faststream": run_faststream,
    "faststream-msgspec": run_faststream_msgspec,
}
