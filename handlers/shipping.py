"""Shipping: ships paid orders; an address it cannot serve fails the shipment."""

from __future__ import annotations

from dataclasses import dataclass, field

from contracts.shipping import OrderShipped, ShipOrder, ShippingFailed
from framework import Context, Service

__all__ = ["Shipments", "build_shipping"]


@dataclass
class Shipments:
    """Tracking numbers per order; addresses in ``unserved`` cannot be shipped to."""

    unserved: frozenset[str] = frozenset({"Atlantis"})
    tracking: dict[str, str] = field(default_factory=dict)


def build_shipping(shipments: Shipments) -> Service:
    """The shipping service over ``shipments``."""
    shipping = Service("shipping")

    @shipping.command
    async def ship(cmd: ShipOrder, ctx: Context) -> None:
        if cmd.address in shipments.unserved:
            await ctx.publish(
                ShippingFailed(order_id=cmd.order_id, reason=f"no delivery to {cmd.address}")
            )
            return
        tracking = shipments.tracking.setdefault(
            cmd.order_id, f"TRK-{len(shipments.tracking) + 1:06d}"
        )
        await ctx.publish(OrderShipped(order_id=cmd.order_id, tracking_number=tracking))

    return shipping
