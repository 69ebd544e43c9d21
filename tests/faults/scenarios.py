"""The scenarios: each starts the shop, injects its faults while sagas run, restores the broker
(or proxy) in a ``finally``, and returns its row of the report table.

Broker faults hit the suite's own node (``tests/support/second_node.py``), never the shared one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from tests.faults.app import CRASH_POINTS
from tests.faults.harness import Harness, Row, Run, Shop, until
from tests.support.broker import RabbitmqctlError
from tests.support.fault_proxy import ProxyMode, fault_proxy

__all__ = ["SCENARIOS", "Scenario"]

Scenario = Callable[[Harness], Awaitable[Row]]


def _restore_node(shop: Shop) -> None:
    """Bring the node back to normal: application running, no process stopped."""
    with contextlib.suppress(RabbitmqctlError):
        shop.node.ctl("start_app")


async def baseline(h: Harness) -> Row:
    """No faults: the reference row (and a check of the checker)."""
    async with h.shop("baseline") as shop:
        shop.start()
        await shop.ready()

        async def nothing(run: Run) -> None:
            return None

        row = await h.workload("no faults", shop, nothing)
        await _drained(shop, row)
        return row


async def _drained(shop: Shop, row: Row) -> None:
    """SIGTERM after the run: the supervisor must drain and exit 0."""
    code = await shop.stop()
    if code != 0:
        row.problems.append(f"leveret run exited {code} on SIGTERM, expected 0")


async def connections_closed(h: Harness) -> Row:
    """The broker closes every connection (``close_all_connections``) repeatedly mid-run."""
    kills = 6 if h.profile.name == "short" else 20
    async with h.shop("close-connections") as shop:
        shop.start()
        await shop.ready()

        async def inject(run: Run) -> None:
            for k in range(kills):
                await run.reached((k + 1) / (kills + 2))
                shop.node.ctl("close_all_connections", "fault injection")
                run.instant("close_all_connections")
            # Every queue has its consumers back (a reconnect that forgot them would hang here).
            try:
                await until(
                    lambda: not shop.consumers_missing(shop.workers),
                    timeout=30,
                    what="every queue's consumers back",
                )
            except TimeoutError:
                run.problems.append(f"consumers not restored: {shop.consumers_missing(2)}")

        row = await h.workload("connections closed by the broker", shop, inject)
        await _drained(shop, row)
        return row


async def workers_killed(h: Harness) -> Row:
    """Workers SIGKILLed at the five crash points and at random moments."""
    per_point = 1 if h.profile.name == "short" else 4
    kills = 3 if h.profile.name == "short" else 12
    env = {
        "LEVERET_FAULTS_CRASH": (
            "before_commit:0.02,after_commit:0.02,before_mark_sent:0.05,"
            "before_ack:0.02,compensation:0.25"
        ),
        "LEVERET_FAULTS_MAX_CRASHES": str(per_point),
    }
    rng = random.Random(3)
    async with h.shop("sigkill", env=env) as shop:
        shop.start()
        await shop.ready()

        async def inject(run: Run) -> None:
            for k in range(kills):
                await run.reached((k + 1) / (kills + 2))
                pids = shop.worker_pids()
                victim = pids[rng.choice(sorted(pids))]
                with contextlib.suppress(ProcessLookupError):
                    os.kill(victim, signal.SIGKILL)
                run.instant("sigkill")

        row = await h.workload("worker SIGKILL (crash points + random)", shop, inject)
        crashed = shop.crashes()
        row.faults += len(crashed)
        hit = sorted({p for p, _ in crashed})
        row.notes = f"crash points hit: {', '.join(hit) or 'none'}"
        missed = sorted(set(CRASH_POINTS) - set(hit))
        if missed:
            row.problems.append(f"crash points never reached: {missed}")
        await _drained(shop, row)
        return row


async def broker_restarted(h: Harness) -> Row:
    """``stop_app`` / ``start_app`` of the node mid-run; every queue gets its consumers back."""
    restarts = 2 if h.profile.name == "short" else 6
    async with h.shop("broker-restart") as shop:
        shop.start()
        await shop.ready()

        async def inject(run: Run) -> None:
            for k in range(restarts):
                await run.reached((k + 1) / (restarts + 2))
                try:
                    with run.fault("stop_app"):
                        shop.node.ctl("stop_app")
                        await asyncio.sleep(3)
                        shop.node.ctl("start_app")
                finally:
                    _restore_node(shop)
                try:
                    await until(
                        lambda: not shop.consumers_missing(shop.workers),
                        timeout=45,
                        what="every queue's consumers back",
                    )
                except TimeoutError:
                    run.problems.append(
                        f"consumers not restored within 45 s: {shop.consumers_missing(2)[:5]}"
                    )

        row = await h.workload("broker application restarted", shop, inject)
        await _drained(shop, row)
        return row


async def blackholed(h: Harness) -> Row:
    """The link to the broker blackholed past the heartbeat, then only confirms dropped."""
    host, port = "127.0.0.1", urlsplit(h.node.url).port or 5672
    async with fault_proxy(host, port) as proxy:
        async with h.shop("blackhole", worker_url=proxy.url_for(h.node.url)) as shop:
            shop.start()
            await shop.ready()

            async def inject(run: Run) -> None:
                assert shop.leveret is not None
                try:
                    await run.reached(0.2)
                    with run.fault("blackhole"):
                        proxy.set_mode(ProxyMode.BLACKHOLE)
                        # Past two heartbeats and the consumer verify deadline: workers must
                        # give up (exit 4) and be restarted rather than hang.
                        await until(
                            lambda: any(
                                e.get("exit_code") not in (None, 0)
                                for e in shop.leveret.events("worker_exited")  # type: ignore[union-attr]
                            ),
                            timeout=60,
                            what="a worker to exit non-zero while blackholed",
                        )
                        proxy.set_mode(ProxyMode.PASS)
                    await run.reached(0.5)
                    with run.fault("drop_server_to_client"):
                        proxy.set_mode(ProxyMode.DROP_SERVER_TO_CLIENT)
                        await asyncio.sleep(8)
                        proxy.set_mode(ProxyMode.PASS)
                except TimeoutError as exc:
                    run.problems.append(str(exc))
                finally:
                    proxy.set_mode(ProxyMode.PASS)

            row = await h.workload("blackhole past heartbeat; confirms dropped", shop, inject)
            assert shop.leveret is not None
            exits = [e for e in shop.leveret.events("worker_exited") if not e.get("stopping")]
            restarts = shop.leveret.events("worker_restarted")
            row.notes = (
                f"worker exits {sorted({str(e.get('exit_code', e.get('signal'))) for e in exits})}"
                f", restarts {len(restarts)}"
            )
            if not restarts:
                row.problems.append("no worker was restarted")
            await _drained(shop, row)
            return row


async def duplicated(h: Harness) -> Row:
    """10% of first deliveries are delivered a second time with the same message id."""
    async with h.shop("duplicates", env={"LEVERET_FAULTS_DUPLICATE": "0.1"}) as shop:
        shop.start()
        await shop.ready()

        async def nothing(run: Run) -> None:
            return None

        row = await h.workload("10% duplicated deliveries", shop, nothing)
        row.faults = row.duplicate_deliveries
        if row.duplicate_deliveries == 0:
            row.problems.append("no duplicate was delivered: the fault did not fire")
        await _drained(shop, row)
        return row


SCENARIOS: dict[str, Scenario] = {
    "baseline": baseline,
    "connections_closed": connections_closed,
    "workers_killed": workers_killed,
    "broker_restarted": broker_restarted,
    "blackholed": blackholed,
    "duplicated": duplicated,
}
