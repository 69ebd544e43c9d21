"""Worker side of the benchmark: one process runs one contender of one section, then exits.

Started by the orchestrator as ``python -m bench.worker SECTION CONTENDER``; the first line on
its stdin is the ``Params`` as JSON (on stdin, not the command line, because they hold the
broker's URL and its password). It talks to the orchestrator with lines on stdout that start
with ``BENCH `` (a JSON event: ``ready``, ``declared``, ``progress``, ``result``); anything else a
library prints is passed through to the log. The orchestrator answers ``go`` on stdin once the
queues are filled, so set-up is never measured. A fresh process per measurement keeps
contenders from sharing a heap, a loop or a connection.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

URL = os.environ.get("LEVERET_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
SECTIONS = {
    "pipeline": "bench.pipeline",
    "publish": "bench.publish",
    "query": "bench.query",
    "memory": "bench.pipeline",  # the pipeline worker in its memory mode
    "saga": "bench.saga",
    "breaker": "bench.breaker",
}


@dataclass(frozen=True)
class Params:
    """What the orchestrator asks of one measurement."""

    tag: str
    messages: int
    mode: str = "throughput"  # pipeline: throughput | latency; publish: sequential | concurrent
    callers: int = 50  # query
    window: int = 1000  # publish concurrent
    warmup: int = 0  # memory
    progress_every: int = 0  # memory
    rate: float = 0.0  # saga latency: orders placed per second
    # The broker: one AMQP URL, or a cluster's node URLs separated by commas (leveret only).
    url: str = URL
    queue_type: str = "classic"  # leveret's AppConfig.queue_type: "quorum" on a cluster


Contender = Callable[[Params], Awaitable[None]]


def emit(event: str, **fields: Any) -> None:
    """Tell the orchestrator something (one JSON line on stdout)."""
    sys.stdout.write("BENCH " + json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


async def wait_go() -> None:
    """Block until the orchestrator says ``go`` (queues filled, load about to start)."""
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    if line.strip() != "go":
        raise SystemExit(f"expected 'go' from the orchestrator, got {line!r}")


def rss_bytes() -> int:
    """Resident set size of this process (Linux)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class Tracker:
    """Counts handled messages, records latencies, and signals when the last one is done."""

    __slots__ = ("count", "done", "latencies_ns", "n", "on_count")

    def __init__(self, n: int, on_count: Callable[[int], None] | None = None) -> None:
        self.n = n
        self.count = 0
        self.done = asyncio.Event()
        self.latencies_ns: list[int] = []
        self.on_count = on_count

    def hit(self, sent_ns: Any) -> None:
        if sent_ns is not None:
            self.latencies_ns.append(time.time_ns() - int(sent_ns))
        self.count += 1
        if self.on_count is not None:
            self.on_count(self.count)
        if self.count == self.n:
            self.done.set()

    def summary(self) -> dict[str, float]:
        lat = sorted(self.latencies_ns)
        if not lat:
            return {}

        def pct(p: float) -> float:
            return lat[min(len(lat) - 1, int(p * len(lat)))] / 1e6

        return {"p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": lat[-1] / 1e6}


def main(argv: list[str]) -> int:
    section, contender = argv
    from framework.logging import configure_logging

    # As a `leveret run` worker does: the orchestrator sets LEVERET_LOG_LEVEL (warning), and
    # leveret's info lines (a saga finished, ...) are neither formatted nor written.
    configure_logging(level="warning")
    params = Params(**json.loads(sys.stdin.readline()))
    module = importlib.import_module(SECTIONS[section])
    run: Contender = module.CONTENDERS[contender]
    loop_factory = None
    if os.environ.get("BENCH_LOOP") == "uvloop":
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(run(params))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
