"""Inventory, choreographed: reserves for each placed order, releases when payment says so.

The same event-sourced aggregates as the orchestrated shop (``handlers.inventory``: ``Stock`` per
SKU, ``Reservation`` per order, the same events), fed by events instead of commands:
``OrderPlaced`` reserves (``InventoryReserved``) or rejects (``InventoryRejected``);
``PaymentDeclined`` and ``PaymentRefunded`` release what the order holds (``InventoryReleased``):
declined, nothing was charged; refunded, shipping failed and payment has given the money back.

Events arrive in causal order here (payment answers only after ``InventoryReserved``), so unlike
the saga's commands nothing is ever resent and a release never overtakes its reservation. A
reservation decided already is left as it is: the inbox has dropped redeliveries, and no one
waits for an answer to be repeated.
"""

from __future__ import annotations

from collections.abc import Mapping

from contracts.inventory import (
    InventoryRejected,
    InventoryReleased,
    InventoryReserved,
    StockReceived,
    StockReleased,
    StockReserved,
)
from contracts.orders import OrderPlaced
from contracts.payment import PaymentDeclined, PaymentRefunded
from framework import Context, Service
from framework.eventsourcing import EVENT_STORE_SCHEMA, save
from handlers.inventory import Reservation, Stock, quantities, reserve_or_reject

__all__ = ["build_inventory"]


def build_inventory(stock: Mapping[str, int]) -> Service:
    """The choreographed inventory; ``stock`` is each SKU's starting stock, received on first
    use."""
    starting = {sku: int(n) for sku, n in stock.items() if int(n) > 0}
    inventory = Service(
        "inventory",
        schema=EVENT_STORE_SCHEMA,
        sends=[
            InventoryReserved,
            InventoryRejected,
            InventoryReleased,
            StockReceived,
            StockReserved,
            StockReleased,
        ],
    )

    async def release(ctx: Context, order_id: str) -> None:
        reservation = await Reservation.load(ctx, order_id)
        if reservation.status != "reserved":
            return
        held = quantities(reservation.items)
        stocks = [await Stock.load(ctx, sku) for sku in held]
        for item in stocks:
            item.release(order_id, held[item.id])
        reservation.record(InventoryReleased(order_id=order_id))
        await save(ctx, *stocks, reservation)

    @inventory.event(transactional=True)
    async def reserve(evt: OrderPlaced, ctx: Context) -> None:
        # The reservation first, then the SKUs in name order: no two handlers wait in a cycle.
        reservation = await Reservation.load(ctx, evt.order_id)
        if reservation.status != "new":
            return
        await reserve_or_reject(ctx, reservation, evt.items, starting)

    @inventory.event(transactional=True)
    async def release_declined(evt: PaymentDeclined, ctx: Context) -> None:
        await release(ctx, evt.order_id)

    @inventory.event(transactional=True)
    async def release_refunded(evt: PaymentRefunded, ctx: Context) -> None:
        await release(ctx, evt.order_id)

    return inventory
