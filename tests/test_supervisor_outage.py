"""The supervisor tells a wrong broker URL (first start, exit 3) from an outage (a restarted
worker that cannot reach the broker): the first stops the service, the second is restarted.

The workers are a stand-in interpreter (``SupervisorConfig.python``) that plays a scripted
sequence of exit codes, one per start, so no broker is needed.
"""

from __future__ import annotations

import asyncio
import stat
import sys
from pathlib import Path

from framework.supervisor import RestartBackoff, Supervisor, SupervisorConfig
from framework.worker import EXIT_BROKER_UNREACHABLE, EXIT_OK, EXIT_TRANSPORT_FAILED
from tests.test_worker import eventually

FAST = RestartBackoff(initial=0.05, maximum=0.05, healthy_after=30.0)


def scripted_worker(tmp_path: Path, codes: list[int]) -> str:
    """An executable that exits with the next of ``codes`` on each start; past the list it
    waits for SIGTERM and exits 0, as a draining worker does."""
    script = tmp_path / "worker"
    counter = tmp_path / "starts"
    script.write_text(
        f"#!{sys.executable}\n"
        "import pathlib, signal, sys, time\n"
        f"counter = pathlib.Path({str(counter)!r})\n"
        "n = int(counter.read_text()) if counter.exists() else 0\n"
        "counter.write_text(str(n + 1))\n"
        f"codes = {codes!r}\n"
        "if n < len(codes):\n"
        "    sys.exit(codes[n])\n"
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
        "while True:\n"
        "    time.sleep(0.05)\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


async def test_restarted_worker_that_cannot_reach_the_broker_is_restarted(
    tmp_path: Path,
) -> None:
    """Exit 4 (connection failed for good), then 3 on the restart: restarted again, not fatal."""
    python = scripted_worker(tmp_path, [EXIT_TRANSPORT_FAILED, EXIT_BROKER_UNREACHABLE])
    supervisor = Supervisor(
        "app:app", config=SupervisorConfig(workers=1, python=python, backoff=FAST)
    )
    running = asyncio.create_task(supervisor.run())
    starts = tmp_path / "starts"
    await eventually(
        lambda: running.done() or (starts.exists() and starts.read_text() == "3"),
        timeout=30,
        what="the third start of the worker",
    )
    assert not running.done()
    supervisor.stop()
    assert await asyncio.wait_for(running, 30) == EXIT_OK


async def test_first_start_that_cannot_reach_the_broker_stops_the_service(
    tmp_path: Path,
) -> None:
    """Exit 3 on the very first start is a configuration problem: the supervisor exits 3."""
    python = scripted_worker(tmp_path, [EXIT_BROKER_UNREACHABLE])
    supervisor = Supervisor(
        "app:app", config=SupervisorConfig(workers=1, python=python, backoff=FAST)
    )
    assert await asyncio.wait_for(supervisor.run(), 30) == EXIT_BROKER_UNREACHABLE
    assert (tmp_path / "starts").read_text() == "1"
