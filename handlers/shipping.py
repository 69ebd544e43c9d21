"""Shipping: ships paid orders; an address it does not serve fails the shipment."""

from __future__ import annotations

from contracts.shipping import OrderShipped, ShipOrder, ShippingFailed
from framework import Context, Service

__all__ = ["UNSERVED", "build_shipping"]

UNSERVED = frozenset({"Atlantis"})

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS shipping_shipments (
        order_id TEXT PRIMARY KEY,
        tracking_number TEXT NOT NULL
    )""",
)


def build_shipping() -> Service:
    """The shipping service."""
    shipping = Service("shipping", schema=SCHEMA, sends=[OrderShipped, ShippingFailed])

    @shipping.command(transactional=True)
    async def ship(cmd: ShipOrder, ctx: Context) -> None:
        if cmd.address in UNSERVED:
            await ctx.publish(
                ShippingFailed(order_id=cmd.order_id, reason=f"no delivery to {cmd.address}")
            )
            return
        tracking = f"TRK-{cmd.order_id}"
        await ctx.tx.execute(
            "INSERT INTO shipping_shipments (order_id, tracking_number) VALUES (?, ?) "
            "ON CONFLICT (order_id) DO NOTHING",
            cmd.order_id,
            tracking,
        )
        await ctx.publish(OrderShipped(order_id=cmd.order_id, tracking_number=tracking))

    return shipping
