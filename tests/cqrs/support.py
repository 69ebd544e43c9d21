"""Helpers of the CQRS tests: order events, the events of each saga outcome, a middleware that
counts handled messages, and the read model as plain rows."""

from __future__ import annotations

import asyncio
from typing import Any

from contracts.inventory import InventoryRejected, InventoryReleased, InventoryReserved
from contracts.orders import LineItem, OrderCancelled, OrderCompleted, OrderPlaced
from contracts.payment import PaymentCharged, PaymentDeclined, PaymentRefunded
from contracts.shipping import OrderShipped, ShippingFailed
from framework.messages import Event
from framework.middleware import Incoming, Next
from framework.store import Store


class Handled:
    """Consume middleware that counts handler calls that returned, so a test can await them."""

    def __init__(self) -> None:
        self.count = 0
        self._changed = asyncio.Condition()

    async def __call__(self, msg: Incoming, call_next: Next) -> Any:
        result = await call_next(msg)
        async with self._changed:
            self.count += 1
            self._changed.notify_all()
        return result

    async def wait_for(self, count: int, timeout: float = 20.0) -> None:
        """Wait until ``count`` handler calls have returned in total."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: self.count >= count)


def placed(order_id: str, customer_id: str, qty: int = 1) -> OrderPlaced:
    return OrderPlaced(
        order_id=order_id,
        customer_id=customer_id,
        items=[LineItem(sku="apple", qty=qty, unit_price_cents=100)],
        total_cents=qty * 100,
        address="1 Main St",
    )


def completed(order_id: str) -> OrderCompleted:
    return OrderCompleted(order_id=order_id)


def cancelled(order_id: str, reason: str) -> OrderCancelled:
    return OrderCancelled(order_id=order_id, reason=reason)


# How far an order got: an in-flight point, or how its saga ended (the reason it was cancelled).
OUTCOMES = (
    "placed",
    "reserved",
    "charged",
    "completed",
    "out of stock",
    "card declined",
    "no delivery",
)


def saga_events(order_id: str, customer_id: str, qty: int, outcome: str) -> list[Event]:
    """The events the shop publishes for an order up to ``outcome``, in the order it does.

    A shipping failure includes a resent refund, answered with 0 as the payment service does.
    """
    total = qty * 100
    reserved = InventoryReserved(order_id=order_id)
    charged = PaymentCharged(order_id=order_id, amount_cents=total, payment_id=f"pay-{order_id}")
    released = InventoryReleased(order_id=order_id)
    paths: dict[str, list[Event]] = {
        "placed": [],
        "reserved": [reserved],
        "charged": [reserved, charged],
        "completed": [
            reserved,
            charged,
            OrderShipped(order_id=order_id, tracking_number=f"TRK-{order_id}"),
            completed(order_id),
        ],
        "out of stock": [InventoryRejected(order_id=order_id, reason="out of stock: apple")],
        "card declined": [
            reserved,
            PaymentDeclined(order_id=order_id, reason="card declined: over limit"),
            released,
        ],
        "no delivery": [
            reserved,
            charged,
            ShippingFailed(order_id=order_id, reason="no delivery to Atlantis"),
            PaymentRefunded(order_id=order_id, amount_cents=total),
            PaymentRefunded(order_id=order_id, amount_cents=0),
            released,
        ],
    }
    events = [placed(order_id, customer_id, qty), *paths[outcome]]
    if outcome in ("out of stock", "card declined", "no delivery"):
        events.append(cancelled(order_id, outcome))
    return events


# What the read model shows of an order after each outcome, but for its total and reason:
# status, step, then charged and refunded as fractions of the total.
OUTCOME_ROWS: dict[str, tuple[str, str, int, int]] = {
    "placed": ("placed", "placed", 0, 0),
    "reserved": ("placed", "inventory_reserved", 0, 0),
    "charged": ("placed", "payment_charged", 1, 0),
    "completed": ("completed", "shipped", 1, 0),
    "out of stock": ("cancelled", "inventory_rejected", 0, 0),
    "card declined": ("cancelled", "inventory_released", 0, 0),
    "no delivery": ("cancelled", "inventory_released", 1, 1),
}


def outcome_row(
    order_id: str, customer_id: str, total: int, outcome: str, reason: str | None
) -> tuple[Any, ...]:
    """The ``read_model`` row of an order of ``total`` whose saga got to ``outcome``."""
    status, step, charged, refunded = OUTCOME_ROWS[outcome]
    return (order_id, customer_id, status, total, reason, step, charged * total, refunded * total)


def expected_row(order_id: str, customer_id: str, qty: int, outcome: str) -> tuple[Any, ...]:
    """The ``read_model`` row of an order whose ``saga_events`` up to ``outcome`` were applied."""
    reason = outcome if OUTCOME_ROWS[outcome][0] == "cancelled" else None
    return outcome_row(order_id, customer_id, qty * 100, outcome, reason)


async def read_model(store: Store) -> list[tuple[Any, ...]]:
    """Every order of ``orders_view`` with its ``order_steps`` row, ordered by order id.

    Columns: order id, customer, status, total, reason, step, charged, refunded (the last three
    None for an order with no step recorded).
    """
    async with store.transaction() as tx:
        return [
            tuple(row)
            for row in await tx.fetchall(
                "SELECT v.order_id, v.customer_id, v.status, v.total_cents, v.reason, s.step, "
                "s.charged_cents, s.refunded_cents FROM orders_view v "
                "LEFT JOIN order_steps s ON s.order_id = v.order_id ORDER BY v.order_id"
            )
        ]
