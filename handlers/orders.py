"""Orders: takes orders, drives them through inventory, payment and shipping, answers GetOrder.

Until the saga runner lands this service coordinates the order flow with plain event handlers
(choreography), keeping its state in memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from contracts.inventory import (
    InventoryRejected,
    InventoryReserved,
    ReleaseInventory,
    ReserveInventory,
)
from contracts.notifications import NotifyCustomer
from contracts.orders import (
    CancelOrder,
    GetOrder,
    OrderCancelled,
    OrderCompleted,
    OrderFailed,
    OrderPlaced,
    OrderStatus,
    OrderView,
    PlaceOrder,
)
from contracts.payment import ChargePayment, PaymentCharged, PaymentDeclined, RefundPayment
from contracts.shipping import OrderShipped, ShipOrder, ShippingFailed
from framework import Context, QueryContext, RejectMessage, Service

__all__ = ["OrderBook", "build_orders"]

TERMINAL: frozenset[OrderStatus] = frozenset({"completed", "cancelled", "failed"})


@dataclass
class Order:
    order_id: str
    customer_id: str
    total_cents: int
    address: str
    status: OrderStatus = "placed"
    reason: str | None = None


@dataclass
class OrderBook:
    """The orders service's state (in memory until the saga store lands)."""

    orders: dict[str, Order] = field(default_factory=dict)

    def view(self, order_id: str) -> OrderView | None:
        order = self.orders.get(order_id)
        if order is None:
            return None
        return OrderView(
            order_id=order.order_id,
            customer_id=order.customer_id,
            status=order.status,
            total_cents=order.total_cents,
            reason=order.reason,
        )


def build_orders(book: OrderBook) -> Service:
    """The orders service over ``book``."""
    orders = Service("orders")

    @orders.command
    async def place_order(cmd: PlaceOrder, ctx: Context) -> None:
        if not cmd.items:
            raise RejectMessage(f"order {cmd.order_id} has no items")
        order = book.orders.get(cmd.order_id)
        if order is not None and order.status != "placed":
            return  # a redelivered PlaceOrder whose order moved on already
        total = sum(item.qty * item.unit_price_cents for item in cmd.items)
        # Emitting again on a redelivery is safe: inventory reserves once per order id.
        book.orders[cmd.order_id] = Order(cmd.order_id, cmd.customer_id, total, cmd.address)
        await ctx.publish(
            OrderPlaced(
                order_id=cmd.order_id,
                customer_id=cmd.customer_id,
                items=cmd.items,
                total_cents=total,
                address=cmd.address,
            )
        )
        await ctx.send(ReserveInventory(order_id=cmd.order_id, items=cmd.items))

    @orders.event
    async def on_inventory_reserved(evt: InventoryReserved, ctx: Context) -> None:
        order = book.orders[evt.order_id]
        if order.status != "placed":
            return
        order.status = "reserved"
        await ctx.send(
            ChargePayment(
                order_id=order.order_id,
                customer_id=order.customer_id,
                amount_cents=order.total_cents,
            )
        )

    @orders.event
    async def on_inventory_rejected(evt: InventoryRejected, ctx: Context) -> None:
        await _fail(book.orders[evt.order_id], evt.reason, ctx)

    @orders.event
    async def on_payment_charged(evt: PaymentCharged, ctx: Context) -> None:
        order = book.orders[evt.order_id]
        if order.status != "reserved":
            return
        order.status = "paid"
        await ctx.send(ShipOrder(order_id=order.order_id, address=order.address))

    @orders.event
    async def on_payment_declined(evt: PaymentDeclined, ctx: Context) -> None:
        order = book.orders[evt.order_id]
        if order.status in TERMINAL:
            return
        await ctx.send(ReleaseInventory(order_id=order.order_id))
        await _fail(order, evt.reason, ctx)

    @orders.event
    async def on_order_shipped(evt: OrderShipped, ctx: Context) -> None:
        order = book.orders[evt.order_id]
        if order.status in TERMINAL:
            return
        order.status = "completed"
        await ctx.publish(OrderCompleted(order_id=order.order_id))
        await ctx.send(
            NotifyCustomer(
                customer_id=order.customer_id, order_id=order.order_id, template="order_shipped"
            )
        )

    @orders.event
    async def on_shipping_failed(evt: ShippingFailed, ctx: Context) -> None:
        order = book.orders[evt.order_id]
        if order.status in TERMINAL:
            return
        await ctx.send(RefundPayment(order_id=order.order_id, amount_cents=order.total_cents))
        await ctx.send(ReleaseInventory(order_id=order.order_id))
        await _fail(order, evt.reason, ctx)

    @orders.command
    async def cancel_order(cmd: CancelOrder, ctx: Context) -> None:
        order = book.orders.get(cmd.order_id)
        if order is None:
            raise RejectMessage(f"unknown order {cmd.order_id}")
        if order.status in TERMINAL or order.status == "paid":
            return
        order.status = "cancelled"
        order.reason = cmd.reason
        await ctx.send(ReleaseInventory(order_id=order.order_id))
        await ctx.publish(OrderCancelled(order_id=order.order_id, reason=cmd.reason))

    @orders.query
    async def get_order(query: GetOrder, ctx: QueryContext) -> OrderView:
        view = book.view(query.order_id)
        if view is None:
            raise LookupError(f"no order {query.order_id}")
        return view

    return orders


async def _fail(order: Order, reason: str, ctx: Context) -> None:
    if order.status in TERMINAL:
        return
    order.status = "failed"
    order.reason = reason
    await ctx.publish(OrderFailed(order_id=order.order_id, reason=reason))
    await ctx.send(
        NotifyCustomer(
            customer_id=order.customer_id, order_id=order.order_id, template="order_failed"
        )
    )
