"""The reference shop end to end on both transports: every order ends well, invariants hold."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from contracts.inventory import InventoryReserved, StockReceived, StockReserved
from contracts.orders import PlaceOrder
from examples.shop import check_invariants, make_orders, place, wait_for_sagas
from framework import AppConfig
from framework.eventsourcing import EventDecoder, event_store
from framework.store import SagaStatus, Store
from handlers.app import DEFAULT_STOCK, build_app
from handlers.inventory import Reservation, Stock
from tests.app.conftest import Backend


async def test_shop_orders_end_and_invariants_hold(backend: Backend, tmp_path: Path) -> None:
    """Sixty orders with the failure mix all finish, the shop's invariants hold, and the
    event-sourced inventory's streams read back into what happened."""
    app = build_app(db_url=f"sqlite:///{tmp_path}/shop.db", config=AppConfig(prefix=backend.prefix))
    app.use_transport(backend.transport())
    orders = make_orders("t", 60, seed=3)
    assert app.store is not None
    async with app:
        await place(app, orders)
        records = await wait_for_sagas(app.store, "t", len(orders), deadline=90)
        problems = await check_invariants(app.store, orders, records)
        done = {r.saga_id.removeprefix("order-"): r.status for r in records}
        shipped = {oid for oid, status in done.items() if status is SagaStatus.COMPLETED}
        await check_inventory_streams(app.store, orders, shipped)
    assert problems == []
    statuses = {r.status for r in records}
    assert statuses <= {SagaStatus.COMPLETED, SagaStatus.COMPENSATED}
    reasons = " ".join(r.reason or "" for r in records)
    assert "out of stock" in reasons
    assert "card declined" in reasons
    assert "no delivery to Atlantis" in reasons


async def check_inventory_streams(
    store: Store, orders: list[PlaceOrder], shipped: set[str]
) -> None:
    """Each order's reservation and each SKU's stock, loaded from their streams, agree with
    the outcome of every order."""
    held: Counter[str] = Counter()
    decoder = EventDecoder([InventoryReserved, StockReceived, StockReserved])
    async with store.transaction() as tx:
        events = event_store(tx)
        for order in orders:
            reservation = await Reservation.load(tx, order.order_id, lock=False)
            if order.order_id in shipped:
                assert reservation.status == "reserved", order.order_id
                assert reservation.items == order.items
                for item in order.items:
                    held[item.sku] += item.qty
                [reserved] = await events.read_stream(tx, reservation.stream)
                assert decoder.decode(reserved) == InventoryReserved(
                    order_id=order.order_id, items=order.items
                )
            else:  # stock-out: rejected; declined or undeliverable: reserved, then released
                assert reservation.status in ("rejected", "released"), order.order_id
        for sku in ("apple", "pear", "plum"):
            stock = await Stock.load(tx, sku, lock=False)
            assert stock.on_hand == DEFAULT_STOCK[sku] - held[sku], sku
            stream = await events.read_stream(tx, stock.stream)
            assert [e.version for e in stream] == list(range(1, len(stream) + 1))
            assert decoder.decode(stream[0]) == StockReceived(sku=sku, qty=DEFAULT_STOCK[sku])
        assert (await Stock.load(tx, "discontinued", lock=False)).on_hand == 0
