"""``leveret run --metrics-port``: two workers' metrics, scraped over HTTP, match what they did.

The run serves ``tests.apps.metrics_app`` (the shop plus a flaky handler) on RabbitMQ with a
SQLite store; the test sends a retried message, a poison message, a good one, an undecodable
one and two orders (one completes, one is declined and compensated), then checks the scraped
counters exactly against that, and the saga step histogram against the sagas' history.
"""

from __future__ import annotations

import asyncio
import signal
import socket
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from contracts.orders import LineItem, PlaceOrder
from framework import App
from framework.store import SagaStatus
from framework.transport.base import OutgoingMessage
from tests.apps.metrics_app import FLAKY_HANDLER, Work, build_app
from tests.support.prometheus import Samples, scrape, total, value
from tests.test_worker import Leveret, eventually, run_leveret
from tests.test_worker import served as served  # the fixture


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.slow
@pytest.mark.timeout(150)
async def test_scraped_metrics_count_what_two_workers_did(
    served: Callable[..., Leveret], amqp_url: str, prefix: str, tmp_path: Path
) -> None:
    """Deliveries by outcome, publishes, sagas and the store gauges, counted exactly."""
    port = free_port()
    db_url = f"sqlite:///{tmp_path / 'shop.db'}"
    env = {
        "LEVERET_TEST_URL": amqp_url,
        "LEVERET_TEST_PREFIX": prefix,
        "LEVERET_TEST_DB_URL": db_url,
        "LEVERET_LOG_FORMAT": "json",
    }
    run = served(
        "tests.apps.metrics_app:app", "--workers", "2", "--metrics-port", str(port), env=env
    )
    client = build_app(url=amqp_url, prefix=prefix, db_url=db_url)
    await client.start(consume=False)  # declares the topology: the messages wait for the workers
    try:
        await _send_the_run(client)
        store = client.store
        assert store is not None

        def settled() -> Samples | None:
            samples = scrape(port)
            if samples is None:
                return None
            flaky_done = value(samples, "leveret_messages_acked_total", handler=FLAKY_HANDLER)
            dead = total(samples, "leveret_messages_dead_lettered_total")
            sagas = total(samples, "leveret_sagas_finished_total")
            return samples if (flaky_done, dead, sagas) == (2, 2, 2) else None

        samples = await eventually(settled, timeout=90, what="the run to be counted")

        async def gauges_caught_up() -> Samples | None:
            # Projections and notifications may still be running: compare with the store now.
            stats = await store.stats()
            now = scrape(port)
            if now is None or stats.outbox_pending or stats.inbox_rows == 0:
                return None
            inbox = value(now, "leveret_inbox_rows")
            pending = value(now, "leveret_outbox_pending_rows")
            return now if (inbox, pending) == (stats.inbox_rows, 0) else None

        gauges = await eventually(gauges_caught_up, timeout=60, what="the store gauges")
        assert value(gauges, "leveret_outbox_oldest_pending_age_seconds") == 0

        h = {"handler": FLAKY_HANDLER}
        # 1 fails then passes (2 runs), 2 fails twice (2 runs), 3 passes, the bad body never runs.
        assert value(samples, "leveret_messages_consumed_total", **h) == 6
        assert value(samples, "leveret_messages_acked_total", **h) == 2
        assert value(samples, "leveret_messages_retried_total", reason="ValueError", **h) == 2
        assert total(samples, "leveret_messages_retried_total", **h) == 2
        dead = "leveret_messages_dead_lettered_total"
        assert value(samples, dead, reason="handler_failed", **h) == 1
        assert value(samples, dead, reason="malformed_json", **h) == 1
        assert total(samples, "leveret_messages_requeued_total") == 0
        assert value(samples, "leveret_handler_errors_total", exception="ValueError", **h) == 3
        assert total(samples, "leveret_handler_errors_total") == 3
        assert value(samples, "leveret_handler_duration_seconds_count", **h) == 5
        confirmed = "leveret_publish_confirmed_total"
        assert value(samples, confirmed, destination=f"{prefix}.retry") == 2
        assert value(samples, confirmed, destination=f"{prefix}.dlx") == 2
        assert value(samples, confirmed, destination="inventory.reserve_inventory") == 2
        assert value(samples, confirmed, destination="payment.charge_payment") == 2
        assert value(samples, confirmed, destination="inventory.release_inventory") == 1
        assert total(samples, "leveret_publish_failed_total") == 0

        assert value(samples, "leveret_sagas_started_total", saga="order") == 2
        finished = "leveret_sagas_finished_total"
        assert value(samples, finished, saga="order", status="completed") == 1
        assert value(samples, finished, saga="order", status="compensated") == 1
        records = await store.list_sagas(saga="order")
        assert sorted(r.status for r in records) == [
            SagaStatus.COMPENSATED,
            SagaStatus.COMPLETED,
        ]
        left: Counter[str] = Counter()
        for record in records:
            for row in await store.history(record.saga_id):
                if row.note is None and row.from_state not in ("start", row.to_state):
                    left[row.from_state] += 1
        assert left  # reserve, charge, ship and a compensation were left
        for state, count in left.items():
            assert (
                value(
                    samples, "leveret_saga_step_duration_seconds_count", saga="order", state=state
                )
                == count
            ), state
        assert total(samples, "leveret_saga_step_duration_seconds_count") == sum(left.values())
    finally:
        await client.stop(grace=0)
    run.send(signal.SIGTERM)
    assert await run.exit_code(timeout=60) == 0


async def _send_the_run(client: App) -> None:
    await client.send(Work(n=1, fail_first=True))
    await client.send(Work(n=2, poison=True))
    await client.send(Work(n=3))
    bad = OutgoingMessage(body=b"{not json", message_id="bad-1", type=Work.__wire_name__)
    await client.transport.publish(
        bad, exchange=client.naming.commands, routing_key=Work.__wire_name__, mandatory=True
    )
    cheap = LineItem(sku="apple", qty=1, unit_price_cents=250)
    dear = LineItem(sku="pear", qty=100, unit_price_cents=1299)  # over the card limit
    await asyncio.gather(
        client.send(
            PlaceOrder(order_id="m-1", customer_id="c", items=[cheap], address="Main St, Bern")
        ),
        client.send(
            PlaceOrder(order_id="m-2", customer_id="c", items=[dear], address="Main St, Bern")
        ),
    )


def test_a_metrics_port_in_use_exits_2_before_any_worker_starts() -> None:
    """A port already taken is a usage error naming it, and no worker is spawned."""
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_leveret("tests.apps.metrics_app:app", "--metrics-port", str(port))
    assert result.returncode == 2
    assert f"cannot serve metrics on 0.0.0.0:{port}" in result.stderr
    assert "worker_spawned" not in result.stderr + result.stdout
