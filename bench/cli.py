"""``python -m bench``: every benchmark section, one after another, on the local broker.

Contenders of a section run in alternation (A B C A B C ...), each measurement in a fresh
worker process, and the table reports medians with min-max over the rounds and, for rates, the
ratio of medians to the section's baseline of the same run. The same figures go to a JSON file
(and, with ``--markdown``, to a Markdown table for docs/performance.md). The ``cluster``
section (``bench.cluster``) boots a three-node RabbitMQ cluster of its own and runs only when
named with ``--only``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import IO, Any

from bench.chart import write as write_chart
from bench.harness import ROOT, Broker, SectionFailed, WorkerFailed, WorkerProcess
from bench.worker import URL
from bench.workload import FOLLOW_UP_TYPE, ORDER_TYPE, Names
from framework import RetryPolicy

SECTIONS = ("pipeline", "latency", "publish", "query", "saga", "breaker", "memory", "cluster")
# Run only when named with --only: the cluster section boots three RabbitMQ nodes of its own.
OPT_IN = ("cluster",)
DEFAULT_SECTIONS = tuple(s for s in SECTIONS if s not in OPT_IN)
PIPELINE = ("leveret", "aio-pika", "aiormq", "faststream", "faststream-msgspec")
PUBLISH = ("leveret", "aio-pika", "aiormq")
QUERY = ("leveret", "faststream", "faststream-request")
# How the table names a contender where its key would mislead.
QUERY_LABELS = {"faststream-request": "faststream broker.request"}
SAGA = ("sqlite", "postgres")
MB = 1024 * 1024


@dataclass(frozen=True)
class Settings:
    rounds: int = 3
    messages: int = 10_000  # pipeline throughput; the reference figures used 20,000
    latency_messages: int = 2_500  # 5 s at 500/s
    rate: float = 500.0
    publish_sequential: int = 3_000
    publish_concurrent: int = 10_000
    window: int = 1_000
    query_messages: int = 3_000
    callers: int = 50
    query_single_messages: int = 1_000  # the 1-caller row: round trips one after another
    memory_messages: int = 150_000  # --memory-messages 1000000 for the full million (~15 min)
    memory_warmup: int = 20_000
    saga_orders: int = 400  # per throughput run: about 5-15 s of saga work
    saga_latency_orders: int = 150  # 7.5 s at 20/s
    saga_rate: float = 20.0
    breaker_iterations: int = 100_000
    breaker_repeats: int = 15
    loop: str = "asyncio"
    contenders: tuple[str, ...] | None = None  # None: all of each section


QUICK = Settings(
    rounds=1,
    messages=5_000,
    latency_messages=1_000,
    publish_sequential=2_000,
    publish_concurrent=5_000,
    query_messages=2_000,
    query_single_messages=500,
    memory_messages=40_000,
    memory_warmup=10_000,
    saga_orders=150,
    saga_latency_orders=60,
    breaker_iterations=20_000,
    breaker_repeats=5,
)

# Every measurement a few messages long: what the cleanup test runs (tests/test_bench_cleanup.py).
SMOKE = Settings(
    rounds=1,
    messages=200,
    latency_messages=100,
    publish_sequential=100,
    publish_concurrent=200,
    window=100,
    query_messages=200,
    query_single_messages=50,
    memory_messages=2_000,
    memory_warmup=500,
    saga_orders=20,
    saga_latency_orders=10,
    breaker_iterations=1_000,
    breaker_repeats=1,
)


@dataclass
class Row:
    """One line of the table: a contender's values of one metric over the rounds."""

    section: str
    label: str
    metric: str
    unit: str
    values: list[float] = field(default_factory=list)
    baseline: str | None = None  # label of the row this one is compared with
    higher_is_better: bool = True

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")


class Results:
    def __init__(self) -> None:
        self.rows: dict[tuple[str, str, str], Row] = {}
        self.notes: list[str] = []

    def add(
        self, section: str, label: str, metric: str, unit: str, value: float, **kw: Any
    ) -> None:
        key = (section, label, metric)
        if key not in self.rows:
            self.rows[key] = Row(section, label, metric, unit, **kw)
        self.rows[key].values.append(value)

    def get(self, section: str, label: str, metric: str) -> Row | None:
        return self.rows.get((section, label, metric))

    def ratio(self, row: Row) -> float | None:
        if row.baseline is None:
            return None
        base = self.get(row.section, row.baseline, row.metric)
        if base is None or not base.values or not row.values:
            return None
        return row.median / base.median


