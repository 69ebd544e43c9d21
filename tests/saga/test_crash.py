"""Workers SIGKILLed mid-run: every order still ends once, with no duplicate effect.

``leveret run handlers.app:app --workers 2`` serves the shop on RabbitMQ with a SQLite file of
the test's own; this process places a few hundred orders and kills a worker several times while
they are being processed (as ``tests/test_worker.py`` finds them: from the supervisor's
``worker_spawned`` log events). Unacked deliveries go back to the queues, the other worker and
the restarted ones take them over, outbox rows a dead worker committed but never published are
swept; the inbox and deterministic message ids keep every charge, refund and notification single.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from examples.shop import check_invariants, make_orders, place, wait_for_sagas, wait_ready
from framework import App, AppConfig
from framework.store import SagaStatus, Store, store_from_url
from framework.transport.amqp import AmqpConfig, AmqpTransport
from tests.saga.conftest import eventually
from tests.test_worker import Leveret

ORDERS = 200
KILLS = 4

pytestmark = [pytest.mark.slow, pytest.mark.rabbitmq]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Callable[..., Leveret]]:
    """Starts ``leveret run`` processes; kills each one's whole process group afterwards."""
    started: list[Leveret] = []

    def start(*args: str, env: Mapping[str, str]) -> Leveret:
        directory = tmp_path / f"run{len(started)}"
        directory.mkdir()
        started.append(Leveret(directory, args, env))
        return started[-1]

    yield start
    for leveret in started:
        leveret.kill_everything()


def worker_pid(leveret: Leveret, index: int) -> int | None:
    """The pid of the latest process started for worker ``index``."""
    spawned = [e["pid"] for e in leveret.events("worker_spawned") if e["index"] == index]
    return spawned[-1] if spawned else None


async def finished_at_least(store: Store, run: str, goal: int) -> bool:
    """Whether ``goal`` sagas of ``run`` have reached a terminal status."""
    records = await store.list_sagas(saga="order", limit=10 * ORDERS)
    done = sum(r.status.terminal for r in records if r.saga_id.startswith(f"order-{run}"))
    return done >= goal


@pytest.mark.timeout(240)
async def test_killed_workers_leave_no_duplicate_effects(
    served: Callable[..., Leveret], amqp_url: str, prefix: str, tmp_path: Path
) -> None:
    """Four SIGKILLs during 200 orders: all sagas end, and the shop's invariants hold."""
    db_url = f"sqlite:///{tmp_path / 'shop.db'}"
    env = {
        "LEVERET_SHOP_DB_URL": db_url,
        "LEVERET_SHOP_PREFIX": prefix,
        "LEVERET_LOG_FORMAT": "json",
        "LEVERET_LOG_LEVEL": "info",
    }
    leveret = served("handlers.app:app", "--workers", "2", "--amqp-url", amqp_url, env=env)
    store = store_from_url(db_url)
    client = App([], url=amqp_url, config=AppConfig(prefix=prefix))
    client.use_transport(AmqpTransport(amqp_url, config=AmqpConfig(connect_timeout=5.0)))
    run = "crash"
    orders = make_orders(run, ORDERS, seed=11)
    try:
        await wait_ready(store, client, deadline=60)
        placing = asyncio.create_task(place(client, orders, concurrency=25))
        killed: list[int] = []
        for k in range(KILLS):
            index = k % 2
            victim = worker_pid(leveret, index)
            assert victim is not None
            goal = (k + 1) * ORDERS // (KILLS + 2)
            await eventually(
                lambda goal=goal: finished_at_least(store, run, goal),
                timeout=90,
                what=f"{goal} finished sagas before kill {k + 1}",
            )
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)
            await eventually(
                lambda index=index, victim=victim: worker_pid(leveret, index) not in (None, victim),
                timeout=30,
                what=f"worker {index} to be restarted",
            )
        await placing
        records = await wait_for_sagas(store, run, len(orders), deadline=120)
        problems = await check_invariants(store, orders, records)
        assert problems == [], problems[:20]
        assert {r.status for r in records} <= {SagaStatus.COMPLETED, SagaStatus.COMPENSATED}
        exits = leveret.events("worker_exited")
        assert sorted(e["pid"] for e in exits if e.get("signal") == "SIGKILL") == sorted(killed)
        assert len(leveret.events("worker_restarted")) == KILLS
    finally:
        await client.stop(grace=0)
        await store.close()
        if leveret.process.poll() is None:
            leveret.send(signal.SIGTERM)
            await leveret.exit_code(timeout=60)
