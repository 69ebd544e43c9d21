"""The choreographed order flow (``handlers.choreography``): every order ends as its contents
say under the orchestrated shop's invariants, on memory + SQLite and on RabbitMQ + PostgreSQL;
the services join events that arrive in either order; the order trail shows what happened."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import contracts
from contracts.inventory import InventoryReleased, InventoryReserved
from contracts.orders import LineItem, OrderPlaced, PlaceOrder
from contracts.payment import PaymentDeclined
from contracts.trail import GetOrderTrail, ListOrderTrails
from examples.shop import (
    check_invariants,
    expected_outcome,
    make_orders,
    place,
    wait_for_orders,
    wait_ready,
)
from framework import App, AppConfig
from framework.schema import ContractSet
from framework.store import Store, store_from_url
from handlers.app import build_app
from handlers.choreography import build_choreography_app
from handlers.choreography.__main__ import run as trail_cli
from handlers.choreography.orders import build_orders
from handlers.choreography.payment import build_payment
from handlers.gateway import FakeGateway
from tests.app.conftest import Backend
from tests.handlers.conftest import UPGRADE_DB
from tests.saga.conftest import eventually
from tests.test_worker import Leveret


def choreographed(backend: Backend, db_url: str, gateway: FakeGateway | None = None) -> App:
    """The choreographed shop on the test's broker, database and prefix."""
    return build_choreography_app(
        db_url=db_url,
        config=AppConfig(prefix=backend.prefix, **UPGRADE_DB),
        transport=backend.transport(),
        gateway=gateway,
    )


