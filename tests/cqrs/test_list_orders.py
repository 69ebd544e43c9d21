"""ListOrders over request/reply on both transports, answered from the projected read model."""

from __future__ import annotations

from pathlib import Path

from contracts.orders import ListOrders, OrderView
from framework import App, AppConfig
from framework.store import store_from_url
from handlers.orders import build_read_side
from tests.app.conftest import Backend
from tests.cqrs.support import Handled, cancelled, completed, placed


async def test_list_orders_by_customer_and_status(backend: Backend, tmp_path: Path) -> None:
    """ListOrders filters the read model by customer, by status or both, ordered by order id."""
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
        placed("o-1", "c-1", 1),
        placed("o-2", "c-2", 2),
        placed("o-3", "c-1", 3),
        completed("o-1"),
        cancelled("o-2", "card declined"),
    ]
    async with app:
        for event in events:
            await app.publish(event)
        await handled.wait_for(len(events))

        by_customer = await app.request(ListOrders(customer_id="c-1"), timeout=10)
        assert by_customer.orders == [
            OrderView(order_id="o-1", customer_id="c-1", status="completed", total_cents=100),
            OrderView(order_id="o-3", customer_id="c-1", status="placed", total_cents=300),
        ]
        by_status = await app.request(ListOrders(status="cancelled"), timeout=10)
        assert by_status.orders == [
            OrderView(
                order_id="o-2",
                customer_id="c-2",
                status="cancelled",
                total_cents=200,
                reason="card declined",
            )
        ]
        both = await app.request(ListOrders(customer_id="c-1", status="placed"), timeout=10)
        assert [o.order_id for o in both.orders] == ["o-3"]
        limited = await app.request(ListOrders(limit=2), timeout=10)
        assert [o.order_id for o in limited.orders] == ["o-1", "o-2"]
        assert (await app.request(ListOrders(customer_id="nobody"), timeout=10)).orders == []
