"""The main job: run the shop, place a batch of orders, and report how each one ended."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass

from contracts.orders import GetOrder, LineItem, OrderView, PlaceOrder
from framework import App, AppConfig
from handlers.app import Shop, build_app
from handlers.orders import TERMINAL

__all__ = ["DemoResult", "demo_orders", "run_demo"]


@dataclass(frozen=True)
class DemoResult:
    views: list[OrderView]
    seconds: float

    def counts(self) -> Counter[str]:
        return Counter(v.status for v in self.views)


def demo_orders(n: int) -> list[PlaceOrder]:
    """``n`` orders: most succeed; some are declined, out of stock or unshippable."""
    orders = []
    for i in range(n):
        items = [LineItem(sku="apple", qty=1 + i % 3, unit_price_cents=250)]
        address = "1 Main St"
        if i % 10 == 3:
            items.append(LineItem(sku="rare-truffle", qty=1, unit_price_cents=9_000))
        if i % 10 == 6:
            items = [LineItem(sku="pear", qty=50, unit_price_cents=5_000)]  # over the card limit
        if i % 10 == 8:
            address = "Atlantis"
        orders.append(
            PlaceOrder(
                order_id=f"order-{i:04d}", customer_id=f"cust-{i % 7}", items=items, address=address
            )
        )
    return orders


async def run_demo(app: App, shop: Shop, *, n: int = 20, deadline: float = 30.0) -> DemoResult:
    """Place ``n`` orders through ``app`` and wait until each reaches a final status."""
    started = time.perf_counter()
    orders = demo_orders(n)
    await asyncio.gather(*(app.send(order) for order in orders))
    pending = {o.order_id for o in orders}
    views: dict[str, OrderView] = {}
    async with asyncio.timeout(deadline):
        while pending:
            replies = await asyncio.gather(
                *(app.request(GetOrder(order_id=oid)) for oid in sorted(pending)),
                return_exceptions=True,
            )
            for reply in replies:
                if isinstance(reply, OrderView) and reply.status in TERMINAL:
                    views[reply.order_id] = reply
                    pending.discard(reply.order_id)
            if pending:
                await asyncio.sleep(0.05)
    return DemoResult([views[o.order_id] for o in orders], time.perf_counter() - started)


async def _main() -> None:
    app, shop = build_app("memory://", config=AppConfig(prefix="shop"))
    async with app:
        result = await run_demo(app, shop, n=20)
    print(f"{'order':<12} {'status':<10} {'total':>9}  reason")
    for view in result.views:
        total = view.total_cents / 100
        print(f"{view.order_id:<12} {view.status:<10} {total:>9.2f}  {view.reason or ''}")
    counts = ", ".join(f"{k}={v}" for k, v in sorted(result.counts().items()))
    print(f"\n{len(result.views)} orders in {result.seconds:.2f}s: {counts}")
    print(
        f"notifications sent: {len(shop.outbox.sent)}; stock of apple left: "
        f"{shop.stock.on_hand['apple']}"
    )


def main() -> None:
    from framework.logging import configure_logging

    configure_logging(level="warning")
    asyncio.run(_main())
