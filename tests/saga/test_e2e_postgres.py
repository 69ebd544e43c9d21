"""The shop end to end on the production pair: RabbitMQ and the PostgreSQL store.

Two in-process apps (competing consumers on every queue, each with its own connection pool)
serve two hundred orders with the failure mix; the store lives in a PostgreSQL schema of the
test's own. Every saga must end and the shop's invariants must hold, and the event-sourced
inventory's stock, loaded from its snapshots, must equal a replay of its whole streams.
"""

from __future__ import annotations

import pytest

from contracts.inventory import StockReceived, StockReleased, StockReserved
from examples.shop import check_invariants, make_orders, place, wait_for_sagas
from framework import AppConfig
from framework.eventsourcing import EventDecoder, event_store
from framework.store import SagaStatus, Store
from framework.transport.amqp import AmqpConfig, AmqpTransport
from handlers.app import build_app
from handlers.inventory import Stock

pytestmark = [pytest.mark.rabbitmq, pytest.mark.postgres, pytest.mark.slow]

ORDERS = 200


@pytest.mark.timeout(180)
async def test_two_hundred_orders_on_rabbitmq_and_postgresql(
    amqp_url: str, postgres_db_url: str, prefix: str
) -> None:
    """200 orders with stock-outs, declined cards and failed shipments end with the books right."""
    apps = [
        build_app(
            amqp_url, db_url=postgres_db_url, config=AppConfig(prefix=prefix, upgrade_db=True)
        )
        for _ in range(2)
    ]
    for app in apps:
        app.use_transport(AmqpTransport(amqp_url, config=AmqpConfig(connect_timeout=5.0)))
    orders = make_orders("pg", ORDERS, seed=17)
    store = apps[0].store
    assert store is not None
    try:
        for app in apps:
            await app.start()
        await place(apps[0], orders)
        records = await wait_for_sagas(store, "pg", len(orders), deadline=120)
        problems = await check_invariants(store, orders, records)
        snapshots = await stock_from_snapshots_matches_a_full_replay(store)
    finally:
        for app in apps:
            await app.stop(grace=0)
    assert problems == [], problems[:20]
    outcomes = {r.status for r in records}
    assert outcomes == {SagaStatus.COMPLETED, SagaStatus.COMPENSATED}
    reasons = " ".join(r.reason or "" for r in records)
    for cause in ("out of stock", "card declined", "no delivery to Atlantis"):
        assert cause in reasons
    assert snapshots > 0  # the busiest SKUs passed Stock.snapshot_every events


async def stock_from_snapshots_matches_a_full_replay(store: Store) -> int:
    """Each SKU's stock loaded from its latest snapshot equals a replay of its whole stream;
    returns how many SKUs had a snapshot."""
    decoder = EventDecoder([StockReceived, StockReserved, StockReleased])
    found = 0
    async with store.transaction() as tx:
        events = event_store(tx)
        for sku in ("apple", "pear", "plum"):
            loaded = await Stock.load(tx, sku, lock=False)
            replayed = Stock(sku)
            for stored in await events.read_stream(tx, loaded.stream):
                replayed.apply(decoder.decode(stored))
                replayed.version = stored.version
            assert (loaded.on_hand, loaded.version) == (replayed.on_hand, replayed.version), sku
            found += await events.load_snapshot(tx, loaded.stream) is not None
    return found
