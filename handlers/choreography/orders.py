"""Orders, choreographed: takes the order, and says how it ended once the other services did.

No saga drives the flow: the orders service stores the order and publishes ``OrderPlaced``, then
listens. ``OrderShipped`` completes the order. ``InventoryRejected`` cancels it at once (nothing
was held). ``PaymentDeclined`` and ``ShippingFailed`` start compensations in the services that
react to them (inventory releases, payment refunds, then inventory releases), whose last event is
always ``InventoryReleased``: the order is cancelled once both the failure (its reason) and the
release are in. The two come on different queues, in either order, so each handler records what
it saw and the same guarded ``UPDATE`` ends the order in whichever comes second.

Each handler is ``transactional=True``: the ``order_flow`` row, the inbox row and the messages it
emits commit together. An order that ends publishes ``OrderCompleted`` or ``OrderCancelled`` and
asks notifications to tell the customer (``NotifyCustomer``, as the orchestrated saga does).
Every end is an ``UPDATE ... WHERE status = 'placed'``: it ends the order once, also when two
handlers of one order run at once (the first ``UPDATE`` of each locks the row on PostgreSQL;
SQLite runs one write transaction at a time).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from contracts.inventory import InventoryRejected, InventoryReleased
from contracts.notifications import NotifyCustomer
from contracts.orders import OrderCancelled, OrderCompleted, OrderPlaced, PlaceOrder
from contracts.payment import PaymentDeclined
from contracts.shipping import OrderShipped, ShippingFailed
from framework import Context, Service

__all__ = ["ORDER_FLOW_SCHEMA", "build_orders"]

ORDER_FLOW_SCHEMA = (
    # One row per order. failure: the reason of PaymentDeclined or ShippingFailed, once it
    # came; released: InventoryReleased came (the last compensation). Times are Unix seconds.
    """CREATE TABLE IF NOT EXISTS order_flow (
        order_id TEXT PRIMARY KEY,
        customer_id TEXT NOT NULL,
        total_cents BIGINT NOT NULL,
        status TEXT NOT NULL,
        failure TEXT,
        released INTEGER NOT NULL DEFAULT 0,
        reason TEXT,
        placed_at DOUBLE PRECISION NOT NULL,
        ended_at DOUBLE PRECISION
    )""",
)

_END = (
    "UPDATE order_flow SET status = ?, reason = ?, ended_at = ? "
    "WHERE order_id = ? AND status = 'placed' RETURNING customer_id"
)
# Cancelled once the failure and the last compensation are both in, whichever came second.
_END_COMPENSATED = (
    "UPDATE order_flow SET status = 'cancelled', reason = failure, ended_at = ? "
    "WHERE order_id = ? AND status = 'placed' AND failure IS NOT NULL AND released = 1 "
    "RETURNING customer_id, reason"
)


def build_orders(*, clock: Callable[[], float] = time.time) -> Service:
    """The choreographed orders service.

    Args:
        clock: Unix seconds, for ``order_flow.placed_at`` and ``ended_at`` (the latency).
    """
    orders = Service(
        "orders",
        schema=ORDER_FLOW_SCHEMA,
        sends=[OrderPlaced, OrderCompleted, OrderCancelled, NotifyCustomer],
    )

    async def cancelled(ctx: Context, order_id: str, customer_id: str, reason: str) -> None:
        await ctx.publish(OrderCancelled(order_id=order_id, reason=reason))
        await ctx.send(
            NotifyCustomer(customer_id=customer_id, order_id=order_id, template="order_cancelled")
        )

    async def cancel_if_compensated(ctx: Context, order_id: str) -> None:
        row = await ctx.tx.fetchone(_END_COMPENSATED, clock(), order_id)
        if row is not None:
            await cancelled(ctx, order_id, row[0], row[1])

    @orders.command(transactional=True)
    async def place(cmd: PlaceOrder, ctx: Context) -> None:
        total = sum(item.qty * item.unit_price_cents for item in cmd.items)
        # The same order sent again (another message id) is the same order: placed once.
        inserted = await ctx.tx.fetchone(
            "INSERT INTO order_flow (order_id, customer_id, total_cents, status, placed_at) "
            "VALUES (?, ?, ?, 'placed', ?) ON CONFLICT (order_id) DO NOTHING RETURNING order_id",
            cmd.order_id,
            cmd.customer_id,
            total,
            clock(),
        )
        if inserted is not None:
            await ctx.publish(
                OrderPlaced(
                    order_id=cmd.order_id,
                    customer_id=cmd.customer_id,
                    items=cmd.items,
                    total_cents=total,
                    address=cmd.address,
                )
            )

    @orders.event(transactional=True)
    async def shipped(evt: OrderShipped, ctx: Context) -> None:
        row = await ctx.tx.fetchone(_END, "completed", None, clock(), evt.order_id)
        if row is not None:
            await ctx.publish(OrderCompleted(order_id=evt.order_id))
            await ctx.send(
                NotifyCustomer(customer_id=row[0], order_id=evt.order_id, template="order_shipped")
            )

    @orders.event(transactional=True)
    async def rejected(evt: InventoryRejected, ctx: Context) -> None:
        row = await ctx.tx.fetchone(_END, "cancelled", evt.reason, clock(), evt.order_id)
        if row is not None:
            await cancelled(ctx, evt.order_id, row[0], evt.reason)

    async def failed(ctx: Context, order_id: str, reason: str) -> None:
        await ctx.tx.execute(
            "UPDATE order_flow SET failure = COALESCE(failure, ?) WHERE order_id = ?",
            reason,
            order_id,
        )
        await cancel_if_compensated(ctx, order_id)

    @orders.event(transactional=True)
    async def declined(evt: PaymentDeclined, ctx: Context) -> None:
        await failed(ctx, evt.order_id, evt.reason)

    @orders.event(transactional=True)
    async def shipping_failed(evt: ShippingFailed, ctx: Context) -> None:
        await failed(ctx, evt.order_id, evt.reason)

    @orders.event(transactional=True)
    async def released(evt: InventoryReleased, ctx: Context) -> None:
        await ctx.tx.execute("UPDATE order_flow SET released = 1 WHERE order_id = ?", evt.order_id)
        await cancel_if_compensated(ctx, evt.order_id)

    return orders