async def test_choreographed_orders_end_as_their_contents_say(
    servers: tuple[Backend, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Forty orders with the shop's failure mix end as their contents say with no coordinator,
    the orchestrated shop's invariants hold (money, stock, notifications, read model), the
    gateway holds exactly what payment stored, and the order trail tells each order's story."""
    backend, db_url = servers
    gateway = FakeGateway()
    app = choreographed(backend, db_url, gateway)
    orders = make_orders("c", 40, seed=3)
    assert app.store is not None
    async with app:
        await place(app, orders)
        ends = await wait_for_orders(app.store, "c", len(orders), deadline=60)
        problems = await check_invariants(app.store, orders, ends, settle=20)
        by_order = {e.order_id: e for e in ends}
        failed_shipping = next(o for o in orders if o.address == "Atlantis").order_id
        await eventually(
            lambda: _trail_ended(app, failed_shipping), what="the trail of a failed shipment"
        )
        trail = await app.request(GetOrderTrail(order_id=failed_shipping))
        stalled = await app.request(ListOrderTrails(status="placed", idle_seconds=0))
    assert problems == []
    assert {o.order_id: expected_outcome(o) for o in orders} == {
        oid: e.outcome for oid, e in by_order.items()
    }
    assert set(Counter(e.outcome for e in ends)) == {
        "completed",
        "compensated: stock-out",
        "compensated: card declined",
        "compensated: shipping failed",
    }
    for order in orders:
        assert gateway.net_cents(order.order_id) == (
            sum(i.qty * i.unit_price_cents for i in order.items)
            if by_order[order.order_id].completed
            else 0
        )
    # The compensations ran upstream, in reverse: refund, then release, then the order ended.
    assert [entry.event for entry in trail.entries] == [
        "orders.order_placed",
        "inventory.inventory_reserved",
        "payment.payment_charged",
        "shipping.shipping_failed",
        "payment.payment_refunded",
        "inventory.inventory_released",
        "orders.order_cancelled",
        "notifications.customer_notified",
    ]
    assert trail.status == "cancelled"
    assert [o.order_id for o in stalled.orders if o.order_id.startswith("c-")] == []
    # The operator's command line reads the same trail from the database.
    assert await trail_cli(["--db-url", db_url, "show", failed_shipping]) == 0
    shown = capsys.readouterr().out
    assert f"order {failed_shipping}: cancelled" in shown
    assert shown.index("payment.payment_refunded") < shown.index("inventory.inventory_released")
    assert await trail_cli(["--db-url", db_url, "list", "--status", "placed"]) == 0
    assert capsys.readouterr().out.endswith("0 order(s)\n")
    assert await trail_cli(["--db-url", db_url, "show", "no-such-order"]) == 1


async def _trail_ended(app: App, order_id: str) -> bool:
    trail = await app.request(GetOrderTrail(order_id=order_id))
    return trail.entries[-1].event == "notifications.customer_notified"


async def test_joins_act_once_whichever_event_comes_first(tmp_path: Path, prefix: str) -> None:
    """Payment charges once it has both OrderPlaced and InventoryReserved, whichever came
    first; orders cancels a declined order once both the decline and the release are in, also
    when the release comes first, with the decline's reason."""
    gateway = FakeGateway()
    app = App(
        [build_orders(), build_payment(gateway=gateway)],
        transport=Backend("memory", prefix, None).transport(),
        config=AppConfig(prefix=prefix),
        db_url=f"sqlite:///{tmp_path}/joins.db",
        contracts=contracts.ALL,
    )
    item = LineItem(sku="apple", qty=2, unit_price_cents=250)
    placed = OrderPlaced(
        order_id="o-1", customer_id="cust", items=[item], total_cents=500, address="1 Main St"
    )
    assert app.store is not None
    store = app.store
    async with app:
        await app.publish(InventoryReserved(order_id="o-1", items=[item]))
        await eventually(
            lambda: _row(store, "SELECT reserved FROM payment_orders WHERE order_id = 'o-1'"),
            what="payment saw the reservation",
        )
        assert gateway.calls["charge"] == 0  # half an order: nothing to charge yet
        await app.publish(placed)
        await eventually(lambda: "o-1" in gateway.charged, what="the charge of o-1")
        # Only the orders service runs: the order stays placed until the events below.
        await app.send(PlaceOrder(order_id="o-2", customer_id="c", items=[item], address="x"))
        await eventually(
            lambda: _row(store, "SELECT 1 FROM order_flow WHERE order_id = 'o-2'"), what="o-2"
        )
        await app.publish(InventoryReleased(order_id="o-2"))
        await eventually(
            lambda: _row(store, "SELECT 1 FROM order_flow WHERE order_id = 'o-2' AND released = 1"),
            what="orders saw the release",
        )
        assert await _row(store, "SELECT status FROM order_flow WHERE order_id = 'o-2'") == (
            "placed",
        )
        await app.publish(PaymentDeclined(order_id="o-2", reason="card declined: test"))
        await eventually(
            lambda: _row(store, "SELECT 1 FROM order_flow WHERE status = 'cancelled'"),
            what="o-2 cancelled",
        )
        flow = await _row(store, "SELECT status, reason FROM order_flow WHERE order_id = 'o-2'")
        charges = await _row(store, "SELECT COUNT(*), SUM(amount_cents) FROM payment_charges")
    assert gateway.calls["charge"] == 1
    assert charges == (1, 500)
    assert flow == ("cancelled", "card declined: test")


async def _row(store: Store, sql: str) -> tuple[Any, ...] | None:
    async with store.transaction() as tx:
        return await tx.fetchone(sql)


@pytest.mark.slow
async def test_leveret_run_serves_the_choreography_on_rabbitmq(
    amqp_url: str, prefix: str, tmp_path: Path
) -> None:
    """`leveret run handlers.choreography:app --workers 2` on RabbitMQ: orders placed from
    another process all end as their contents say, and the invariants hold."""
    db_url = f"sqlite:///{tmp_path / 'shop.db'}"
    env = {
        "LEVERET_SHOP_DB_URL": db_url,
        "LEVERET_SHOP_PREFIX": prefix,
        "LEVERET_LOG_LEVEL": "warning",
    }
    args = ["handlers.choreography:app", "--workers", "2", "--amqp-url", amqp_url, "--upgrade-db"]
    leveret = Leveret(tmp_path, args, env)
    store = store_from_url(db_url)
    client = App([], url=amqp_url, config=AppConfig(prefix=prefix), contracts=contracts.ALL)
    orders = make_orders("w", 30, seed=3)
    try:
        await wait_ready(store, client, deadline=30)
        await place(client, orders)
        ends = await wait_for_orders(store, "w", len(orders), deadline=60)
        problems = await check_invariants(store, orders, ends, settle=20)
        trail = await client.request(ListOrderTrails(limit=1000))
    finally:
        await client.stop(grace=0)
        await store.close()
        leveret.kill_everything()
    assert problems == []
    assert {e.order_id: e.outcome for e in ends} == {
        o.order_id: expected_outcome(o) for o in orders
    }
    assert {o.order_id for o in trail.orders} >= {o.order_id for o in orders}


def test_the_shop_snapshots_cover_the_choreographed_contracts() -> None:
    """Every contract the choreographed app reads or writes is one of the shop app's, whose
    snapshots `leveret contracts check handlers.app:app` compares in CI."""
    choreography = set(ContractSet.from_app(build_choreography_app()).types)
    trail = {c for c in contracts.ALL if c.__module__ == "contracts.trail"}
    assert trail
    assert trail <= choreography
    assert choreography <= set(ContractSet.from_app(build_app()).types)
