"""The reference shop's contracts, checked through leveret's pytest plugin fixtures."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import contracts
from contracts.orders import GetOrder, OrderView
from examples.shop import make_orders
from framework.store import SagaStatus
from framework.testing.pytest_plugin import RoundTrip
from handlers.app import build_app

PAYLOADS = Path(__file__).resolve().parents[1] / "data" / "payloads"


def test_shop_contracts_are_compatible_with_their_snapshots(
    leveret_compatible: Callable[..., Any],
) -> None:
    """The shop app matches contracts/schemas by name and as an object, in the strictest mode."""
    assert leveret_compatible("handlers.app:app").ok
    app = build_app()
    report = leveret_compatible(app, mode="full", transitive=True)
    assert report.notes == ()  # the committed snapshots are current


def test_old_shop_payloads_still_decode(leveret_round_trip: RoundTrip) -> None:
    """Every payload fixture decodes into the version the shop reads today and round-trips."""
    app = build_app()
    decoded = leveret_round_trip.files(app, PAYLOADS)
    assert len(decoded) == len(list(PAYLOADS.glob("*.json")))
    wire_names = {type(m).__wire_name__ for m in decoded.values()}
    assert wire_names == {c.__wire_name__ for c in contracts.ALL}
    legacy = decoded[PAYLOADS / "orders.order_view.v1.legacy-client.json"]
    assert legacy == OrderView(
        order_id="order-0002",
        customer_id="cust-2",
        status="failed",
        total_cents=0,
        reason="out of stock: rare-truffle",
    )


def test_shop_examples_round_trip(leveret_round_trip: RoundTrip) -> None:
    """Example orders, a query and a reply encode and decode to themselves."""
    app = build_app()
    examples = [
        *make_orders("t", 10, seed=1),
        GetOrder(order_id="order-0001"),
        OrderView(order_id="o", customer_id="c", status="paid", total_cents=5, reason=None),
    ]
    assert leveret_round_trip(app, *examples) == examples


async def test_every_message_the_shop_emits_fits_its_consumers(
    leveret_harness: Callable[..., Any], tmp_path: Path
) -> None:
    """Forty orders on the harness: each emitted message is read by all its handlers, and each
    service emits only what it declares in Service(sends=...)."""
    app = build_app(db_url=f"sqlite:///{tmp_path}/shop.db")
    orders = make_orders("h", 40, seed=5)
    async with leveret_harness(app) as harness:
        for order in orders:
            await app.send(order)
        await harness.settle(timeout=30)
        assert app.store is not None
        records = await app.store.list_sagas(saga="order", limit=100)
    assert len(records) == len(orders)
    assert {r.status for r in records} == {SagaStatus.COMPLETED, SagaStatus.COMPENSATED}
    harness.assert_consumers_accept()
    by_service = Counter(c.emitter for c in harness.captured)
    assert set(by_service) == {None, "orders", "inventory", "payment", "shipping", "notifications"}
    assert by_service[None] == len(orders)
    emitted = {c.wire_name for c in harness.emitted_by("payment")}
    assert emitted == {
        "payment.payment_charged",
        "payment.payment_declined",
        "payment.payment_refunded",
    }
