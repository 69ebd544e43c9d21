"""ListOrders and GetOrder over request/reply on both transports, answered from the projected
read model with each order's saga step."""

from __future__ import annotations

from pathlib import Path

from contracts.orders import GetOrder, ListOrders, OrderView
from framework import App, AppConfig
from framework.store import store_from_url
from handlers.orders import build_read_side
from tests.app.conftest import Backend
from tests.cqrs.support import Handled, saga_events


async def test_list_orders_by_customer_status_and_step(backend: Backend, tmp_path: Path) -> None:
    """ListOrders filters the read model by customer, status, step or all of them, ordered by
    order id; each order shows the step its saga reached and what it was charged and refunded."""
    store = store_from_url(f"sqlite:///{tmp_path}/view.db")
    handled = Handled()
    app = App(
        [build_read_side(store)],
        transport=backend.transport(),
        store=store,
        config=AppConfig(prefix=backend.prefix),
        middleware=[handled],
    )
    events = [
        *saga_events("o-1", "c-1", 1, "completed"),
        *saga_events("o-2", "c-2", 2, "card declined"),
        *saga_events("o-3", "c-1", 3, "charged"),
        *saga_events("o-4", "c-2", 4, "no delivery"),
    ]
    async with app:
        for event in events:
            await app.publish(event)
        await handled.wait_for(len(events))

        by_customer = await app.request(ListOrders(customer_id="c-1"), timeout=10)
        assert by_customer.orders == [
            OrderView(
                order_id="o-1",
                customer_id="c-1",
                status="completed",
                total_cents=100,
                step="shipped",
                charged_cents=100,
            ),
            OrderView(
                order_id="o-3",
                customer_id="c-1",
                status="placed",
                total_cents=300,
                step="payment_charged",
                charged_cents=300,
            ),
        ]
        by_status = await app.request(ListOrders(status="cancelled"), timeout=10)
        assert by_status.orders == [
            OrderView(
                order_id="o-2",
                customer_id="c-2",
                status="cancelled",
                total_cents=200,
                reason="card declined",
                step="inventory_released",
            ),
            OrderView(
                order_id="o-4",
                customer_id="c-2",
                status="cancelled",
                total_cents=400,
                reason="no delivery",
                step="inventory_released",
                charged_cents=400,
                refunded_cents=400,
            ),
        ]
        both = await app.request(ListOrders(customer_id="c-1", status="placed"), timeout=10)
        assert [o.order_id for o in both.orders] == ["o-3"]
        by_step = await app.request(ListOrders(step="inventory_released"), timeout=10)
        assert [o.order_id for o in by_step.orders] == ["o-2", "o-4"]
        charging = await app.request(
            ListOrders(customer_id="c-1", step="payment_charged"), timeout=10
        )
        assert [o.order_id for o in charging.orders] == ["o-3"]
        assert (await app.request(ListOrders(step="placed"), timeout=10)).orders == []
        limited = await app.request(ListOrders(limit=2), timeout=10)
        assert [o.order_id for o in limited.orders] == ["o-1", "o-2"]
        assert (await app.request(ListOrders(customer_id="nobody"), timeout=10)).orders == []
        assert await app.request(GetOrder(order_id="o-1"), timeout=10) == by_customer.orders[0]
