"""Query contenders: request/reply round trips with ``callers`` concurrent callers.

One process serves the query (a read-only handler computing the reply) and runs the callers,
over RabbitMQ's direct reply-to, for both contenders: leveret's ``app.request`` and FastStream's
``broker.request`` (its documented request/reply). Queues durable, queries not persistent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

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

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(p.callers)))
    elapsed = time.perf_counter() - started
    emit("result", rate=p.messages / elapsed, elapsed=elapsed)


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


async def run_faststream(p: Params) -> None:
    from faststream.rabbit import Channel, ExchangeType, RabbitBroker, RabbitExchange, RabbitQueue
    from pydantic import BaseModel

    class GetOrderStatusModel(BaseModel):
        order_id: str

    class OrderStatusModel(BaseModel):
        order_id: str
        status: str
        total_cents: int

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
        return OrderStatusModel.model_validate(await message.decode()).order_id

    await broker.start()
    try:
        await _measure(p, ask)
    finally:
        await broker.stop()


CONTENDERS: dict[str, Contender] = {
    "leveret": run_leveret,
    "faststream": run_faststream,
}
