"""Saga contender: the reference shop's order saga end to end, on RabbitMQ and a real store.

One worker process runs the whole shop (``handlers.app.build_app``: the order saga, inventory,
payment, shipping, notifications and the read side, every handler transactional) on the broker
and on a fresh store: a new SQLite file, or a new schema in ``LEVERET_POSTGRES_URL``.

Modes:

- ``throughput``: ``messages`` orders are placed (``app.send``, confirmed) before ``go``; on ``go``
  the consumers start, and the run ends when every saga is terminal and the shop is quiet (no
  delivery in flight, every queue of the run empty). sagas/s = orders / (last delivery handled -
  go). Every delivery a handler queue hands to the app is counted, and every publish the app
  makes: the messages per saga are measured, not assumed.
- ``latency``: consumers run first; orders are placed at ``rate`` per second (open loop), and
  each saga's latency is placed (before ``app.send``) -> terminal (the saga record's
  ``updated_at`` when its final transition committed), both on this process's wall clock.

The shop's steps arm 60-second timeouts (delayed messages through a TTL queue); a run is shorter
than that, so none of them comes back during the measurement: they are counted as published,
not as handled, and are deleted with the run's queues.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.worker import Contender, Params, emit, wait_go
from contracts.orders import LineItem, PlaceOrder
from framework import App, AppConfig
from framework.store import SagaRecord, Store
from framework.transport.base import Delivery, Topology
from handlers.app import build_app

POSTGRES_URL = os.environ.get("LEVERET_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
QUIET = 0.3  # seconds without a delivery (and empty queues) that end a throughput run


def orders(tag: str, n: int) -> list[PlaceOrder]:
    """``n`` orders with the shop's mix: 1 in 10 out of stock, declined, undeliverable each."""
    out = []
    for i in range(n):
        items = [
            LineItem(sku=("apple", "pear", "plum")[i % 3], qty=1 + i % 5, unit_price_cents=250)
        ]
        address = f"{1 + i % 999} Main St"
        kind = i % 10
        if kind == 3:
            items.append(LineItem(sku="discontinued", qty=1, unit_price_cents=999))
        elif kind == 6:
            items = [LineItem(sku="plum", qty=100, unit_price_cents=5_000)]  # over the limit
        elif kind == 9:
            address = "Atlantis"
        out.append(
            PlaceOrder(
                order_id=f"{tag}-{i:06d}",
                customer_id=f"cust-{i % 97}",
                items=items,
                address=address,
            )
        )
    return out


class Counted:
    """Wraps a handler pipeline: counts deliveries, tracks in-flight ones and the last done."""

    def __init__(self, pipeline: Any, stats: Stats) -> None:
        self._pipeline = pipeline
        self._stats = stats
        self.queue: str = pipeline.queue

    async def __call__(self, delivery: Delivery) -> None:
        stats = self._stats
        stats.in_flight += 1
        try:
            await self._pipeline(delivery)
        finally:
            stats.in_flight -= 1
            stats.handled[self.queue] += 1
            stats.last = time.perf_counter()


class Stats:
    def __init__(self) -> None:
        self.in_flight = 0
        self.handled: Counter[str] = Counter()
        self.published: Counter[str] = Counter()
        self.last = 0.0


def count_publishes(app: App, stats: Stats) -> None:
    """Count every publish of the app's transport (bus, outbox relay, retries) by routing key."""
    transport = app.transport
    publish = transport.publish

    async def counted(message: Any, *, exchange: str, routing_key: str, **kw: Any) -> None:
        await publish(message, exchange=exchange, routing_key=routing_key, **kw)
        stats.published[routing_key] += 1

    transport.publish = counted  # type: ignore[method-assign]


def report_declares(app: App) -> None:
    """Tell the orchestrator every queue and exchange the app declares, before declaring it.

    Delay tiers are declared on first use (a saga resend's backoff, 2 s, 4 s ..., comes only
    when a confirmation is late): without this they would be left on the broker. Each is
    reported before it exists, so the orchestrator can delete it even if this process dies.
    """
    transport = app.transport
    declare = transport.declare

    async def reported(topology: Topology) -> None:
        emit(
            "declared",
            queues=[q.name for q in topology.queues],
            exchanges=[x.name for x in topology.exchanges],
        )
        await declare(topology)

    transport.declare = reported  # type: ignore[method-assign]


def store_url(store: str, tag: str) -> tuple[str, str | None]:
    """The run's fresh store URL, and the PostgreSQL schema to drop afterwards."""
    if store == "sqlite":
        path = Path(tempfile.mkdtemp(prefix="leveret-bench-")) / "shop.sqlite3"
        return f"sqlite:///{path}", None
    schema = f"bench_{tag}"
    sep = "&" if "?" in POSTGRES_URL else "?"
    return f"{POSTGRES_URL}{sep}schema={schema}", schema


