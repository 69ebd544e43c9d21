"""Saga contender: the reference shop's order saga end to end, on RabbitMQ and a real store.

One worker process runs the whole shop (``handlers.app.build_app``: the order saga, inventory,
payment, shipping, notifications and the read side, every handler transactional) on the broker
and on a fresh store: a new SQLite file, or a new schema in ``LEVERET_POSTGRES_URL``.

Modes:

- ``throughput``: ``messages`` orders are placed (``app.send``, confirmed) before ``go``; on ``go``
  the consumers start, and the run ends at the last terminal saga: when the delivery that made
  the last saga terminal is done (the first delivery done after that saga's final transition).
  sagas/s = orders / (that moment - go). Timers armed by sagas that finished before them come
  back later to nothing; they are not waited for. Every delivery a handler queue hands to the
  app up to the end is counted, and every publish the app makes: the messages per saga are
  measured, not assumed (deliveries after the end, the last events' notifications and stale
  timers, are reported apart as ``late``).
- ``latency``: consumers run first; orders are placed at ``rate`` per second (open loop), and
  each saga's latency is placed (before ``app.send``) -> terminal (the saga record's
  ``updated_at`` when its final transition committed), both on this process's wall clock.

The shop's steps arm timeouts (delayed messages through TTL queues: 60 s deadlines, 10 s
compensation waits): the run is over before they come back. They are counted as published, and
the orchestrator deletes their queues with the rest of what the app owns (``owned_topology``).
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
from framework.queues import owned_topology
from framework.store import SagaRecord, Store
from framework.transport.base import Delivery, Topology
from handlers.app import build_app

POSTGRES_URL = os.environ.get("LEVERET_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
# What the saga publishes as it ends (on_completed, on_compensated): a cheap sign, before the
# store is asked, that every saga may be terminal.
TERMINAL_EVENTS = ("orders.order_completed", "orders.order_cancelled")


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
            stats.done.append((time.time(), self.queue))


class Stats:
    def __init__(self) -> None:
        self.in_flight = 0
        self.done: list[tuple[float, str]] = []  # (wall clock, queue) of each delivery handled
        self.published: Counter[str] = Counter()

    def handled_by(self, end: float) -> Counter[str]:
        """Deliveries handled up to ``end`` (wall clock), by queue."""
        return Counter(queue for at, queue in self.done if at <= end)

    def end_after(self, moment: float) -> float | None:
        """When the first delivery done at or after ``moment`` was done (None: none yet)."""
        return next((at for at, _ in self.done if at >= moment), None)


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
    # A fresh store: its schema is made before the run (the deploy step of a PostgreSQL store).
    config = AppConfig(prefix=f"bench.{tag}", queue_type=p.queue_type, upgrade_db=True)
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
        # All the app owns, the delay tiers its sagas' deadlines declare on first use included;
        # a tier made otherwise is reported as it is declared (report_declares).
        owned = owned_topology(app)
        emit(
            "ready",
            queues=[q.name for q in owned.queues],
            exchanges=[x.name for x in owned.exchanges],
        )

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
            started = time.time()
            cpu = time.process_time()
            await start_consumers()
            records, end = await wait_done(app, stats, tag, p.messages)
            cpu = time.process_time() - cpu
        else:
            await start_consumers()
            await wait_go()
            started = time.time()
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
            records, end = await wait_done(app, stats, tag, p.messages)
            cpu = time.process_time() - cpu
        elapsed = end - started
        by_queue = stats.handled_by(end)
        handled = sum(by_queue.values())
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
            by_queue=dict(by_queue),
            late=len(stats.done) - handled,
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


async def wait_done(app: App, stats: Stats, tag: str, n: int) -> tuple[list[SagaRecord], float]:
    """Wait until every saga of the run is terminal; the records, and the end of the run: when
    the delivery that made the last saga terminal was done (wall clock)."""
    assert app.store is not None
    deadline = time.monotonic() + max(120.0, n / 2)
    asked = 0.0
    records: list[SagaRecord] = []
    while True:
        await asyncio.sleep(0.05)
        if time.monotonic() > deadline:
            raise TimeoutError(f"sagas of {tag} not finished in time")
        if len(records) < n:
            ended = sum(stats.published[e] for e in TERMINAL_EVENTS)
            # The store is asked once every saga has said it ended, or every second regardless
            # (a saga that ends compensation_failed publishes neither event).
            if ended < n and time.monotonic() - asked < 1.0:
                continue
            asked = time.monotonic()
            records = await terminal_records(app.store, tag, n)
            if len(records) < n:
                continue
        end = stats.end_after(max(r.updated_at for r in records))
        if end is not None:
            return records, end


async def run_sqlite(p: Params) -> None:
    await run_saga(p, "sqlite")


async def run_postgres(p: Params) -> None:
    await run_saga(p, "postgres")


CONTENDERS: dict[str, Contender] = {"sqlite": run_sqlite, "postgres": run_postgres}
