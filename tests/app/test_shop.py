"""The reference shop end to end, on both transports."""

from __future__ import annotations

from framework import AppConfig
from handlers.app import build_app
from handlers.demo import run_demo
from tests.app.conftest import Backend


async def test_shop_orders_reach_their_final_status(backend: Backend) -> None:
    """Twenty orders complete or fail for the right reason, with stock and refunds consistent."""
    app, shop = build_app(config=AppConfig(prefix=backend.prefix))
    app.transport = app.bus.transport = backend.transport()
    async with app:
        result = await run_demo(app, shop, n=20, deadline=60)
    counts = result.counts()
    assert counts == {"completed": 15, "failed": 5}
    reasons = sorted(v.reason or "" for v in result.views if v.status == "failed")
    assert reasons == sorted(
        ["amount over card limit"] * 2
        + ["no delivery to Atlantis"] * 2
        + ["out of stock: rare-truffle"]
    )
    # Declined and unshippable orders gave their stock back; shipped ones keep it reserved.
    completed = [int(v.order_id.split("-")[1]) for v in result.views if v.status == "completed"]
    assert shop.stock.on_hand["apple"] == 1_000 - sum(1 + i % 3 for i in completed)
    assert set(shop.ledger.refunds) == {"order-0008", "order-0018"}
