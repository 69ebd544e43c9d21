"""Shipping, choreographed: ships an order once it is paid; an address it does not serve fails.

Shipping needs the address (from ``OrderPlaced``) and the go-ahead (``PaymentCharged``); as
payment does, it keeps what it has seen of each order in ``shipping_orders`` and ships in
whichever handler completes the pair, deciding once. Shipments go into the same
``shipping_shipments`` table as the orchestrated shop's. ``ShippingFailed`` makes payment refund.
"""

from __future__ import annotations

from contracts.orders import OrderPlaced
from contracts.payment import PaymentCharged
from contracts.shipping import OrderShipped, ShippingFailed
from framework import Context, Service
from handlers.shipping import UNSERVED

__all__ = ["build_shipping"]

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS shipping_orders (
        order_id TEXT PRIMARY KEY,
        address TEXT,
        paid INTEGER NOT NULL DEFAULT 0,
        decided INTEGER NOT NULL DEFAULT 0
    )""",
    """CREATE TABLE IF NOT EXISTS shipping_shipments (
        order_id TEXT PRIMARY KEY,
        tracking_number TEXT NOT NULL
    )""",
)


def build_shipping() -> Service:
    """The choreographed shipping service."""
    shipping = Service("shipping", schema=SCHEMA, sends=[OrderShipped, ShippingFailed])

    async def ship_if_ready(ctx: Context, order_id: str) -> None:
        row = await ctx.tx.fetchone(
            "UPDATE shipping_orders SET decided = 1 WHERE order_id = ? AND decided = 0 "
            "AND paid = 1 AND address IS NOT NULL RETURNING address",
            order_id,
        )
        if row is None:  # the other half has not come yet, or the order is decided
            return
        if row[0] in UNSERVED:
            await ctx.publish(ShippingFailed(order_id=order_id, reason=f"no delivery to {row[0]}"))
            return
        tracking = f"TRK-{order_id}"
        await ctx.tx.execute(
            "INSERT INTO shipping_shipments (order_id, tracking_number) VALUES (?, ?)",
            order_id,
            tracking,
        )
        await ctx.publish(OrderShipped(order_id=order_id, tracking_number=tracking))

    @shipping.event(transactional=True)
    async def order_placed(evt: OrderPlaced, ctx: Context) -> None:
        await ctx.tx.execute(
            "INSERT INTO shipping_orders (order_id, address) VALUES (?, ?) "
            "ON CONFLICT (order_id) DO UPDATE SET address = excluded.address",
            evt.order_id,
            evt.address,
        )
        await ship_if_ready(ctx, evt.order_id)

    @shipping.event(transactional=True)
    async def paid(evt: PaymentCharged, ctx: Context) -> None:
        await ctx.tx.execute(
            "INSERT INTO shipping_orders (order_id, paid) VALUES (?, 1) "
            "ON CONFLICT (order_id) DO UPDATE SET paid = 1",
            evt.order_id,
        )
        await ship_if_ready(ctx, evt.order_id)

    return shipping
