"""The orders service: placing, cancelling and reading orders."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from framework.messages import Command, Event, Query, Reply

__all__ = [
    "CancelOrder",
    "GetOrder",
    "LineItem",
    "ListOrders",
    "OrderCancelled",
    "OrderCompleted",
    "OrderFailed",
    "OrderList",
    "OrderPlaced",
    "OrderStatus",
    "OrderStep",
    "OrderView",
    "PlaceOrder",
]

Quantity = Annotated[int, msgspec.Meta(ge=1, le=10_000)]
Cents = Annotated[int, msgspec.Meta(ge=0)]
OrderStatus = Literal["placed", "reserved", "paid", "shipped", "completed", "cancelled", "failed"]
# The order saga's steps as the read model sees them: the last event of the order it projected.
# Forward steps first, then the failures, then the compensations (``handlers.orders`` ranks them
# in this order and never moves an order back).
OrderStep = Literal[
    "placed",
    "inventory_reserved",
    "payment_charged",
    "shipped",
    "inventory_rejected",
    "payment_declined",
    "shipping_failed",
    "payment_refunded",
    "inventory_released",
]


class LineItem(msgspec.Struct, frozen=True, kw_only=True):
    sku: str
    qty: Quantity
    unit_price_cents: Cents


class PlaceOrder(Command):
    __wire_name__ = "orders.place_order"

    order_id: str
    customer_id: str
    items: list[LineItem]
    address: str


class CancelOrder(Command):
    __wire_name__ = "orders.cancel_order"

    order_id: str
    reason: str


class OrderPlaced(Event):
    __wire_name__ = "orders.order_placed"

    order_id: str
    customer_id: str
    items: list[LineItem]
    total_cents: Cents
    address: str


class OrderCompleted(Event):
    __wire_name__ = "orders.order_completed"

    order_id: str


class OrderCancelled(Event):
    __wire_name__ = "orders.order_cancelled"

    order_id: str
    reason: str


class OrderFailed(Event):
    __wire_name__ = "orders.order_failed"

    order_id: str
    reason: str


class OrderView(Reply):
    """An order in the read model: its final status once it has one, and the saga's step.

    ``step``, ``charged_cents`` and ``refunded_cents`` came later, with defaults, so older
    readers and writers of this reply keep working.
    """

    __wire_name__ = "orders.order_view"

    order_id: str
    customer_id: str
    status: OrderStatus
    total_cents: Cents
    reason: str | None = None
    step: OrderStep = "placed"
    charged_cents: Cents = 0
    refunded_cents: Cents = 0


class GetOrder(Query[OrderView]):
    __wire_name__ = "orders.get_order"

    order_id: str


class OrderList(Reply):
    __wire_name__ = "orders.order_list"

    orders: list[OrderView]


class ListOrders(Query[OrderList]):
    """Orders of the read model, by customer, status and saga step, ordered by order id."""

    __wire_name__ = "orders.list_orders"

    customer_id: str | None = None
    status: OrderStatus | None = None
    step: OrderStep | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100
