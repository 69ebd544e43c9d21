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
    "OrderView",
    "PlaceOrder",
]

Quantity = Annotated[int, msgspec.Meta(ge=1, le=10_000)]
Cents = Annotated[int, msgspec.Meta(ge=0)]
OrderStatus = Literal["placed", "reserved", "paid", "shipped", "completed", "cancelled", "failed"]


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
    __wire_name__ = "orders.order_view"

    order_id: str
    customer_id: str
    status: OrderStatus
    total_cents: Cents
    reason: str | None = None


class GetOrder(Query[OrderView]):
    __wire_name__ = "orders.get_order"

    order_id: str


class OrderList(Reply):
    __wire_name__ = "orders.order_list"

    orders: list[OrderView]


class ListOrders(Query[OrderList]):
    """Orders of the read model, by customer, by status or both, ordered by order id."""

    __wire_name__ = "orders.list_orders"

    customer_id: str | None = None
    status: OrderStatus | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100
