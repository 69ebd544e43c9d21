"""The shipping service."""

from __future__ import annotations

from framework.messages import Command, Event

__all__ = ["OrderShipped", "ShipOrder", "ShippingFailed"]


class OrderShipped(Event):
    __wire_name__ = "shipping.order_shipped"

    order_id: str
    tracking_number: str


class ShippingFailed(Event):
    __wire_name__ = "shipping.shipping_failed"

    order_id: str
    reason: str


class ShipOrder(Command):
    __wire_name__ = "shipping.ship_order"
    __replies__ = (OrderShipped, ShippingFailed)

    order_id: str
    address: str
