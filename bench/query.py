"""Query contenders: request/reply round trips with ``callers`` concurrent callers.

One process serves the query (a read-only handler computing the reply) and runs the callers.
Queues durable, queries not persistent. Contenders:

- ``leveret``: ``app.request`` over RabbitMQ's direct reply-to, replies matched by correlation id;
- ``faststream``: what FastStream's experts build for concurrent requests: a publisher object
  sending each query with ``reply_to`` and a correlation id, and a subscriber of its own on an
  exclusive reply queue that hands each reply to the caller waiting for that correlation id;
- ``faststream-request``: FastStream's ``broker.request`` (its documented request/reply, over
  direct reply-to). It holds one lock for the whole round trip (FastStream issue #1318), so
  concurrent callers take turns: it measures that lock, not the cost of a round trip.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from bench.worker import Contender, Params, emit, wait_go
from bench.workload import PREFETCH, QUERY_TYPE, GetOrderStatus, Names, OrderStatus, status_of
from framework import App, AppConfig, Service


async def _measure(p: Params, ask: Callable[[str], Awaitable[str]]) -> None:
    await ask("order-warmup")  # the reply consumer is set up on first use
    emit("ready", queues=[])
    await wait_go()
    issued = 0

    async def caller() -> None:
        nonlocal issued
        while issued < p.messages:
            issued += 1
            order_id = f"order-{issued:08d}"
            if await ask(order_id) != order_id:
                raise RuntimeError("a reply answered another query")

    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(caller() for _ in range(p.callers)))
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    # Serving and asking share this process: its CPU per round trip is both sides' cost.
    emit("result", rate=p.messages / elapsed, elapsed=elapsed, cpu_us=cpu / p.messages * 1e6)


async def run_leveret(p: Params) -> None:
    names = Names(p.tag)
    bench = Service("bench")

    @bench.query
    async def get_order_status(query: GetOrderStatus) -> OrderStatus:
        return status_of(query.order_id)

    app = App([bench], url=p.url, config=AppConfig(prefix=names.prefix, prefetch=PREFETCH))

    async def ask(order_id: str) -> str:
        reply = await app.request(GetOrderStatus(order_id=order_id), timeout=10)
        return reply.order_id

    async with app:
        await _measure(p, ask)


def _faststream_models() -> tuple[type[Any], type[Any]]:
    from pydantic import BaseModel

    class GetOrderStatusModel(BaseModel):
        order_id: str

    class OrderStatusModel(BaseModel):
        order_id: str
        status: str
        total_cents: int

    return GetOrderStatusModel, OrderStatusModel


async def run_faststream(p: Params) -> None:
    """Requests through a publisher object, replies matched by correlation id (see above)."""
    from faststream import AckPolicy
    from faststream.rabbit import (
        Channel,
        ExchangeType,
        RabbitBroker,
        RabbitExchange,
        RabbitMessage,
        RabbitQueue,
    )

    GetOrderStatusModel, OrderStatusModel = _faststream_models()
    names = Names(p.tag)
    broker = RabbitBroker(p.url, logger=None, default_channel=Channel(on_return_raises=True))
    exchange = RabbitExchange(f"{names.prefix}.queries", type=ExchangeType.DIRECT, durable=True)
    # Replies are transient: a queue of this connection's own, gone when it closes.
    replies = RabbitQueue(names.replies, durable=False, exclusive=True, auto_delete=True)
    waiting: dict[str, asyncio.Future[Any]] = {}

    @broker.subscriber(
        RabbitQueue(names.input, durable=True, routing_key=QUERY_TYPE),
        exchange,
        channel=Channel(prefetch_count=PREFETCH),
    )
    async def get_order_status(query: GetOrderStatusModel) -> OrderStatusModel:
        status = status_of(query.order_id)
        return OrderStatusModel(
            order_id=status.order_id, status=status.status, total_cents=status.total_cents
        )

    # Acked on arrival (no_ack), as direct reply-to is; no reply to a reply.
    @broker.subscriber(replies, channel=Channel(), ack_policy=AckPolicy.ACK_FIRST, no_reply=True)
    async def on_reply(reply: OrderStatusModel, message: RabbitMessage) -> None:
        future = waiting.pop(message.correlation_id, None)
        if future is not None and not future.done():
            future.set_result(reply)

    requests = broker.publisher(exchange=exchange, routing_key=QUERY_TYPE)
    loop = asyncio.get_running_loop()

    async def ask(order_id: str) -> str:
        correlation_id = uuid.uuid4().hex
        future = waiting[correlation_id] = loop.create_future()
        try:
            # reply_to per call: the publisher object applies its own only to what a handler
            # it decorates returns, not to publish().
            await requests.publish(
                GetOrderStatusModel(order_id=order_id),
                correlation_id=correlation_id,
                reply_to=names.replies,
            )
            async with asyncio.timeout(10):
                reply = await future
        finally:
            waiting.pop(correlation_id, None)
        return str(reply.order_id)

    await broker.connect()
    await broker.declare_exchange(exchange)  # on the publishing channel (see bench.pipeline)
    await broker.start()
    try:
        await _measure(p, ask)
    finally:
        await broker.stop()


async def run_faststream_request(p: Params) -> None:
    """FastStream's ``broker.request``: one round trip at a time (see above)."""
    from faststream.rabbit import Channel, ExchangeType, RabbitBroker, RabbitExchange, RabbitQueue

    GetOrderStatusModel, OrderStatusModel = _faststream_models()
    names = Names(p.tag)
    # One channel: FastStream publishes on the channel its exchange object was declared on, and
    # direct reply-to needs the request published where the reply consumer is.
    broker = RabbitBroker(
        p.url,
        logger=None,
        default_channel=Channel(prefetch_count=PREFETCH, on_return_raises=True),
    )
    exchange = RabbitExchange(f"{names.prefix}.queries", type=ExchangeType.DIRECT, durable=True)

    @broker.subscriber(
        RabbitQueue(names.input, durable=True, routing_key=QUERY_TYPE),
        exchange,
    )
    async def get_order_status(query: GetOrderStatusModel) -> OrderStatusModel:
        status = status_of(query.order_id)
        return OrderStatusModel(
            order_id=status.order_id, status=status.status, total_cents=status.total_cents
        )

    async def ask(order_id: str) -> str:
        message = await broker.request(
            GetOrderStatusModel(order_id=order_id),
            exchange=exchange,
            routing_key=QUERY_TYPE,
            timeout=10,
        )
        return str(OrderStatusModel.model_validate(await message.decode()).order_id)

    await broker.start()
    try:
        await _measure(p, ask)
    finally:
        await broker.stop()


CONTENDERS: dict[str, Contender] = {
    "leveret": run_leveret,
    "faststream": run_faststream,
    "faststream-request": run_faststream_request,
}
