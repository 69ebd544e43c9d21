"""The inventory service: reserving and releasing stock.

The service is event-sourced: the events below are the ones its aggregates store, and it
publishes each of them as it stores it.
"""

from __future__ import annotations

from contracts.orders import LineItem
from framework.messages import Command, Event

__all__ = [
    "InventoryRejected",
    "InventoryReleased",
    "InventoryReserved",
    "ReleaseInventory",
    "ReserveInventory",
    "StockReceived",
    "StockReleased",
    "StockReserved",
]


class InventoryReserved(Event):
    __wire_name__ = "inventory.inventory_reserved"

    order_id: str
    # What is held, so that the release gives back exactly that (optional: added later).
    items: list[LineItem] = []


class InventoryRejected(Event):
    __wire_name__ = "inventory.inventory_rejected"

    order_id: str
    reason: str


class InventoryReleased(Event):
    __wire_name__ = "inventory.inventory_released"

    order_id: str


class StockReceived(Event):
    """Stock of a SKU arrived (the shop's starting stock is received on first use)."""

    __wire_name__ = "inventory.stock_received"

    sku: str
    qty: int


class StockReserved(Event):
    """Stock of a SKU is held for an order."""

    __wire_name__ = "inventory.stock_reserved"

    sku: str
    order_id: str
    qty: int


class StockReleased(Event):
    """Stock an order held is back on hand."""

    __wire_name__ = "inventory.stock_released"

    sku: str
    order_id: str
    qty: int


class ReserveInventory(Command):
    __wire_name__ = "inventory.reserve_inventory"
    __replies__ = (InventoryReserved, InventoryRejected)

    order_id: str
    items: list[LineItem]


class ReleaseInventory(Command):
    __wire_name__ = "inventory.release_inventory"
    __replies__ = (InventoryReleased,)

    order_id: str
