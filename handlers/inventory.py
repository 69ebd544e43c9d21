"""Inventory: stock with reservations, in its own tables.

Every change and the event announcing it commit in one transaction with the inbox row, so a
redelivered command changes nothing twice. ``inventory_movements`` is the ledger the shop's
invariants are checked against. A release can overtake its reservation (the saga releases a
reservation whose reply is late): it then records a release of 0 (sku ``''``), and the late
reservation is rejected instead of holding the stock.
"""

from __future__ import annotations

from collections.abc import Mapping

from contracts.inventory import (
    InventoryRejected,
    InventoryReleased,
    InventoryReserved,
    ReleaseInventory,
    ReserveInventory,
)
from framework import Context, Service

__all__ = ["build_inventory"]

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS inventory_stock (
        sku TEXT PRIMARY KEY,
        on_hand BIGINT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS inventory_movements (
        order_id TEXT NOT NULL,
        sku TEXT NOT NULL,
        qty BIGINT NOT NULL,
        kind TEXT NOT NULL,
        PRIMARY KEY (order_id, sku, kind)
    )""",
)


def build_inventory(stock: Mapping[str, int], *, max_length: int | None = None) -> Service:
    """The inventory service; ``stock`` seeds the SKUs that do not exist yet.

    ``max_length`` caps its queues (full: publishes are refused), as in the breaker test.
    """
    seed = tuple(
        f"INSERT INTO inventory_stock (sku, on_hand) VALUES ('{sku}', {int(n)}) "
        "ON CONFLICT (sku) DO NOTHING"
        for sku, n in sorted(stock.items())
        if sku.replace("-", "").isalnum()
    )
    inventory = Service(
        "inventory",
        schema=SCHEMA + seed,
        sends=[InventoryReserved, InventoryRejected, InventoryReleased],
        max_length=max_length,
    )

    @inventory.command(transactional=True)
    async def reserve(cmd: ReserveInventory, ctx: Context) -> None:
        tx = ctx.tx
        held = await tx.fetchone(
            "SELECT 1 FROM inventory_movements WHERE order_id = ? AND kind = 'reserve'",
            cmd.order_id,
        )
        if held is None:
            cancelled = await tx.fetchone(
                "SELECT 1 FROM inventory_movements WHERE order_id = ? AND kind = 'release'",
                cmd.order_id,
            )
            if cancelled is not None:  # released before it arrived: the saga gave up on it
                await ctx.publish(
                    InventoryRejected(order_id=cmd.order_id, reason="cancelled: released already")
                )
                return
            wanted: dict[str, int] = {}
            for item in cmd.items:
                wanted[item.sku] = wanted.get(item.sku, 0) + item.qty
            short = []
            for sku, qty in sorted(wanted.items()):
                row = await tx.fetchone("SELECT on_hand FROM inventory_stock WHERE sku = ?", sku)
                if row is None or row[0] < qty:
                    short.append(sku)
            if short:
                await ctx.publish(
                    InventoryRejected(
                        order_id=cmd.order_id, reason=f"out of stock: {', '.join(short)}"
                    )
                )
                return
            for sku, qty in sorted(wanted.items()):
                await tx.execute(
                    "UPDATE inventory_stock SET on_hand = on_hand - ? WHERE sku = ?", qty, sku
                )
                await tx.execute(
                    "INSERT INTO inventory_movements (order_id, sku, qty, kind) "
                    "VALUES (?, ?, ?, 'reserve')",
                    cmd.order_id,
                    sku,
                    qty,
                )
        await ctx.publish(InventoryReserved(order_id=cmd.order_id))

    @inventory.command(transactional=True)
    async def release(cmd: ReleaseInventory, ctx: Context) -> None:
        tx = ctx.tx
        released = await tx.fetchone(
            "SELECT 1 FROM inventory_movements WHERE order_id = ? AND kind = 'release'",
            cmd.order_id,
        )
        if released is None:
            reserved = await tx.fetchall(
                "SELECT sku, qty FROM inventory_movements WHERE order_id = ? AND kind = 'reserve'",
                cmd.order_id,
            )
            if not reserved:  # nothing held yet: a mark of 0 so that a late reserve is refused
                reserved = [("", 0)]
            for sku, qty in reserved:
                await tx.execute(
                    "UPDATE inventory_stock SET on_hand = on_hand + ? WHERE sku = ?", qty, sku
                )
                await tx.execute(
                    "INSERT INTO inventory_movements (order_id, sku, qty, kind) "
                    "VALUES (?, ?, ?, 'release')",
                    cmd.order_id,
                    sku,
                    qty,
                )
        # Confirm even when nothing was held: the saga waits for this to finish compensating.
        await ctx.publish(InventoryReleased(order_id=cmd.order_id))

    return inventory