def leveret_leftovers(prefix: str) -> tuple[list[str], list[str]]:
    """The queues and exchanges a leveret app under ``prefix`` declares besides its handler
    queues: the five exchanges, and a queue and an exchange per default retry delay."""
    delays = [f"{prefix}.delay.{ms}" for ms in RetryPolicy().delay_ms()]
    exchanges = [f"{prefix}.{x}" for x in ("commands", "events", "queries", "dlx", "retry")]
    return delays, [*exchanges, *delays]


class Bench:
    """Runs the sections; holds the orchestrator's broker connection and the log."""

    def __init__(self, settings: Settings, broker: Broker, log: IO[str], verbose: bool) -> None:
        self.s = settings
        self.broker = broker
        self.log = log
        self.verbose = verbose
        self.results = Results()
        self.memory_series: list[tuple[int, int]] = []
        self.cluster_info: dict[str, Any] | None = None  # set by the cluster section
        self.failed_sections: list[str] = []

    def pick(self, contenders: tuple[str, ...]) -> tuple[str, ...]:
        """The section's contenders, or those of them named with ``--contenders``."""
        if self.s.contenders is None:
            return contenders
        return tuple(c for c in contenders if c in self.s.contenders)

    def say(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)
        self.log.write(text + "\n")
        self.log.flush()

    async def _spawn(
        self,
        section: str,
        contender: str,
        params: dict[str, Any],
        broker: Broker | None = None,
    ) -> WorkerProcess:
        """A worker for one measurement on ``broker`` (default: the shared one)."""
        broker = broker or self.broker
        params = {**params, **broker.worker_params()}
        shown = {**params, "url": broker.safe_url}
        self.log.write(f"--- {section}/{contender} {shown}\n")
        self.log.flush()
        return await WorkerProcess.spawn(section, contender, params, loop=self.s.loop, log=self.log)

    async def _cleanup(self, names: Names, queues: list[str], broker: Broker | None = None) -> None:
        delays, exchanges = leveret_leftovers(names.prefix)
        await (broker or self.broker).delete(
            queues=[names.input, names.sink, *queues, *delays], exchanges=exchanges
        )

    # -- pipeline ------------------------------------------------------------------------------

    async def pipeline_once(
        self, contender: str, mode: str, n: int, *, broker: Broker | None = None
    ) -> dict[str, Any]:
        broker = broker or self.broker
        names = Names(uuid.uuid4().hex[:8])
        queues = {names.sink: FOLLOW_UP_TYPE}
        if contender != "leveret":  # leveret declares its own handler queue
            queues[names.input] = ORDER_TYPE
        await broker.declare(names.exchange, queues)
        worker = await self._spawn(
            "pipeline", contender, {"tag": names.tag, "messages": n, "mode": mode}, broker
        )
        owned: list[str] = []
        try:
            ready = await worker.expect("ready", 60)
            owned = ready["queues"]
            if mode == "throughput":
                await broker.fill(names.exchange, n)
                await worker.go()
            else:
                await worker.go()
                offered = await broker.offer(names.exchange, n, self.s.rate)
            result = await worker.expect("result", max(120.0, n / 100))
            if mode == "latency":
                result["offered"] = offered
            await worker.finish()
            return result
        finally:
            worker.kill()
            await self._cleanup(names, owned, broker)

    async def section_pipeline(self) -> None:
        n = self.s.messages
        self.say(f"pipeline: {n} messages, prefetch 100, {self.s.rounds} rounds, in alternation")
        for r in range(self.s.rounds):
            for contender in self.pick(PIPELINE):
                result = await self.pipeline_once(contender, "throughput", n)
                self.results.add(
                    "pipeline",
                    contender,
                    "throughput",
                    "msgs/s",
                    result["rate"],
                    baseline="aio-pika",
                )
                # The worker's own CPU per message: less sensitive to a busy machine than rates.
                self.results.add(
                    "pipeline",
                    contender,
                    "client CPU",
                    "us/msg",
                    result["cpu_us_per_msg"],
                    baseline="aio-pika",
                    higher_is_better=False,
                )
                self.say(
                    f"  round {r + 1}  {contender:<20} {result['rate']:8.0f} msgs/s  "
                    f"{result['cpu_us_per_msg']:6.0f} us CPU/msg"
                )

    async def section_latency(self) -> None:
        n, rate = self.s.latency_messages, self.s.rate
        self.say(f"pipeline latency: {n} messages offered at {rate:g}/s, {self.s.rounds} rounds")
        for r in range(self.s.rounds):
            for contender in self.pick(PIPELINE):
                res = await self.pipeline_once(contender, "latency", n)
                for metric in ("p50", "p99"):
                    self.results.add(
                        "latency",
                        contender,
                        f"latency {metric}",
                        "ms",
                        res[f"{metric}_ms"],
                        higher_is_better=False,
                    )
                self.say(
                    f"  round {r + 1}  {contender:<20} p50 {res['p50_ms']:7.2f} ms  "
                    f"p99 {res['p99_ms']:7.2f} ms  (offered {res['offered']:.0f}/s)"
                )

    # -- publish -------------------------------------------------------------------------------

    async def section_publish(self) -> None:
        modes = {"sequential": self.s.publish_sequential, "concurrent": self.s.publish_concurrent}
        self.say(
            f"publish with confirms: sequential {modes['sequential']}, concurrent "
            f"{modes['concurrent']} ({self.s.window} in flight), {self.s.rounds} rounds"
        )
        for r in range(self.s.rounds):
            for mode, n in modes.items():
                for contender in self.pick(PUBLISH):
                    names = Names(uuid.uuid4().hex[:8])
                    await self.broker.declare(names.exchange, {names.input: ORDER_TYPE})
                    params = {
                        "tag": names.tag,
                        "messages": n,
                        "mode": mode,
                        "window": self.s.window,
                    }
                    worker = await self._spawn("publish", contender, params)
                    try:
                        await worker.expect("ready", 60)
                        await worker.go()
                        res = await worker.expect("result", max(120.0, n / 100))
                        await worker.finish()
                    finally:
                        worker.kill()
                        await self._cleanup(names, [])
                    self.results.add(
                        f"publish {mode}",
                        contender,
                        "throughput",
                        "msgs/s",
                        res["rate"],
                        baseline="aio-pika",
                    )
                    self.say(
                        f"  round {r + 1}  {mode:<10} {contender:<10} {res['rate']:8.0f} msgs/s"
                    )

    # -- query ---------------------------------------------------------------------------------

    async def query_once(self, contender: str, n: int, callers: int) -> dict[str, Any]:
        names = Names(uuid.uuid4().hex[:8])
        params = {"tag": names.tag, "messages": n, "callers": callers}
        worker = await self._spawn("query", contender, params)
        owned: list[str] = []
        try:
            owned = (await worker.expect("ready", 60))["queues"]
            await worker.go()
            res = await worker.expect("result", max(120.0, n / 50))
            await worker.finish()
            return res
        finally:
            worker.kill()
            await self._cleanup(
                names,
                [
                    *owned,
                    names.replies,
                    *self._leveret_queues(names, "bench.get_order_status"),
                ],
            )

    async def section_query(self) -> None:
        runs = ((self.s.callers, self.s.query_messages), (1, self.s.query_single_messages))
        self.say(
            "query: "
            + ", ".join(f"{n} round trips with {c} caller{'s' * (c != 1)}" for c, n in runs)
            + f", {self.s.rounds} rounds in alternation"
        )
        contenders = self.pick(QUERY)
        for r in range(self.s.rounds):
            for callers, n in runs:
                for contender in contenders:
                    res = await self.query_once(contender, n, callers)
                    label = QUERY_LABELS.get(contender, contender)
                    metric = f"round trips, {callers} caller{'s' * (callers != 1)}"
                    self.results.add(
                        "query", label, metric, "/s", res["rate"], baseline="faststream"
                    )
                    self.results.add(
                        "query",
                        label,
                        f"client CPU, {callers} caller{'s' * (callers != 1)}",
                        "us/round trip",
                        res["cpu_us"],
                        baseline="faststream",
                        higher_is_better=False,
                    )
                    self.say(
                        f"  round {r + 1}  {callers:>2} caller{'s' * (callers != 1):<1} "
                        f"{label:<28} {res['rate']:8.0f} round trips/s  "
                        f"{res['cpu_us']:6.0f} us CPU/round trip"
                    )
        if "faststream-request" in contenders:
            self.results.notes.append(
                f"query: {QUERY_LABELS['faststream-request']} holds one lock for the whole round "
                "trip (FastStream issue #1318): its callers take turns, so with 50 callers it "
                "measures that lock; faststream matches replies by correlation id instead"
            )

    @staticmethod
    def _leveret_queues(names: Names, wire_name: str) -> list[str]:
        queue = f"{names.prefix}.bench.{wire_name}"
        return [queue, f"{queue}.dlq"]

    # -- later ---------------------------------------------------------------------------------

    async def saga_once(
        self, store: str, mode: str, n: int, *, broker: Broker | None = None
    ) -> dict[str, Any]:
        broker = broker or self.broker
        names = Names(uuid.uuid4().hex[:8])
        params = {"tag": names.tag, "messages": n, "mode": mode, "rate": self.s.saga_rate}
        worker = await self._spawn("saga", store, params, broker)
        queues: list[str] = []
        exchanges: list[str] = []
        try:
            ready = await worker.expect("ready", 120)
            queues, exchanges = ready["queues"], ready["exchanges"]
            await worker.go()
            result = await worker.expect("result", max(180.0, n))
            await worker.finish()
            return result
        finally:
            worker.kill()
            await worker.finish(5)  # what it said before it died
            # With what the worker declared after ``ready``: delay tiers made on first use.
            await broker.delete(
                queues=[*queues, *worker.declared_queues],
                exchanges=[*exchanges, *worker.declared_exchanges],
            )

    async def section_saga(self) -> None:
        n, rate = self.s.saga_orders, self.s.saga_rate
        stores = self.pick(SAGA)
        self.say(
            f"saga: the shop's order saga on RabbitMQ; {n} orders queued up front (throughput), "
            f"{self.s.saga_latency_orders} offered at {rate:g}/s (latency); stores "
            f"{', '.join(stores)}; {self.s.rounds} rounds in alternation"
        )
        pipeline = self.results.get("pipeline", "leveret", "throughput")
        failed: set[str] = set()
        for r in range(self.s.rounds):
            for store in stores:
                if store in failed:
                    continue
                try:
                    res = await self.saga_once(store, "throughput", n)
                    lat = await self.saga_once(store, "latency", self.s.saga_latency_orders)
                except WorkerFailed as exc:  # e.g. no PostgreSQL here: the other store goes on
                    failed.add(store)
                    self.results.notes.append(f"saga/{store}: failed: {exc}")
                    self.say(f"  saga/{store}: FAILED: {exc} (see the bench log)")
                    continue
                add = self.results.add
                add("saga", store, "throughput", "sagas/s", res["rate"])
                add("saga", store, "messages handled per saga", "msgs", res["handled_per_saga"])
                add(
                    "saga",
                    store,
                    "messages/s handled",
                    "msgs/s",
                    res["rate"] * res["handled_per_saga"],
                )
                add(
                    "saga",
                    store,
                    "client CPU",
                    "us/saga",
                    res["cpu_us_per_saga"],
                    higher_is_better=False,
                )
                add(
                    "saga",
                    store,
                    f"latency p50 at {rate:g}/s",
                    "ms",
                    lat["p50_ms"],
                    higher_is_better=False,
                )
                add(
                    "saga",
                    store,
                    f"latency p99 at {rate:g}/s",
                    "ms",
                    lat["p99_ms"],
                    higher_is_better=False,
                )
                self.say(
                    f"  round {r + 1}  {store:<9} {res['rate']:7.1f} sagas/s  "
                    f"{res['cpu_us_per_saga'] / res['handled_per_saga']:5.0f} us CPU/msg  "
                    f"{res['handled_per_saga']:.2f} msgs handled/saga "
                    f"({res['published_per_saga']:.2f} published, "
                    f"{res['timeouts_per_saga']:.2f} of them timeouts; "
                    f"{res.get('late', 0)} handled after the end)  "
                    f"p50 {lat['p50_ms']:.0f} ms p99 {lat['p99_ms']:.0f} ms at {rate:g}/s  "
                    f"{res['outcomes']}"
                )
        if pipeline is None:
            self.results.notes.append(
                "saga: no persistence tax without the pipeline section in the same run"
            )
            return
        for store in stores:
            rate = self.results.get("saga", store, "throughput")
            per = self.results.get("saga", store, "messages handled per saga")
            if rate is None or per is None:
                continue
            tax = 1 - rate.median * per.median / pipeline.median
            self.results.add(
                "saga", store, "persistence tax", "%", tax * 100, higher_is_better=False
            )
            self.say(
                f"  persistence tax {store}: 1 - {rate.median:.1f} sagas/s x {per.median:.2f} "
                f"msgs/saga / {pipeline.median:.0f} pipeline msgs/s = {tax:.0%}"
            )

    async def breaker_once(self, contender: str, params: dict[str, Any]) -> dict[str, Any]:
        worker = await self._spawn("breaker", contender, params)
        try:
            await worker.expect("ready", 60)
            await worker.go()
            result = await worker.expect("result", max(180.0, params["messages"] / 50))
            await worker.finish()
            return result
        finally:
            worker.kill()
            if contender != "micro":
                prefix = f"bench.{params['tag']}.breaker{int(contender == 'with breaker')}"
                queue = f"{prefix}.bench.{ORDER_TYPE}"
                delays, exchanges = leveret_leftovers(prefix)
                await self.broker.delete(
                    queues=[f"{prefix}.sink", queue, f"{queue}.dlq", *delays],
                    exchanges=exchanges,
                )

    async def section_breaker(self) -> None:
        n, iterations = self.s.messages, self.s.breaker_iterations
        self.say(
            f"breaker: the check per publish (best of {self.s.breaker_repeats} x {iterations}), "
            f"and the pipeline ({n} messages) without and with a breaker on its publish, "
            f"{self.s.rounds} rounds in alternation"
        )
        micro = await self.breaker_once(
            "micro",
            {"tag": "micro", "messages": iterations, "window": self.s.breaker_repeats},
        )
        self.results.add(
            "breaker",
            "closed breaker",
            "check per publish",
            "us",
            micro["breaker_check_us"],
            higher_is_better=False,
        )
        self.results.add(
            "breaker",
            "closed breaker",
            "app.send overhead",
            "us",
            micro["app_send_overhead_us"],
            higher_is_better=False,
        )
        self.say(
            f"  breaker check {micro['breaker_check_us']:.3f} us per publish "
            f"(state machine alone {micro['state_machine_us']:.3f} us; app.send "
            f"{micro['app_send_overhead_us']:+.3f} us)"
        )
        contenders = ["without breaker", "with breaker"]
        for r in range(self.s.rounds):
            # Who goes first alternates: a run right after another inherits the broker's backlog.
            for contender in contenders if r % 2 == 0 else contenders[::-1]:
                res = await self.breaker_once(
                    contender, {"tag": uuid.uuid4().hex[:8], "messages": n}
                )
                self.results.add(
                    "breaker",
                    contender,
                    "pipeline throughput",
                    "msgs/s",
                    res["rate"],
                    baseline="without breaker",
                )
                self.results.add(
                    "breaker",
                    contender,
                    "client CPU",
                    "us/msg",
                    res["cpu_s"] / n * 1e6,
                    baseline="without breaker",
                    higher_is_better=False,
                )
                self.say(f"  round {r + 1}  {contender:<16} {res['rate']:8.0f} msgs/s")

    # -- memory --------------------------------------------------------------------------------

    async def section_memory(self) -> None:
        n, warmup = self.s.memory_messages, self.s.memory_warmup
        self.say(f"memory: leveret pipeline worker, RSS after {warmup} messages and after {n}")
        names = Names(uuid.uuid4().hex[:8])
        # The sink keeps only the newest follow-ups, so a long run does not fill the broker.
        await self.broker.declare(
            names.exchange,
            {names.sink: FOLLOW_UP_TYPE},
            arguments={names.sink: {"x-max-length": 10_000}},
        )
        every = max(1_000, min(10_000, n // 100))
        params = {
            "tag": names.tag,
            "messages": n,
            "mode": "memory",
            "warmup": warmup,
            "progress_every": every,
        }
        worker = await self._spawn("memory", "leveret", params)
        owned: list[str] = []
        backlog = 10_000
        try:
            owned = (await worker.expect("ready", 60))["queues"]
            published = min(n, backlog)
            await self.broker.fill(names.exchange, published)
            await worker.go()
            warm_rss = 0
            series: list[tuple[int, int]] = []
            async for event in worker.events(120):
                if event["event"] == "warm":
                    warm_rss = event["rss"]
                elif event["event"] == "progress":
                    series.append((event["count"], event["rss"]))
                    while published < n and published - event["count"] < backlog:
                        chunk = min(every, n - published)
                        await self.broker.fill(names.exchange, chunk, start=published)
                        published += chunk
                elif event["event"] == "result":
                    res = event
                    break
            await worker.finish()
        finally:
            worker.kill()
            await self._cleanup(names, owned)
        growth = (res["rss_end"] - warm_rss) / MB
        self.results.add("memory", "leveret", f"RSS after {warmup:,} msgs", "MB", warm_rss / MB)
        self.results.add("memory", "leveret", f"RSS after {n:,} msgs", "MB", res["rss_end"] / MB)
        self.results.add("memory", "leveret", "RSS growth", "MB", growth, higher_is_better=False)
        self.results.add("memory", "leveret", "throughput", "msgs/s", res["rate"])
        self.say(
            f"  RSS {warm_rss / MB:.1f} MB after {warmup}, {res['rss_end'] / MB:.1f} MB after "
            f"{n} (growth {growth:+.1f} MB; {res['rate']:.0f} msgs/s)"
        )
        self.memory_series = series

    # -- cluster -------------------------------------------------------------------------------

    async def section_cluster(self) -> None:
        try:
            from bench.cluster import section_cluster
        except ImportError as exc:  # tests.support is in the checkout, not in an installed bench
            raise SectionFailed(
                f"the cluster section needs the checkout's tests/support ({exc}): run "
                "python -m bench from the repository root"
            ) from exc
        await section_cluster(self)


# -- report --------------------------------------------------------------------------------------


def _fmt(value: float, unit: str) -> str:
    if unit in ("us", "msgs"):
        return f"{value:.2f}"
    if unit in ("%", "sagas/s"):
        return f"{value:.1f}"
    if unit == "ms":
        return f"{value:.1f}"
    if unit == "MB":
        return f"{value:.1f}"
    return f"{value:,.0f}"


def table_lines(results: Results, *, markdown: bool) -> list[str]:
    header = ("section", "contender", "metric", "median", "min-max", "ratio")
    rows = []
    # Grouped by section, then metric, each in the order first measured; contenders in run order.
    sections = list(dict.fromkeys(r.section for r in results.rows.values()))
    metrics = list(dict.fromkeys(r.metric for r in results.rows.values()))
    ordered = sorted(
        results.rows.values(),
        key=lambda r: (sections.index(r.section), metrics.index(r.metric)),
    )
    for row in ordered:
        ratio = results.ratio(row)
        spread = (
            f"{_fmt(min(row.values), row.unit)}-{_fmt(max(row.values), row.unit)}"
            if len(row.values) > 1
            else ""
        )
        rows.append(
            (
                row.section,
                row.label,
                f"{row.metric} ({row.unit})",
                _fmt(row.median, row.unit),
                spread,
                "" if ratio is None else f"{ratio:.2f}x {row.baseline}",
            )
        )
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return lines
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(
            c.rjust(w) if i >= 3 else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return [line(header), line(tuple("-" * w for w in widths)), *(line(r) for r in rows)]


@dataclass(frozen=True)
class Target:
    text: str
    section: str
    label: str
    metric: str
    baseline: str | None
    bound: float
    at_least: bool = True


TARGETS = (
    Target(
        "pipeline: leveret >= 1.2x hand-written aio-pika",
        "pipeline",
        "leveret",
        "throughput",
        "aio-pika",
        1.2,
    ),
    Target(
        "pipeline: leveret >= 0.95x bare aiormq",
        "pipeline",
        "leveret",
        "throughput",
        "aiormq",
        0.95,
    ),
    Target(
        "pipeline: leveret >= 1.8x FastStream (default)",
        "pipeline",
        "leveret",
        "throughput",
        "faststream",
        1.8,
    ),
    Target(
        "query: leveret >= 2x FastStream (replies by correlation id), 50 callers",
        "query",
        "leveret",
        "round trips, 50 callers",
        "faststream",
        2.0,
    ),
    Target(
        "saga: persistence tax <= 30% with SQLite",
        "saga",
        "sqlite",
        "persistence tax",
        None,
        30.0,
        at_least=False,
    ),
    Target(
        "saga: persistence tax <= 30% with PostgreSQL",
        "saga",
        "postgres",
        "persistence tax",
        None,
        30.0,
        at_least=False,
    ),
    Target(
        "breaker: check < 2 us per publish",
        "breaker",
        "closed breaker",
        "check per publish",
        None,
        2.0,
        at_least=False,
    ),
    Target(
        "breaker: pipeline with a breaker >= 0.97x without",
        "breaker",
        "with breaker",
        "pipeline throughput",
        "without breaker",
        0.97,
    ),
    Target(
        "memory: RSS growth < 50 MB", "memory", "leveret", "RSS growth", None, 50.0, at_least=False
    ),
)


def check_targets(results: Results) -> list[dict[str, Any]]:
    out = []
    for t in TARGETS:
        row = results.get(t.section, t.label, t.metric)
        if row is None:
            continue
        if t.baseline is None:
            value = row.median
        else:
            base = results.get(t.section, t.baseline, t.metric)
            if base is None:
                continue
            value = row.median / base.median
        met = value >= t.bound if t.at_least else value < t.bound
        out.append({"target": t.text, "value": round(value, 3), "met": met})
    return out


def machine(broker_version: str, loop: str) -> dict[str, Any]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) // 1024} MiB"
    except OSError:
        pass
    versions = {}
    for dist in (
        "leveret",
        "aio-pika",
        "aiormq",
        "pamqp",
        "faststream",
        "msgspec",
        "pydantic",
        "uvloop",
    ):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory": mem,
        "os": platform.platform(),
        "python": platform.python_version(),
        "rabbitmq": broker_version,
        "event_loop": loop,
        "versions": versions,
        "load_average_at_start": os.getloadavg(),
    }


async def measure(
    settings: Settings, only: tuple[str, ...], log: IO[str], verbose: bool
) -> tuple[Bench, dict[str, Any]]:
    """Run the chosen sections in order; a failed section is noted and the rest still run."""
    async with Broker(URL) as broker:
        bench = Bench(settings, broker, log, verbose)
        info = machine(broker.server_version, settings.loop)
        bench.say(
            f"bench on {info['cpu']} x{info['cores']}, RabbitMQ {info['rabbitmq']}, "
            f"Python {info['python']}, {settings.loop} loop"
        )
        for name in SECTIONS:
            if name in only:
                section: Callable[[], Awaitable[None]] = getattr(bench, f"section_{name}")
                try:
                    await section()
                except SectionFailed as exc:
                    bench.failed_sections.append(name)
                    bench.results.notes.append(f"{name}: failed: {exc}")
                    bench.say(f"{name}: FAILED: {exc}")
    return bench, info


def run(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    settings = SMOKE if args.smoke else QUICK if args.quick else Settings()
    overrides = {
        k: v
        for k, v in {
            "rounds": args.rounds,
            "messages": args.messages,
            "memory_messages": args.memory_messages,
            "loop": args.loop,
            "contenders": tuple(args.contenders.split(",")) if args.contenders else None,
        }.items()
        if v is not None
    }
    settings = replace(settings, **overrides)
    only = DEFAULT_SECTIONS if args.only is None else tuple(s.strip() for s in args.only.split(","))
    unknown = set(only) - set(SECTIONS)
    if unknown:
        print(
            f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}",
            file=sys.stderr,
        )
        return 2
    if "cluster" in only and not all(
        shutil.which(tool) for tool in ("rabbitmq-server", "rabbitmqctl")
    ):
        print(
            "the cluster section boots three RabbitMQ nodes on this machine and needs "
            "rabbitmq-server and rabbitmqctl on the PATH (Debian: apt-get install "
            "rabbitmq-server); they are not there",
            file=sys.stderr,
        )
        return 2
    if settings.loop == "uvloop":
        try:
            import uvloop  # noqa: F401
        except ImportError:
            print("--loop uvloop needs uvloop: pip install 'leveret[uvloop]'", file=sys.stderr)
            return 2
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    log_path = out.with_suffix(".log")
    print(f"worker output goes to {log_path}", file=sys.stderr)
    with open(log_path, "w") as log:
        bench, info = asyncio.run(measure(settings, only, log, args.verbose))
    results = bench.results
    elapsed = time.time() - started
    # The machine may be shared: the load around the run says how much the rates can be trusted.
    info["load_average_at_end"] = os.getloadavg()
    if bench.cluster_info is not None:
        info["cluster"] = bench.cluster_info
    targets = check_targets(results)
    print()
    for line in table_lines(results, markdown=False):
        print(line)
    print()
    for t in targets:
        print(f"{'met    ' if t['met'] else 'NOT met'}  {t['target']}  ({t['value']:g})")
    for note in results.notes:
        print(f"note: {note}")
    start_load = ", ".join(f"{x:.1f}" for x in info["load_average_at_start"])
    end_load = ", ".join(f"{x:.1f}" for x in info["load_average_at_end"])
    print(f"\nload average (1, 5, 15 min) at the start {start_load}, at the end {end_load}")
    print(f"{elapsed / 60:.1f} min; JSON: {out}")
    if bench.failed_sections:
        print(f"failed sections: {', '.join(bench.failed_sections)}")
    report = {
        "command": " ".join(["python -m bench", *(sys.argv[1:] if argv is None else argv)]),
        "finished_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": info,
        "settings": asdict(settings),
        "elapsed_s": round(elapsed, 1),
        "results": [
            {
                **asdict(row),
                "median": row.median,
                "min": min(row.values),
                "max": max(row.values),
                "ratio": results.ratio(row),
            }
            for row in results.rows.values()
        ],
        "targets": targets,
        "notes": results.notes,
        "memory_series": bench.memory_series,
    }
    out.write_text(json.dumps(report, indent=2))
    chart = write_chart(report, out.with_suffix(".svg"))
    print(f"chart: {chart}")
    if args.markdown:
        md = table_lines(results, markdown=True)
        md += [""]
        md += [
            f"- {'met' if t['met'] else '**not met**'}: {t['target']} ({t['value']:g})"
            for t in targets
        ]
        md += [f"- note: {note}" for note in results.notes]
        Path(args.markdown).write_text("\n".join(md) + "\n")
    return 1 if bench.failed_sections else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only",
        help=f"comma-separated sections of: {', '.join(SECTIONS)} (default: all but "
        f"{', '.join(OPT_IN)}; '--only cluster' boots a three-node RabbitMQ cluster on this "
        "machine and runs the leveret pipeline and the saga on it with quorum queues, beside "
        "the single node with classic queues)",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--quick",
        action="store_true",
        help="1 round and fewer messages: a smoke run of a few minutes",
    )
    size.add_argument(
        "--smoke",
        action="store_true",
        help="1 round of a few messages each: checks that the sections run and leave nothing "
        "on the broker; its figures mean nothing",
    )
    parser.add_argument(
        "--contenders", help="comma-separated contenders to run (default: all of each section)"
    )
    parser.add_argument("--rounds", type=int, help="measurements per contender (default 3)")
    parser.add_argument("--messages", type=int, help="pipeline messages per run (default 10000)")
    parser.add_argument(
        "--memory-messages", type=int, help="messages through the memory worker (default 150000)"
    )
    parser.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        help="event loop of every contender (default asyncio)",
    )
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "latest.json"))
    parser.add_argument("--markdown", help="also write the table as Markdown to this file")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    return run(args, argv)
