"""Inventory, event-sourced: stock per SKU and a reservation per order, rebuilt from their events.

Two aggregates, each a stream in the event store:

- ``Stock`` (``inventory.stock-<sku>``): ``StockReceived``, ``StockReserved``, ``StockReleased``;
  its state is what is on hand, never below zero. A SKU's starting stock (``build_inventory``'s
  ``stock``) is received the first time the SKU is used. A snapshot every 20 events keeps loading
  a busy SKU short.
- ``Reservation`` (``inventory.reservation-<order id>``): ``InventoryReserved`` (with the items
  held), ``InventoryRejected``, ``InventoryReleased``; the saga waits for exactly these.

Each command loads what it changes (the reservation first, then the SKUs in name order, so two
handlers never wait for each other in a cycle), decides, and saves everything in one call: the
events are appended and queued in the outbox in the handler's transaction, with its inbox row, so
a redelivered command changes nothing twice and every stored event is published. A release can
overtake its reservation (the saga releases a reservation whose reply is late): it is then
recorded with nothing held, and the late reservation is rejected instead of holding the stock.
A command that finds its work done already (a resend) answers again without storing anything.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import msgspec

from contracts.inventory import (
    InventoryRejected,
    InventoryReleased,
    InventoryReserved,
    ReleaseInventory,
    ReserveInventory,
    StockReceived,
    StockReleased,
    StockReserved,
)
from contracts.orders import LineItem
from framework import Context, Service
from framework.eventsourcing import EVENT_STORE_SCHEMA, Aggregate, applies, save

__all__ = ["Reservation", "Stock", "build_inventory"]


class StockSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    on_hand: int


class Stock(Aggregate):
    """The stock of one SKU (its id)."""

    category = "inventory.stock"
    snapshot_every = 20
    snapshot_type = StockSnapshot

    def __init__(self, id: str) -> None:
        super().__init__(id)
        self.on_hand = 0

    def receive(self, qty: int) -> None:
        self.record(StockReceived(sku=self.id, qty=qty))

    def reserve(self, order_id: str, qty: int) -> None:
        if qty > self.on_hand:
            raise ValueError(f"{self.id}: {qty} wanted, {self.on_hand} on hand")
        self.record(StockReserved(sku=self.id, order_id=order_id, qty=qty))

    def release(self, order_id: str, qty: int) -> None:
        self.record(StockReleased(sku=self.id, order_id=order_id, qty=qty))

    @applies
    def _received(self, event: StockReceived) -> None:
        self.on_hand += event.qty

    @applies
    def _reserved(self, event: StockReserved) -> None:
        self.on_hand -= event.qty

    @applies
    def _released(self, event: StockReleased) -> None:
        self.on_hand += event.qty

    def snapshot(self) -> StockSnapshot:
        return StockSnapshot(on_hand=self.on_hand)

    def restore(self, snapshot: StockSnapshot) -> None:
        self.on_hand = snapshot.on_hand


class Reservation(Aggregate):
    """What one order (its id) holds: ``status`` is new, reserved, rejected or released."""

    category = "inventory.reservation"

    def __init__(self, id: str) -> None:
        super().__init__(id)
        self.status = "new"
        self.items: list[LineItem] = []
        self.reason = ""

    @applies
    def _reserved(self, event: InventoryReserved) -> None:
        self.status = "reserved"
        self.items = list(event.items)

    @applies
    def _rejected(self, event: InventoryRejected) -> None:
        self.status = "rejected"
        self.reason = event.reason

    @applies
    def _released(self, event: InventoryReleased) -> None:
        self.status = "released"


def quantities(items: Iterable[LineItem]) -> dict[str, int]:
    """Quantity per SKU, in SKU order."""
    wanted: dict[str, int] = {}
    for item in items:
        wanted[item.sku] = wanted.get(item.sku, 0) + item.qty
    return dict(sorted(wanted.items()))


async def load_stock(ctx: Context, sku: str, starting: Mapping[str, int]) -> Stock:
    """The stock of ``sku``; a stream not written yet receives its ``starting`` stock first."""
    item = await Stock.load(ctx, sku)
    if item.version == 0 and sku in starting:
        item.receive(starting[sku])
    return item


async def reserve_or_reject(
    ctx: Context,
    reservation: Reservation,
    items: list[LineItem],
    starting: Mapping[str, int],
) -> None:
    """Reserve ``items`` for the reservation's order if every SKU has them on hand, else record
    its rejection naming the short SKUs; saves every stream it loaded. The SKUs are loaded in
    name order, after the reservation: no two handlers wait for each other in a cycle."""
    order_id = reservation.id
    wanted = quantities(items)
    stocks = [await load_stock(ctx, sku, starting) for sku in wanted]
    short = [item.id for item in stocks if item.on_hand < wanted[item.id]]
    if short:
        reason = f"out of stock: {', '.join(short)}"
        reservation.record(InventoryRejected(order_id=order_id, reason=reason))
    else:
        for item in stocks:
            item.reserve(order_id, wanted[item.id])
        reservation.record(InventoryReserved(order_id=order_id, items=items))
    await save(ctx, *stocks, reservation)


def build_inventory(stock: Mapping[str, int], *, max_length: int | None = None) -> Service:
    """The inventory service; ``stock`` is each SKU's starting stock, received on first use.

    ``max_length`` caps its queues (full: publishes are refused), as in the breaker test.
    """
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
        max_length=max_length,
    )

    @inventory.command(transactional=True)
    async def reserve(cmd: ReserveInventory, ctx: Context) -> None:
        reservation = await Reservation.load(ctx, cmd.order_id)
        if reservation.status == "reserved":
            await ctx.publish(InventoryReserved(order_id=cmd.order_id, items=reservation.items))
            return
        if reservation.status == "rejected":
            await ctx.publish(InventoryRejected(order_id=cmd.order_id, reason=reservation.reason))
            return
        if reservation.status == "released":  # released before it arrived: the saga gave up
            await ctx.publish(
                InventoryRejected(order_id=cmd.order_id, reason="cancelled: released already")
            )
            return
        await reserve_or_reject(ctx, reservation, cmd.items, starting)

    @inventory.command(transactional=True)
    async def release(cmd: ReleaseInventory, ctx: Context) -> None:
        reservation = await Reservation.load(ctx, cmd.order_id)
        if reservation.status == "released":
            # Confirm again: the saga waits for this to finish compensating.
            await ctx.publish(InventoryReleased(order_id=cmd.order_id))
            return
        held = quantities(reservation.items) if reservation.status == "reserved" else {}
        stocks = [await Stock.load(ctx, sku) for sku in held]
        for item in stocks:
            item.release(cmd.order_id, held[item.id])
        reservation.record(InventoryReleased(order_id=cmd.order_id))
        await save(ctx, *stocks, reservation)

    return inventory
