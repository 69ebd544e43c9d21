"""Payment, choreographed: charges an order once its stock is reserved, refunds when shipping
fails.

To charge, payment needs the customer and the amount (from ``OrderPlaced``) and the go-ahead
(``InventoryReserved``). The two come on different queues and either may be first, so payment
keeps what it has seen of each order in ``payment_orders`` and charges in whichever handler
completes the pair: that handler claims the decision (``decided``) with one guarded ``UPDATE``,
so an order is decided once. Its charge goes through the payment gateway (``handlers.gateway``)
guarded by the ``payment-gateway`` call breaker when ``breakers`` are given, into the same
``payment_charges`` and ``payment_refunds`` tables as the orchestrated shop.

``ShippingFailed`` refunds what was charged (``PaymentRefunded``, which tells inventory to
release). Every handler is ``transactional=True`` and ``defer_when_open``: while the breaker
refuses, its event is deferred, the claim rolls back with the rest, and nothing is lost.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager, nullcontext

from contracts.inventory import InventoryReserved
from contracts.orders import OrderPlaced
from contracts.payment import PaymentCharged, PaymentDeclined, PaymentRefunded
from contracts.shipping import ShippingFailed
from framework import Context, Service
from framework.resilience import Breakers, defer_when_open
from handlers.gateway import GATEWAY, FakeGateway, PaymentGateway
from handlers.payment import CARD_LIMIT_CENTS

__all__ = ["build_payment"]

SCHEMA = (
    # What payment has seen of an order: customer and amount (OrderPlaced), reserved
    # (InventoryReserved), decided (charged or declined, once).
    """CREATE TABLE IF NOT EXISTS payment_orders (
        order_id TEXT PRIMARY KEY,
        customer_id TEXT,
        amount_cents BIGINT,
        reserved INTEGER NOT NULL DEFAULT 0,
        decided INTEGER NOT NULL DEFAULT 0
    )""",
    """CREATE TABLE IF NOT EXISTS payment_charges (
        order_id TEXT PRIMARY KEY,
        customer_id TEXT NOT NULL,
        amount_cents BIGINT NOT NULL,
        payment_id TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS payment_refunds (
        order_id TEXT PRIMARY KEY,
        amount_cents BIGINT NOT NULL
    )""",
)

_DECIDE = (
    "UPDATE payment_orders SET decided = 1 WHERE order_id = ? AND decided = 0 "
    "AND reserved = 1 AND customer_id IS NOT NULL RETURNING customer_id, amount_cents"
)


def build_payment(
    *,
    card_limit_cents: int = CARD_LIMIT_CENTS,
    gateway: PaymentGateway | None = None,
    breakers: Breakers | None = None,
) -> Service:
    """The choreographed payment service.

    Args:
        card_limit_cents: the largest charge a card takes; above it the gateway is not asked.
        gateway: where the money moves (default: a ``FakeGateway`` of its own).
        breakers: the app's breakers (give the app the same object), whose
            ``payment-gateway`` call breaker guards every gateway call; None: unguarded.
    """
    psp: PaymentGateway = gateway if gateway is not None else FakeGateway()

    def guarded() -> AbstractAsyncContextManager[object]:
        return nullcontext() if breakers is None else breakers.call(GATEWAY)

    payment = Service(
        "payment", schema=SCHEMA, sends=[PaymentCharged, PaymentDeclined, PaymentRefunded]
    )

    async def charge_if_ready(ctx: Context, order_id: str) -> None:
        row = await ctx.tx.fetchone(_DECIDE, order_id)
        if row is None:  # the other half has not come yet, or the order is decided
            return
        customer_id, amount = row
        if amount > card_limit_cents:
            await ctx.publish(
                PaymentDeclined(order_id=order_id, reason="card declined: over limit")
            )
            return
        async with guarded():
            payment_id = await psp.charge(order_id, amount)
        await ctx.tx.execute(
            "INSERT INTO payment_charges (order_id, customer_id, amount_cents, payment_id) "
            "VALUES (?, ?, ?, ?)",
            order_id,
            customer_id,
            amount,
            payment_id,
        )
        await ctx.publish(
            PaymentCharged(order_id=order_id, amount_cents=amount, payment_id=payment_id)
        )

    @payment.event(transactional=True)
    @defer_when_open
    async def order_placed(evt: OrderPlaced, ctx: Context) -> None:
        await ctx.tx.execute(
            "INSERT INTO payment_orders (order_id, customer_id, amount_cents) VALUES (?, ?, ?) "
            "ON CONFLICT (order_id) DO UPDATE SET customer_id = excluded.customer_id, "
            "amount_cents = excluded.amount_cents",
            evt.order_id,
            evt.customer_id,
            evt.total_cents,
        )
        await charge_if_ready(ctx, evt.order_id)

    @payment.event(transactional=True)
    @defer_when_open
    async def stock_reserved(evt: InventoryReserved, ctx: Context) -> None:
        await ctx.tx.execute(
            "INSERT INTO payment_orders (order_id, reserved) VALUES (?, 1) "
            "ON CONFLICT (order_id) DO UPDATE SET reserved = 1",
            evt.order_id,
        )
        await charge_if_ready(ctx, evt.order_id)

    @payment.event(transactional=True)
    @defer_when_open
    async def refund(evt: ShippingFailed, ctx: Context) -> None:
        # Refunds what was charged, once: a refund row copied from the charge.
        claimed = await ctx.tx.fetchone(
            "INSERT INTO payment_refunds (order_id, amount_cents) "
            "SELECT order_id, amount_cents FROM payment_charges WHERE order_id = ? "
            "ON CONFLICT (order_id) DO NOTHING RETURNING amount_cents",
            evt.order_id,
        )
        if claimed is None:  # nothing charged (shipping reacts to a charge: not expected)
            await ctx.publish(PaymentRefunded(order_id=evt.order_id, amount_cents=0))
            return
        charged = await ctx.tx.fetchone(
            "SELECT payment_id FROM payment_charges WHERE order_id = ?", evt.order_id
        )
        assert charged is not None  # the refund row was copied from it
        async with guarded():
            await psp.refund(charged[0], claimed[0])
        await ctx.publish(PaymentRefunded(order_id=evt.order_id, amount_cents=claimed[0]))

    return payment