async def drop_schema(schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(POSTGRES_URL.split("?", 1)[0], timeout=10)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE', timeout=30)
    finally:
        await conn.close()


async def terminal_records(store: Store, tag: str, n: int) -> list[SagaRecord]:
    records = await store.list_sagas(saga="order", limit=n + 100)
    return [r for r in records if r.saga_id.startswith(f"order-{tag}-") and r.status.terminal]


async def run_saga(p: Params, store: str) -> None:
    tag = p.tag
    url, schema = store_url(store, tag)
    config = AppConfig(prefix=f"bench.{tag}", queue_type=p.queue_type)
    app = build_app(p.url, db_url=url, config=config)
    assert app.store is not None
    stats = Stats()
    count_publishes(app, stats)
    report_declares(app)
    placed: dict[str, float] = {}
    batch = orders(tag, p.messages)
    consumers = []
    try:
        await app.start(consume=False)
        queues = [q.name for q in app.topology.queues]
        timeouts = app.naming.delay(60_000)  # the shop's step timeouts, declared on first use
        emit(
            "ready",
            queues=[*queues, timeouts],
            exchanges=[*(x.name for x in app.topology.exchanges), timeouts],
        )
        queues = [q for q in queues if not q.endswith(".dlq")]

        async def start_consumers() -> None:
            for pipeline in app.pipelines:
                consumers.append(
                    await app.transport.consume(
                        pipeline.queue,
                        Counted(pipeline, stats),
                        prefetch=app._prefetch[pipeline.queue],
                    )
                )

        async def place(chunk: list[PlaceOrder]) -> None:
            for order in chunk:
                placed[order.order_id] = time.time()
            await asyncio.gather(*(app.send(o) for o in chunk))

        if p.mode == "throughput":
            for first in range(0, len(batch), 200):
                await place(batch[first : first + 200])
            stats.published.clear()  # the placing is not part of the run; counted below
            await wait_go()
            started = time.perf_counter()
            cpu = time.process_time()
            await start_consumers()
            records = await wait_done(app, stats, tag, p.messages, queues)
            elapsed = stats.last - started
            cpu = time.process_time() - cpu
        else:
            await start_consumers()
            await wait_go()
            started = time.perf_counter()
            cpu = time.process_time()
            loop = asyncio.get_running_loop()
            pending: set[asyncio.Future[None]] = set()
            t0 = loop.time()
            for i, order in enumerate(batch):
                delay = t0 + i / p.rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                fut = asyncio.ensure_future(place([order]))
                pending.add(fut)
                fut.add_done_callback(pending.discard)
            if pending:
                await asyncio.gather(*pending)
            records = await wait_done(app, stats, tag, p.messages, queues)
            elapsed = stats.last - started
            cpu = time.process_time() - cpu
        handled = sum(stats.handled.values())
        published = sum(stats.published.values())
        timeouts = sum(v for k, v in stats.published.items() if k.endswith(".timeout"))
        latencies = sorted(r.updated_at - placed[r.saga_id.removeprefix("order-")] for r in records)
        outcomes = Counter(str(r.status) for r in records)
        emit(
            "result",
            rate=p.messages / elapsed,
            elapsed=elapsed,
            cpu_us_per_saga=cpu / p.messages * 1e6,
            handled=handled,
            handled_per_saga=(handled + 0.0) / p.messages,
            published_per_saga=(published + (p.messages if p.mode == "throughput" else 0))
            / p.messages,
            timeouts_per_saga=timeouts / p.messages,
            p50_ms=_pct(latencies, 0.50) * 1000,
            p99_ms=_pct(latencies, 0.99) * 1000,
            outcomes=dict(outcomes),
            by_queue=dict(stats.handled),
        )
    finally:
        for consumer in consumers:
            await consumer.cancel()
        await app.stop(grace=2)
        if schema is not None:
            await drop_schema(schema)
        elif url.startswith("sqlite:///"):
            folder = Path(url.removeprefix("sqlite:///")).parent
            for f in folder.iterdir():
                f.unlink()
            folder.rmdir()


def _pct(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, int(p * len(values)))] if values else float("nan")


async def wait_done(
    app: App, stats: Stats, tag: str, n: int, queues: list[str]
) -> list[SagaRecord]:
    """Wait until every saga of the run is terminal and the shop is quiet; the records."""
    assert app.store is not None
    deadline = time.monotonic() + max(120.0, n / 2)
    while True:
        await asyncio.sleep(0.1)
        if time.monotonic() > deadline:
            raise TimeoutError(f"sagas of {tag} not finished in time")
        if stats.in_flight or time.perf_counter() - stats.last < QUIET:
            continue
        records = await terminal_records(app.store, tag, n)
        if len(records) < n:
            continue
        depths = [await app.transport.queue_depth(q) for q in queues]
        if stats.in_flight == 0 and not any(depths):
            return records


async def run_sqlite(p: Params) -> None:
    await run_saga(p, "sqlite")


async def run_postgres(p: Params) -> None:
    await run_saga(p, "postgres")


CONTENDERS: dict[str, Contender] = {"sqlite": run_sqlite, "postgres": run_postgres}
