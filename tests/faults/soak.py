"""The soak: orders flowing for N minutes, the broker closing every connection each minute.

It samples the workers' resident memory (``/proc/PID/status``) and the node's channel count
each minute; the row notes their first and last values, and a problem is raised when memory
more than doubles or channels keep growing — leaks that only show over time.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.faults.harness import Harness, Row, Run


def rss_kib(pid: int) -> int:
    """Resident set size of a process in KiB (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def channels(harness: Harness) -> int:
    out = harness.node.ctl("list_channels", "-q", "--no-table-headers", "pid")
    return len([line for line in out.splitlines() if line.strip()])


async def soak(harness: Harness, *, minutes: float) -> Row:
    """One long run: ``minutes`` of orders, one ``close_all_connections`` a minute."""
    per_minute = 300
    orders = int(per_minute * minutes)
    async with harness.shop("soak") as shop:
        shop.start()
        await shop.ready()
        samples: list[tuple[int, int]] = []

        async def inject(run: Run) -> None:
            for minute in range(int(minutes)):
                await asyncio.sleep(60)
                shop.node.ctl("close_all_connections", "soak")
                run.instant("close_all_connections")
                await asyncio.sleep(5)
                pids = shop.worker_pids().values()
                samples.append((sum(rss_kib(p) for p in pids), channels(harness)))
                print(
                    f"   soak minute {minute + 1}: rss {samples[-1][0]} KiB, "
                    f"channels {samples[-1][1]}, finished {run.done}/{len(run.orders)}",
                    flush=True,
                )

        row = await harness.workload(
            f"soak {minutes:g} min, connections closed each minute",
            shop,
            inject,
            orders=orders,
            rate=per_minute / 60,  # orders trickle in over the whole soak
        )
        if samples:
            first, last = samples[0], samples[-1]
            row.notes += "; " + (
                f"workers' RSS {first[0] // 1024} -> {last[0] // 1024} MiB, "
                f"channels {first[1]} -> {last[1]}"
            )
            if last[0] > 2 * first[0]:
                row.problems.append(
                    f"workers' memory more than doubled: {first[0]} -> {last[0]} KiB"
                )
            if last[1] > first[1] + 4:
                row.problems.append(f"channels grew: {first[1]} -> {last[1]}")
        await shop.stop()
        return row
