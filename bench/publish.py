"""Publish contenders: N order commands with publisher confirms, mandatory, persistent, to a
durable queue behind a direct exchange; one by one (``sequential``: await each confirm) or
``concurrent`` (``window`` publishes in flight, then the next batch).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import msgspec

from bench.worker import Contender, Params, emit, wait_go
from bench.workload import ORDER_TYPE, BenchOrder, Names, order


async def _measure(p: Params, send: Callable[[BenchOrder], Awaitable[object]]) -> None:
    orders = [order(i) for i in range(p.messages)]
    emit("ready", queues=[])
    await wait_go()
    started = time.perf_counter()
    if p.mode == "sequential":
        for o in orders:
            await send(o)
    else:
        for first in range(0, len(orders), p.window):
            await asyncio.gather(*(send(o) for o in orders[first : first + p.window]))
    elapsed = time.perf_counter() - started
    emit("result", rate=p.messages / elapsed, elapsed=elapsed)


async def run_leveret(p: Params) -> None:
    from framework import App, AppConfig

    names = Names(p.tag)
    app = App([], url=p.url, config=AppConfig(prefix=names.prefix), contracts=[BenchOrder])
    await app.start(consume=False)
    try:
        await _measure(p, app.send)
    finally:
        await app.stop(grace=1)


async def run_aio_pika(p: Params) -> None:
    import aio_pika

    names = Names(p.tag)
    encoder = msgspec.json.Encoder()
    conn = await aio_pika.connect(p.url)
    try:
        channel = await conn.channel(publisher_confirms=True, on_return_raises=True)
        exchange = await channel.get_exchange(names.exchange)

        async def send(o: BenchOrder) -> object:
            message_id = uuid.uuid4().hex
            return await exchange.publish(
                aio_pika.Message(
                    encoder.encode(o),
                    message_id=message_id,
                    correlation_id=message_id,
                    type=ORDER_TYPE,
                    content_type="application/json",
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    timestamp=int(time.time()),
                    headers={"leveret-version": 1},
                ),
                routing_key=ORDER_TYPE,
                mandatory=True,
            )

        await _measure(p, send)
    finally:
        await conn.close()


async def run_aiormq(p: Params) -> None:
    import aiormq
    from pamqp.commands import Basic

    names = Names(p.tag)
    encoder = msgspec.json.Encoder()
    conn = await aiormq.connect(p.url)
    try:
        channel = await conn.channel(publisher_confirms=True)

        async def send(o: BenchOrder) -> object:
            message_id = uuid.uuid4().hex
            confirm = await channel.basic_publish(
                encoder.encode(o),
                exchange=names.exchange,
                routing_key=ORDER_TYPE,
                mandatory=True,
                properties=Basic.Properties(
                    content_type="application/json",
                    delivery_mode=2,
                    message_id=message_id,
                    correlation_id=message_id,
                    timestamp=datetime.now(UTC),
                    message_type=ORDER_TYPE,
                    headers={"leveret-version": 1},
                ),
            )
            if not isinstance(confirm, Basic.Ack):
                raise RuntimeError(f"publish not confirmed: {confirm!r}")
            return confirm

        await _measure(p, send)
    finally:
        await conn.close()


CONTENDERS: dict[str, Contender] = {
    "leveret": run_leveret,
    "aio-pika": run_aio_pika,
    "aiormq": run_aiormq,
}
