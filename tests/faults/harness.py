"""The harness: the shop as worker processes, a workload, a fault log, and the checker.

One scenario is: start ``leveret run tests.faults.app:app`` on a RabbitMQ node of the suite's own
(faults never touch the shared broker), place orders through the shop (``examples.shop``'s
generator, each send retried with the same message id until confirmed), run the scenario's
injector while the sagas are in flight, let the system settle, then check:

* every order's saga is terminal within the bound and the shop's invariants hold for it
  (``examples.shop.check_invariants``) — the "% correct" column;
* no confirmed publish is lost: each message the client sent and got a confirm for, and each
  outbox row marked sent, is in the inbox of every consumer it was routed to, or in that
  consumer's DLQ with a reason; an outbox row still unsent after settling counts as lost too;
* no effect is applied twice: stock moved exactly by the ledger, at most one notification per
  order and template (charges, refunds and shipments are one row per order by their keys, and the
  invariants check their sums);
* duplicate deliveries (the same message id handled again by one handler) are counted from the
  workers' delivery logs — allowed, and reported separately;
* time to recover: after each fault ends, how long until another saga finished (the largest);
* longest stall: the longest interval of the run in which no saga finished (reported for the
  cluster scenarios, where a node's loss must not stop the shop for long).

The broker is a ``Broker``: a node of the suite's own, or a cluster of them
(``tests/faults/cluster.py``), reached through its first running node.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aio_pika

from contracts.orders import PlaceOrder
from examples.shop import check_invariants, make_orders, wait_ready
from framework import App, AppConfig
from framework.messages import MessageKind
from framework.store import SagaRecord, SagaStatus, Store, store_from_url
from framework.transport.amqp import AmqpConfig, AmqpTransport
from handlers.app import build_app
from tests.support.broker import list_queues
from tests.support.poll import until
from tests.test_worker import Leveret

__all__ = [
    "Broker",
    "Chaos",
    "Fault",
    "Flood",
    "Harness",
    "Injector",
    "Profile",
    "Row",
    "Run",
    "Shop",
]

# Each worker consumes every handler queue of the shop; the client is an App without services.
WORKERS = 2


@dataclass(frozen=True, slots=True)
class Profile:
    """How big a run is: orders per scenario, and the bound every saga must end within."""

    name: str
    orders: int
    settle: float
    rate: float
    soak_minutes: float = 0.0
    flood_scale: int = 1  # the flood scenarios send this many times their short-profile count


# Orders are placed at ``rate`` a second, so faults land while sagas are still arriving.
SHORT = Profile("short", orders=100, settle=120.0, rate=20.0)
LONG = Profile("long", orders=1500, settle=600.0, rate=15.0, soak_minutes=30.0, flood_scale=6)
PROFILES = {p.name: p for p in (SHORT, LONG)}


async def _zero(count: Awaitable[int]) -> bool:
    return await count == 0


class Broker(Protocol):
    """What the harness needs of the broker under test (a ``SecondNode``, or a cluster through
    its first running node): one node's AMQP URL and ``rabbitmqctl -n`` name, and ``ctl``."""

    @property
    def url(self) -> str: ...

    @property
    def name(self) -> str: ...

    def ctl(self, *args: str) -> str: ...


@dataclass(slots=True)
class Fault:
    """One injected fault: what, and when it started and ended (monotonic seconds)."""

    kind: str
    started: float
    ended: float


@dataclass(slots=True)
class Flood:
    """What a flood of hostile messages did: how many, how many reached the DLQ (each exactly
    once is the goal), worker restarts, handler queues seen without their consumers, and how
    long sagas placed during the flood took (p99) next to those placed outside it."""

    kind: str
    messages: int
    dead_lettered: int = 0
    restarts: int = 0
    consumers_lost: int = 0
    p99_during_s: float | None = None
    p99_outside_s: float | None = None


@dataclass(slots=True)
class Chaos:
    """What an operator sees of repeated faults: worker restarts, deadlocks the database counted
    (``pg_stat_database``, a database of the scenario's own), ERROR log lines per fault (the
    supervisor's and the workers'), the longest time from a worker's SIGKILL until its
    replacement consumed again, client sends that failed (each tried once), and commands the
    saga sent again after a deadline (a compensation or step whose reply was late)."""

    restarts: int = 0
    deadlocks: int | None = None
    error_lines: int = 0
    workers_back_s: float | None = None
    send_failures: int = 0
    resent: int = 0


