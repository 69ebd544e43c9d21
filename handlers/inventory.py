"""Inventory: reserves stock for orders and releases it again."""

from __future__ import annotations

from dataclasses import dataclass, field

from contracts.inventory import (
    InventoryRejected,
    InventoryReleased,
    InventoryReserved,
    ReleaseInventory,
    ReserveInventory,
)
from framework import Context, Service

__all__ = ["Stock", "build_inventory"]


@dataclass
class Stock:
    """Units on hand per SKU and what each order holds."""

    on_hand: dict[str, int] = field(default_factory=dict)
    reservations: dict[str, dict[str, int]] = field(default_factory=dict)


def build_inventory(stock: Stock) -> Service:
    """The inventory service over ``stock``."""
    inventory = Service("inventory")

    @inventory.command
    async def reserve(cmd: ReserveInventory, ctx: Context) -> None:
        if cmd.order_id not in stock.reservations:
            wanted: dict[str, int] = {}
            for item in cmd.items:
                wanted[item.sku] = wanted.get(item.sku, 0) + item.qty
            short = sorted(s for s, n in wanted.items() if stock.on_hand.get(s, 0) < n)
            if short:
                await ctx.publish(
                    InventoryRejected(
                        order_id=cmd.order_id, reason=f"out of stock: {', '.join(short)}"
                    )
                )
                return
            for sku, n in wanted.items():
                stock.on_hand[sku] -= n
            stock.reservations[cmd.order_id] = wanted
        await ctx.publish(InventoryReserved(order_id=cmd.order_id))

    @inventory.command
    async def release(cmd: ReleaseInventory, ctx: Context) -> None:
        held = stock.reservations.pop(cmd.order_id, None)
        if held is None:
            return  # never reserved, or released already
        for sku, n in held.items():
            stock.on_hand[sku] = stock.on_hand.get(sku, 0) + n
        await ctx.publish(InventoryReleased(order_id=cmd.order_id))

    return inventory
