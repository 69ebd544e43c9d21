"""Payment: charges cards (declined above the card limit) and refunds them.

A refund can overtake its charge (the saga refunds a charge whose reply is late): it then records
a refund of 0, and the late charge is declined instead of taking the money.
"""

from __future__ import annotations

from contracts.payment import (
    ChargePayment,
    PaymentCharged,
    PaymentDeclined,
    PaymentRefunded,
    RefundPayment,
)
from framework import Context, Service

__all__ = ["build_payment"]

SCHEMA = (
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


def build_payment(*, card_limit_cents: int = 100_000) -> Service:
    """The payment service; charges above ``card_limit_cents`` are declined."""
    payment = Service(
        "payment", schema=SCHEMA, sends=[PaymentCharged, PaymentDeclined, PaymentRefunded]
    )

    @payment.command(transactional=True)
    async def charge(cmd: ChargePayment, ctx: Context) -> None:
        row = await ctx.tx.fetchone(
            "SELECT amount_cents, payment_id FROM payment_charges WHERE order_id = ?", cmd.order_id
        )
        if row is None:
            cancelled = await ctx.tx.fetchone(
                "SELECT 1 FROM payment_refunds WHERE order_id = ?", cmd.order_id
            )
            if cancelled is not None:  # refunded before it arrived: the saga gave up on it
                await ctx.publish(
                    PaymentDeclined(order_id=cmd.order_id, reason="cancelled: refunded already")
                )
                return
            if cmd.amount_cents > card_limit_cents:
                await ctx.publish(
                    PaymentDeclined(order_id=cmd.order_id, reason="card declined: over limit")
                )
                return
            row = (cmd.amount_cents, f"pay-{cmd.order_id}")
            await ctx.tx.execute(
                "INSERT INTO payment_charges (order_id, customer_id, amount_cents, payment_id) "
                "VALUES (?, ?, ?, ?)",
                cmd.order_id,
                cmd.customer_id,
                row[0],
                row[1],
            )
        await ctx.publish(
            PaymentCharged(order_id=cmd.order_id, amount_cents=row[0], payment_id=row[1])
        )

    @payment.command(transactional=True)
    async def refund(cmd: RefundPayment, ctx: Context) -> None:
        charged = await ctx.tx.fetchone(
            "SELECT amount_cents FROM payment_charges WHERE order_id = ?", cmd.order_id
        )
        refunded = await ctx.tx.fetchone(
            "SELECT 1 FROM payment_refunds WHERE order_id = ?", cmd.order_id
        )
        amount = 0
        if refunded is None:
            # Nothing charged yet still leaves a (zero) refund: a late charge then declines.
            amount = charged[0] if charged is not None else 0
            await ctx.tx.execute(
                "INSERT INTO payment_refunds (order_id, amount_cents) VALUES (?, ?)",
                cmd.order_id,
                amount,
            )
        await ctx.publish(PaymentRefunded(order_id=cmd.order_id, amount_cents=amount))

    return payment