@dataclass
class Row:
    """One scenario's line in the report table."""

    scenario: str
    sagas: int
    faults: int
    correct: int
    lost: int
    duplicate_effects: int
    duplicate_deliveries: int
    recover_s: float | None
    problems: list[str] = field(default_factory=list)
    notes: str = ""
    flood: Flood | None = None
    chaos: Chaos | None = None
    stall_s: float | None = None  # the longest interval of the run with no saga finished

    @property
    def ok(self) -> bool:
        return (
            self.correct == self.sagas
            and self.lost == 0
            and self.duplicate_effects == 0
            and not self.problems
        )

    @property
    def correct_pct(self) -> float:
        return 100.0 * self.correct / self.sagas if self.sagas else 0.0


HEADER = (
    "| scenario | sagas | faults | correct terminal | lost | duplicate effects | "
    "duplicate deliveries | time to recover |\n"
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
)


FLOOD_HEADER = (
    "| flood | messages | in the DLQ | worker restarts | consumers lost | "
    "saga p99 during the flood | saga p99 outside it |\n"
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
)


CHAOS_HEADER = (
    "| repeated faults | faults | worker restarts | deadlocks | ERROR lines per fault | "
    "workers back (slowest) | client sends failed | sent again by the saga |\n"
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def table(rows: list[Row], *, stall: bool = False) -> str:
    """The report table in Markdown (and the floods' own table, when there are any);
    ``stall`` adds the column of the longest stall in saga progress."""
    lines = [HEADER]
    if stall:
        head, rule = HEADER.split("\n")
        lines = [f"{head} longest stall |\n{rule} ---: |"]
    for r in rows:
        lines.append(
            f"| {r.scenario} | {r.sagas} | {r.faults} | {r.correct_pct:.1f}% | {r.lost} | "
            f"{r.duplicate_effects} | {r.duplicate_deliveries} | {_seconds(r.recover_s)} |"
            + (f" {_seconds(r.stall_s)} |" if stall else "")
        )
    floods = [(r.scenario, r.flood) for r in rows if r.flood is not None]
    if floods:
        lines += ["", FLOOD_HEADER]
        for name, f in floods:
            lines.append(
                f"| {name} | {f.messages:,} | {f.dead_lettered:,} | {f.restarts} | "
                f"{f.consumers_lost} | {_seconds(f.p99_during_s)} | {_seconds(f.p99_outside_s)} |"
            )
    chaos = [(r.scenario, r.faults, r.chaos) for r in rows if r.chaos is not None]
    if chaos:
        lines += ["", CHAOS_HEADER]
        for name, faults, c in chaos:
            deadlocks = "-" if c.deadlocks is None else str(c.deadlocks)
            lines.append(
                f"| {name} | {faults} | {c.restarts} | {deadlocks} | "
                f"{c.error_lines / max(faults, 1):.1f} | {_seconds(c.workers_back_s)} | "
                f"{c.send_failures} | {c.resent} |"
            )
    return "\n".join(lines)


class Shop:
    """The system under test: ``leveret run tests.faults.app:app`` and its store and client.

    Args:
        directory: where logs, delivery logs and the SQLite file go.
        node: the suite's own broker node (the client connects to it directly by default).
        worker_url: the broker URL the workers use (the node's, a fault proxy's, or every node
            of a cluster, comma-separated).
        client_url: the broker URL of the harness's client (the node's by default); with
            several nodes they are tried in the order listed.
        db_url: the workers' store (SQLite file by default; a proxied PostgreSQL for outages).
        check_db_url: the same database reached directly, for the harness.
        env: more ``LEVERET_FAULTS_*`` settings for the workers; with
            ``LEVERET_SHOP_QUEUE_TYPE=quorum`` the checker counts messages by passive declares.
    """

    def __init__(
        self,
        directory: Path,
        node: Broker,
        *,
        worker_url: str | None = None,
        client_url: str | None = None,
        db_url: str | None = None,
        check_db_url: str | None = None,
        env: Mapping[str, str] | None = None,
        workers: int = WORKERS,
    ) -> None:
        self.directory = directory
        self.node = node
        self.prefix = "f" + secrets.token_hex(4)
        self.workers = workers
        db_url = db_url or f"sqlite:///{directory / 'shop.db'}"
        self.env = {
            "LEVERET_SHOP_URL": worker_url or node.url,
            "LEVERET_SHOP_DB_URL": db_url,
            "LEVERET_SHOP_PREFIX": self.prefix,
            "LEVERET_FAULTS_DIR": str(directory / "faults"),
            "LEVERET_LOG_FORMAT": "json",
            "LEVERET_LOG_LEVEL": "info",
            "LEVERET_LOOP": "asyncio",
            **(env or {}),
        }
        self.quorum = self.env.get("LEVERET_SHOP_QUEUE_TYPE") == "quorum"
        check_db_url = check_db_url or db_url
        if check_db_url.startswith("sqlite"):
            # The checker's reads take the write lock (BEGIN IMMEDIATE) against two busy workers.
            check_db_url += "?busy_timeout=60"
        self.store: Store = store_from_url(check_db_url)
        client_url = client_url or node.url
        # The client declares the base topology (delay queues) too: of the workers' type.
        config = AppConfig(prefix=self.prefix, queue_type="quorum" if self.quorum else "classic")
        self.client = App([], url=client_url, config=config)
        self.client.use_transport(
            AmqpTransport(
                client_url,
                config=AmqpConfig(
                    connect_timeout=5.0,
                    publish_timeout=5.0,
                    declare_timeout=5.0,
                    heartbeat=2,
                    reconnect_interval=0.5,
                    shuffle_nodes=False,
                ),
            )
        )
        self.leveret: Leveret | None = None
        self._started: list[Leveret] = []
        self._runs = 0
        # The shop's routing, from a shop app that is built but never started.
        self.model = build_app(db_url="memory://", prefix=self.prefix)

    def start(self, *args: str, env: Mapping[str, str] | None = None) -> Leveret:
        """Start a supervisor and its workers (``args`` go to ``leveret run``, ``env`` adds to
        the shop's settings); it becomes ``self.leveret``."""
        self._runs += 1
        directory = self.directory / f"leveret{self._runs}"
        directory.mkdir(parents=True, exist_ok=True)
        self.leveret = Leveret(
            directory,
            # The schema is a deploy step: the supervisor upgrades it once, restarted workers
            # only check it (on PostgreSQL; SQLite upgrades itself anyway).
            ["tests.faults.app:app", "--workers", str(self.workers), "--upgrade-db", *args],
            {**self.env, **(env or {})},
        )
        self._started.append(self.leveret)
        return self.leveret

    @property
    def started(self) -> tuple[Leveret, ...]:
        """Every supervisor started so far, the first first."""
        return tuple(self._started)

    async def ready(self, timeout: float = 90.0) -> None:
        """Wait until the workers have created the schema and answer queries."""
        await wait_ready(self.store, self.client, timeout)

    def worker_pids(self) -> dict[int, int]:
        """``{index: pid}`` of the latest process of each worker slot."""
        assert self.leveret is not None
        pids: dict[int, int] = {}
        for event in self.leveret.events("worker_spawned"):
            pids[event["index"]] = event["pid"]
        return pids

    async def stop(self, timeout: float = 60.0, leveret: Leveret | None = None) -> int | None:
        """SIGTERM a supervisor (the latest by default) and wait for it; its exit code (None
        if it did not exit within ``timeout``)."""
        leveret = leveret or self.leveret
        if leveret is None or leveret.process.poll() is not None:
            return None
        leveret.send(signal.SIGTERM)
        try:
            await until(
                lambda: leveret.process.poll() is not None,
                timeout=timeout,
                what="leveret run to drain and exit",
            )
        except TimeoutError:
            return None
        return leveret.process.returncode

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.client.stop(grace=0)
        for leveret in self._started:  # also closes their log files
            leveret.kill_everything()
        await self.store.close()

    # -- observations -------------------------------------------------------------------------

    def queues(self) -> dict[str, tuple[int, int, int]]:
        """``{queue: (ready, unacked, consumers)}`` of this shop's queues on the node."""
        return {
            name: counts
            for name, counts in list_queues(node=self.node.name).items()
            if name.startswith(self.prefix + ".")
        }

    def handler_queues(self) -> list[str]:
        return [p.queue for p in self.model.pipelines]

    def consumers_missing(self, expected: int) -> list[str]:
        """Handler queues with fewer than ``expected`` consumers right now."""
        queues = self.queues()
        return [
            f"{q}: {queues.get(q, (0, 0, 0))[2]} consumers"
            for q in self.handler_queues()
            if queues.get(q, (0, 0, 0))[2] < expected
        ]

    async def passive_counts(self, names: Iterable[str]) -> dict[str, tuple[int, int]]:
        """``{queue: (ready, consumers)}`` by passive declares on the node: exact at once,
        where ``list_queues`` lags seconds behind on quorum queues (RABBITMQ.md). A queue that
        does not exist is left out."""
        found: dict[str, tuple[int, int]] = {}
        connection = await asyncio.wait_for(aio_pika.connect(self.node.url), 10)
        try:
            channel = await connection.channel()
            for name in names:
                try:
                    queue = await asyncio.wait_for(channel.declare_queue(name, passive=True), 10)
                except aio_pika.exceptions.ChannelClosed:  # no such queue: the channel is gone
                    channel = await connection.channel()
                    continue
                ok = queue.declaration_result
                found[name] = (ok.message_count or 0, ok.consumer_count or 0)
        finally:
            await asyncio.wait_for(connection.close(), 10)
        return found

    async def consumers_short(self, expected: int) -> list[str]:
        """Handler queues with fewer than ``expected`` consumers, by passive declares."""
        counts = await self.passive_counts(self.handler_queues())
        return [
            f"{q}: {counts.get(q, (0, 0))[1]} consumers"
            for q in self.handler_queues()
            if counts.get(q, (0, 0))[1] < expected
        ]

    async def dead_letters(self) -> list[tuple[str, str, str]]:
        """``(queue, message id, reason)`` of every message in this shop's DLQs (left there)."""
        found: list[tuple[str, str, str]] = []
        connection = await asyncio.wait_for(aio_pika.connect(self.node.url), 10)
        try:
            channel = await connection.channel()
            for name in (q for q in self.queues() if q.endswith(".dlq")):
                queue = await channel.get_queue(name, ensure=False)
                while True:
                    message = await queue.get(no_ack=False, fail=False, timeout=5)
                    if message is None:
                        break
                    reason = str(message.headers.get("leveret-dead-reason", ""))
                    found.append((name.removesuffix(".dlq"), message.message_id or "", reason))
            await channel.close()  # unacked: the messages go back to their DLQs
        finally:
            await connection.close()
        return found

    def deliveries(self) -> Counter[tuple[str, str]]:
        """How often each (handler, message id) was delivered, from the workers' logs."""
        seen: Counter[tuple[str, str]] = Counter()
        for path in (self.directory / "faults").glob("deliveries-*.log"):
            for line in path.read_text().splitlines():
                handler, message_id, *_ = line.split("\t")
                seen[(handler, message_id)] += 1
        return seen

    def crashes(self) -> list[tuple[str, float]]:
        """``(crash point, wall time)`` of every crash point that fired."""
        path = self.directory / "faults" / "crashes.log"
        if not path.exists():
            return []
        found = []
        for line in path.read_text().splitlines():
            point, _pid, at = line.split("\t")
            found.append((point, float(at)))
        return found

    def routing(self) -> tuple[dict[tuple[str, str], list[str]], dict[str, str]]:
        """Where messages go: ``{(exchange, routing key): [inbox consumer, ...]}`` and
        ``{inbox consumer: queue}``, read from the shop's own registry."""
        naming = self.model.naming
        routes: dict[tuple[str, str], list[str]] = {}
        queue_of: dict[str, str] = {}
        for p in self.model.pipelines:
            spec = p.spec
            if spec.saga is not None:
                consumer = f"{spec.service}.saga.{spec.saga.name}"
            elif spec.transactional:
                consumer = p.queue
            else:
                continue  # queries: answered, not recorded
            queue_of[consumer] = p.queue
            wire = spec.message_type.__wire_name__
            exchange = naming.commands if spec.kind is MessageKind.COMMAND else naming.events
            routes.setdefault((exchange, wire), []).append(consumer)
            routes.setdefault(("<queue>", p.queue), []).append(consumer)
        return routes, queue_of


@dataclass
class Run:
    """One workload in flight: the orders, what was confirmed, faults, progress samples."""

    shop: Shop
    orders: list[PlaceOrder]
    run_id: str
    confirmed: set[str] = field(default_factory=set)
    faults: list[Fault] = field(default_factory=list)
    samples: list[tuple[float, int]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    extra_faults: int = 0
    send_failures: int = 0

    @property
    def done(self) -> int:
        return self.samples[-1][1] if self.samples else 0

    async def reached(self, share: float, timeout: float = 120.0) -> None:
        """Wait until ``share`` of the orders have finished (faults fire mid-run)."""
        goal = int(share * len(self.orders))
        await until(lambda: self.done >= goal, timeout=timeout, what=f"{goal} finished sagas")

    @contextlib.contextmanager
    def fault(self, kind: str) -> Iterator[None]:
        """Record a fault lasting as long as the block."""
        started = time.monotonic()
        try:
            yield
        finally:
            self.faults.append(Fault(kind, started, time.monotonic()))

    def instant(self, kind: str) -> None:
        now = time.monotonic()
        self.faults.append(Fault(kind, now, now))

    async def records(self) -> list[SagaRecord]:
        found = await self.shop.store.list_sagas(saga="order", limit=10 * len(self.orders) + 100)
        return [r for r in found if r.saga_id.startswith(f"order-{self.run_id}")]

    async def sample(self) -> None:
        """Record (time, finished sagas) four times a second, until cancelled."""
        while True:
            with contextlib.suppress(Exception):  # the store may be the thing under fault
                done = sum(r.status.terminal for r in await self.records())
                self.samples.append((time.monotonic(), done))
            await asyncio.sleep(0.25)

    def longest_stall(self) -> float | None:
        """The longest interval from the start of the run until the last saga finished in
        which no saga finished (to the end of the samples if some never did)."""
        if not self.samples:
            return None
        n = len(self.orders)
        last_t, last_done = self.samples[0]
        worst = 0.0
        for t, done in self.samples:
            if done > last_done:
                worst = max(worst, t - last_t)
                last_t, last_done = t, done
            if done >= n:
                return worst
        return max(worst, self.samples[-1][0] - last_t)

    def recovery(self) -> float | None:
        """Longest time from a fault's end until the next saga finished after it."""
        worst: float | None = None
        n = len(self.orders)
        for fault in self.faults:
            before = [c for t, c in self.samples if t <= fault.ended]
            base = before[-1] if before else 0
            if base >= n:
                took = 0.0
            else:
                after = [t for t, c in self.samples if t > fault.ended and c > base]
                if not after:
                    return None
                took = after[0] - fault.ended
            worst = took if worst is None else max(worst, took)
        return worst


Injector = Callable[[Run], Awaitable[None]]


class Harness:
    """Runs scenarios against one broker node, each in a directory of its own."""

    def __init__(self, node: Broker, directory: Path, profile: Profile) -> None:
        self.node = node
        self.directory = directory
        self.profile = profile
        self.rows: list[Row] = []
        self._count = 0

    def directory_for(self, name: str) -> Path:
        self._count += 1
        path = self.directory / f"{self._count:02d}-{name}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    @contextlib.asynccontextmanager
    async def shop(self, name: str, **kwargs: Any) -> AsyncIterator[Shop]:
        shop = Shop(self.directory_for(name), self.node, **kwargs)
        try:
            yield shop
        finally:
            await shop.close()

    async def workload(
        self,
        name: str,
        shop: Shop,
        inject: Injector,
        *,
        orders: int | None = None,
        seed: int = 7,
        concurrency: int = 20,
        rate: float | None = None,
        allowed_dead_letters: Callable[[tuple[str, str, str]], bool] | None = None,
        must_fail: Callable[[PlaceOrder], bool] | None = None,
        send_once: float | None = None,
    ) -> Row:
        """Place the orders while ``inject`` runs, settle, check: the scenario's row.

        ``must_fail`` picks orders whose compensation cannot succeed: their sagas must end
        ``compensation_failed`` (never "compensated"), and the money and stock invariants are
        not asked of them. ``send_once`` sends each order once, with that deadline, as a client
        that trusts ``app.send`` would: a send that fails is counted (``run.send_failures``)
        and is a problem of the run.
        """
        n = orders or self.profile.orders
        run_id = "o" + secrets.token_hex(3)
        run = Run(shop, make_orders(run_id, n, seed), run_id)
        started = time.monotonic()
        sampler = asyncio.create_task(run.sample())
        placing = asyncio.create_task(
            self._place(run, concurrency, rate or self.profile.rate, send_once)
        )
        try:
            await inject(run)
            await placing
            await until(
                lambda: run.done >= n,
                timeout=self.profile.settle,
                what=f"all {n} sagas to finish",
            )
        except TimeoutError as exc:
            run.problems.append(str(exc))
        finally:
            run.notes.append(f"settled {time.monotonic() - started:.0f} s after the first order")
            placing.cancel()
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await placing
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        checking = time.monotonic()
        row = await self.check(name, run, allowed_dead_letters, must_fail)
        row.notes = "; ".join([*run.notes, f"checked in {time.monotonic() - checking:.0f} s"])
        return row

    async def _place(
        self, run: Run, concurrency: int, rate: float, send_once: float | None = None
    ) -> None:
        """Send the orders at ``rate`` a second; an unconfirmed send is retried with the same
        message id (or, with ``send_once``, sent once with that deadline)."""
        gate = asyncio.Semaphore(concurrency)
        started = time.monotonic()

        async def one(i: int, order: PlaceOrder) -> None:
            message_id = f"place-{order.order_id}"
            await asyncio.sleep(max(0.0, started + i / rate - time.monotonic()))
            async with gate:
                if send_once is not None:
                    try:
                        await run.shop.client.send(order, message_id=message_id, timeout=send_once)
                    except Exception as exc:
                        run.send_failures += 1
                        run.problems.append(f"send of {message_id} failed: {exc!r}")
                    else:
                        run.confirmed.add(message_id)
                    return
                deadline = time.monotonic() + self.profile.settle
                while True:
                    try:
                        await asyncio.wait_for(
                            run.shop.client.send(order, message_id=message_id), 10
                        )
                        run.confirmed.add(message_id)
                        return
                    except Exception:
                        if time.monotonic() > deadline:
                            raise
                        await asyncio.sleep(0.5)

        await asyncio.gather(*(one(i, o) for i, o in enumerate(run.orders)))

    async def check(
        self,
        name: str,
        run: Run,
        allowed_dead_letters: Callable[[tuple[str, str, str]], bool] | None = None,
        must_fail: Callable[[PlaceOrder], bool] | None = None,
    ) -> Row:
        """The checker: terminal states and invariants, lost messages, duplicate effects."""
        shop = run.shop
        records = await run.records()
        problems = list(run.problems)
        failing = {o.order_id for o in run.orders if must_fail is not None and must_fail(o)}
        bad: set[str] = set()
        for record in records:
            order_id = record.saga_id.removeprefix("order-")
            if order_id in failing and record.status is not SagaStatus.COMPENSATION_FAILED:
                bad.add(order_id)
                problems.append(f"{order_id}: {record.status}, expected compensation_failed")
        invariant_problems = await check_invariants(
            shop.store,
            [o for o in run.orders if o.order_id not in failing],
            [r for r in records if r.saga_id.removeprefix("order-") not in failing],
            settle=5.0,
        )
        bad |= {p.split(":", 1)[0] for p in invariant_problems}
        problems += invariant_problems[:20]
        dead = await shop.dead_letters()
        allowed = allowed_dead_letters or (lambda _d: False)
        problems += [f"dead-lettered {q} {m}: {r}" for q, m, r in dead if not allowed((q, m, r))]

        left: dict[str, tuple[int, int, int]] = {}

        async def drained() -> bool:
            left.clear()
            listed = shop.queues()
            left.update(
                (q, counts)
                for q, counts in listed.items()
                if not q.endswith(".dlq") and ".delay." not in q and (counts[0] or counts[1])
            )
            if shop.quorum and not left:  # list_queues may lag: ask the queues themselves
                names = [q for q in listed if not q.endswith(".dlq") and ".delay." not in q]
                with contextlib.suppress(Exception):
                    ready = await shop.passive_counts(names)
                    left.update((q, (r, 0, c)) for q, (r, c) in ready.items() if r)
            return not left

        async def unsent() -> int:
            async with shop.store.transaction() as tx:
                row = await tx.fetchone("SELECT COUNT(*) FROM leveret_outbox WHERE sent_at IS NULL")
            return int(row[0]) if row else 0

        # A publish whose confirm was lost stays pending until the sweeper sends it again.
        with contextlib.suppress(TimeoutError):
            await until(lambda: _zero(unsent()), timeout=30, what="the outbox to drain")
        # Redeliveries of finished work (and stale timeouts) may still be in flight; the
        # queues must drain (one listing with nothing in them).
        with contextlib.suppress(TimeoutError):
            await until(drained, timeout=30, what="the queues to drain")
        if left:
            problems.append(f"messages left in queues (ready, unacked, consumers): {left}")
        lost, lost_problems = await self._lost(run, dead)
        problems += lost_problems[:20]
        duplicates, duplicate_problems = await self._duplicate_effects(run)
        problems += duplicate_problems[:20]
        deliveries = shop.deliveries()
        return Row(
            scenario=name,
            sagas=len(run.orders),
            faults=len(run.faults) + run.extra_faults,
            correct=len(run.orders) - len(bad),
            lost=lost,
            duplicate_effects=duplicates,
            duplicate_deliveries=sum(c - 1 for c in deliveries.values()),
            recover_s=run.recovery(),
            problems=problems,
            notes="; ".join(run.notes),
            stall_s=run.longest_stall(),
        )

    async def _lost(self, run: Run, dead: list[tuple[str, str, str]]) -> tuple[int, list[str]]:
        shop = run.shop
        routes, queue_of = shop.routing()
        commands = shop.model.naming.commands
        async with shop.store.transaction() as tx:
            inbox = {
                (c, m)
                for c, m in await tx.fetchall("SELECT consumer, message_id FROM leveret_inbox")
            }
            outbox = await tx.fetchall(
                "SELECT message_id, exchange, routing_key, sent_at, created_at FROM leveret_outbox"
            )
        dead_ids = {(q, m) for q, m, _ in dead}
        expected: list[tuple[str, list[str]]] = [
            (m, routes[(commands, PlaceOrder.__wire_name__)]) for m in run.confirmed
        ]
        problems: list[str] = []
        lost = 0
        now = time.time()
        for message_id, exchange, routing_key, sent_at, created_at in outbox:
            if sent_at is None:
                lost += 1
                problems.append(f"outbox row {message_id} never published")
                continue
            if exchange.startswith(shop.model.naming.delay(1).rsplit(".", 1)[0] + "."):
                # Due a delay after the publish that was confirmed (marked sent), not after
                # the commit: under a fault the first publish may come much later.
                due = max(sent_at, created_at) + int(exchange.rsplit(".", 1)[1]) / 1000
                if due > now - 5:
                    continue  # a saga timeout still waiting in its delay queue
                consumers = routes.get(("<queue>", routing_key), [])
            else:
                consumers = routes.get((exchange, routing_key), [])
            expected.append((message_id, consumers))
        for message_id, consumers in expected:
            for consumer in consumers:
                if (consumer, message_id) in inbox or (queue_of[consumer], message_id) in dead_ids:
                    continue
                lost += 1
                problems.append(f"{message_id} confirmed but never consumed by {consumer}")
        return lost, problems

    async def _duplicate_effects(self, run: Run) -> tuple[int, list[str]]:
        """Effects applied twice that the invariants would not name as such.

        Stock is the inventory's event streams, which ``check_invariants`` replays (versions in
        sequence, never below zero, reserved - released per order); charges, refunds and
        shipments are one row per order by their keys.
        """
        async with run.shop.store.transaction() as tx:
            notes = await tx.fetchall(
                "SELECT order_id, template, COUNT(*) FROM notifications_sent "
                "GROUP BY order_id, template HAVING COUNT(*) > 1"
            )
            # A message that changed a saga twice (a timeout firing twice, a reply applied
            # twice) shows as two transitions with one message id.
            twice = await tx.fetchall(
                "SELECT saga_id, message_id, COUNT(*) FROM leveret_history WHERE note IS NULL "
                "GROUP BY saga_id, message_id HAVING COUNT(*) > 1"
            )
        problems = [f"{o}: {c} notifications {t!r}" for o, t, c in notes]
        problems += [f"{saga}: {m} applied {c} times" for saga, m, c in twice]
        return len(problems), problems
