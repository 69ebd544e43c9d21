"""Shipping: ships paid orders; an address it does not serve fails the shipment.

An order ships at most once: its shipment is a row keyed by its id, written with ``INSERT ...
ON CONFLICT DO NOTHING``, and the answer comes from the row that is there. A ``ShipOrder`` sent
again (a new message id, the same order) ships nothing more and answers with the same tracking
number; two copies handled at once never fail on the key.
"""

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
        if cmd.address not in UNSERVED:
            await ctx.tx.execute(
                "INSERT INTO shipping_shipments (order_id, tracking_number) VALUES (?, ?) "
                "ON CONFLICT (order_id) DO NOTHING",
                cmd.order_id,
                f"TRK-{cmd.order_id}",
            )
        # The stored shipment answers, this one's or an earlier copy's.
        row = await ctx.tx.fetchone(
            "SELECT tracking_number FROM shipping_shipments WHERE order_id = ?", cmd.order_id
        )
        if row is None:
            await ctx.publish(
                ShippingFailed(order_id=cmd.order_id, reason=f"no delivery to {cmd.address}")
            )
        else:
            await ctx.publish(OrderShipped(order_id=cmd.order_id, tracking_number=row[0]))

    return shipping
