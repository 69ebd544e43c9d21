"""The inventory service: reserving and releasing stock."""

from __future__ import annotations

from contracts.orders import LineItem
from framework.messages import Command, Event

__all__ = [
    "InventoryRejected",
    "InventoryReleased",
    "InventoryReserved",
    "ReleaseInventory",
    "ReserveInventory",
]


class InventoryReserved(Event):
    __wire_name__ = "inventory.inventory_reserved"

    order_id: str


class InventoryRejected(Event):
    __wire_name__ = "inventory.inventory_rejected"

    order_id: str
    reason: str


class InventoryReleased(Event):
    __wire_name__ = "inventory.inventory_released"

    order_id: str


class ReserveInventory(Command):
    __wire_name__ = "inventory.reserve_inventory"
    __replies__ = (InventoryReserved, InventoryRejected)

    order_id: str
    items: list[LineItem]


class ReleaseInventory(Command):
    __wire_name__ = "inventory.release_inventory"
    __replies__ = (InventoryReleased,)

    order_id: str
