"""The reference shop end to end on both transports: every order ends well, invariants hold."""

from __future__ import annotations

from pathlib import Path

from examples.shop import check_invariants, make_orders, place, wait_for_sagas
from framework import AppConfig
from framework.store import SagaStatus
from handlers.app import build_app
from tests.app.conftest import Backend


async def test_shop_orders_end_and_invariants_hold(backend: Backend, tmp_path: Path) -> None:
    """Sixty orders with the failure mix all finish and the shop's invariants hold."""
    app = build_app(db_url=f"sqlite:///{tmp_path}/shop.db", config=AppConfig(prefix=backend.prefix))
    app.use_transport(backend.transport())
    orders = make_orders("t", 60, seed=3)
    assert app.store is not None
    async with app:
        await place(app, orders)
        records = await wait_for_sagas(app.store, "t", len(orders), deadline=90)
        problems = await check_invariants(app.store, orders, records)
    assert problems == []
    statuses = {r.status for r in records}
    assert statuses <= {SagaStatus.COMPLETED, SagaStatus.COMPENSATED}
    reasons = " ".join(r.reason or "" for r in records)
    assert "out of stock" in reasons
    assert "card declined" in reasons
    assert "no delivery to Atlantis" in reasons
