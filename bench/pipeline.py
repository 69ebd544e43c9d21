"""Handler pipeline throughput: leveret next to a hand-written aio-pika loop, in one run.

Each contender consumes N pre-published order commands (prefetch 100), decodes each with
msgspec, publishes a follow-up command with publisher confirms (awaited) and acks. Queues are
durable and messages persistent for both. Contenders run alternately, ``--rounds`` times, and the
medians are reported with the ratio to aio-pika of the same run.

    python -m bench.pipeline --messages 20000 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable

import aio_pika
import msgspec

from framework import App, AppConfig, Command, Context, Service
from framework.transport.base import BindingSpec, QueueSpec, Topology

URL = os.environ.get("LEVERET_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
PREFETCH = 100


class Item(msgspec.Struct, frozen=True, kw_only=True):
    sku: str
    qty: int
    unit_price_cents: int


class BenchOrder(Command):
    __wire_name__ = "bench.place_order"

    order_id: str
    customer_id: str
    items: list[Item]
    address: str


class BenchFollowUp(Command):
    __wire_name__ = "bench.reserve_inventory"

    order_id: str
    items: list[Item]


def payload(i: int) -> BenchOrder:
    return BenchOrder(
        order_id=f"order-{i:08d}",
        customer_id="customer-000042",
        items=[
            Item(sku="apple-green-1kg", qty=2, unit_price_cents=250),
            Item(sku="pear-conference", qty=1, unit_price_cents=199),
        ],
        address="221B Baker Street, London NW1 6XE",
    )


async def fill(channel: aio_pika.abc.AbstractChannel, exchange: str, key: str, n: int) -> None:
    """Publish n order commands with pipelined confirms (not measured)."""
    ex = await channel.get_exchange(exchange) if exchange else channel.default_exchange
    enc = msgspec.json.Encoder()
    batch = []
    for i in range(n):
        body = enc.encode(payload(i))
        msg = aio_pika.Message(
            body,
            message_id=uuid.uuid4().hex,
            type=BenchOrder.__wire_name__,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            headers={"leveret-version": 1},
        )
        batch.append(ex.publish(msg, routing_key=key))
        if len(batch) == 1000:
            await asyncio.gather(*batch)
            batch.clear()
    await asyncio.gather(*batch)


async def run_aio_pika(n: int, tag: str) -> float:
    """The hand-written loop a team would write without a framework."""
    conn = await aio_pika.connect(URL)
    try:
        setup = await conn.channel()
        source = await setup.declare_queue(f"bench.{tag}.aiopika.in", durable=True)
        sink = await setup.declare_queue(f"bench.{tag}.aiopika.out", durable=True)
        await fill(setup, "", source.name, n)
        publish_ch = await conn.channel(publisher_confirms=True, on_return_raises=True)
        consume_ch = await conn.channel()
        await consume_ch.set_qos(prefetch_count=PREFETCH)
        queue = await consume_ch.get_queue(source.name)
        decoder = msgspec.json.Decoder(BenchOrder)
        encoder = msgspec.json.Encoder()
        done = asyncio.Event()
        count = 0

        async def handle(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal count
            order = decoder.decode(message.body)
            follow = BenchFollowUp(order_id=order.order_id, items=order.items)
            await publish_ch.default_exchange.publish(
                aio_pika.Message(
                    encoder.encode(follow),
                    message_id=uuid.uuid4().hex,
                    correlation_id=message.correlation_id or message.message_id,
                    type=BenchFollowUp.__wire_name__,
                    content_type="application/json",
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    headers={"leveret-version": 1},
                ),
                routing_key=sink.name,
                mandatory=True,
            )
            await message.ack()
            count += 1
            if count == n:
                done.set()

        started = time.perf_counter()
        await queue.consume(handle)
        await done.wait()
        elapsed = time.perf_counter() - started
        await source.delete(if_unused=False, if_empty=False)
        await sink.delete(if_unused=False, if_empty=False)
        return n / elapsed
    finally:
        await conn.close()


async def run_leveret(n: int, tag: str) -> float:
    """The same handler written with leveret."""
    bench = Service("bench")
    done = asyncio.Event()
    count = 0

    @bench.command
    async def place_order(cmd: BenchOrder, ctx: Context) -> None:
        nonlocal count
        await ctx.send(BenchFollowUp(order_id=cmd.order_id, items=cmd.items))
        count += 1
        if count == n:
            done.set()

    prefix = f"bench.{tag}.leveret"
    app = App([bench], url=URL, config=AppConfig(prefix=prefix, prefetch=PREFETCH))
    sink = f"{prefix}.sink"
    await app.start(consume=False)
    try:
        await app.transport.declare(
            Topology(
                queues=(QueueSpec(sink),),
                bindings=(BindingSpec(sink, app.naming.commands, BenchFollowUp.__wire_name__),),
            )
        )
        conn = await aio_pika.connect(URL)
        try:
            await fill(await conn.channel(), app.naming.commands, BenchOrder.__wire_name__, n)
        finally:
            await conn.close()
        pipeline = app.pipelines[0]
        started = time.perf_counter()
        consumer = await app.transport.consume(pipeline.queue, pipeline, prefetch=PREFETCH)
        app._consumers.append(consumer)
        await done.wait()
        elapsed = time.perf_counter() - started
        for queue in (sink, pipeline.queue, app.naming.dlq(pipeline.queue)):
            await app.transport.delete_queue(queue)
        return n / elapsed
    finally:
        await app.stop(grace=1)


CONTENDERS: dict[str, Callable[[int, str], Awaitable[float]]] = {
    "aio-pika (hand-written)": run_aio_pika,
    "leveret": run_leveret,
}


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default="bench/results/pipeline.json")
    args = parser.parse_args(argv)
    results: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    for r in range(args.rounds):
        for name, run in CONTENDERS.items():
            rate = await run(args.messages, uuid.uuid4().hex[:6])
            results[name].append(rate)
            print(f"round {r + 1}: {name:<26} {rate:8.0f} msgs/s", file=sys.stderr)
    base = statistics.median(results["aio-pika (hand-written)"])
    print(f"\npipeline, {args.messages} messages, prefetch {PREFETCH}, median of {args.rounds}")
    print(f"{'contender':<26} {'msgs/s':>8} {'vs aio-pika':>12}")
    summary = {}
    for name, rates in results.items():
        med = statistics.median(rates)
        summary[name] = {"median": med, "runs": rates, "ratio": med / base}
        print(f"{name:<26} {med:8.0f} {med / base:11.2f}x")
    report = {"messages": args.messages, "prefetch": PREFETCH, "results": summary}
    write_json(args.json, report)
    return 0


def write_json(path: str, report: object) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as fh:
        json.dump(report, fh, indent=2)


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
