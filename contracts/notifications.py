"""The notifications service."""

from __future__ import annotations

from typing import Literal

from framework.messages import Command, Event

__all__ = ["CustomerNotified", "NotifyCustomer"]


class NotifyCustomer(Command):
    __wire_name__ = "notifications.notify_customer"

    customer_id: str
    order_id: str
    template: Literal["order_confirmed", "order_shipped", "order_cancelled", "order_failed"]


class CustomerNotified(Event):
    __wire_name__ = "notifications.customer_notified"

    customer_id: str
    order_id: str
    template: str
