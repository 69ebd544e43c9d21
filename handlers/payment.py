"""Payment: charges cards (declined above the card limit) and refunds them.

An order has at most one row in ``payment_charges`` and one in ``payment_refunds``, both keyed
by its id, and each handler writes its row with ``INSERT ... ON CONFLICT DO NOTHING``, then
answers from the row that is there. So a command sent again (a new message id, the same order:
the saga resends a compensation whose reply was late) changes nothing and answers as the first
did, and two copies handled at once never fail on the key: on PostgreSQL the second insert waits
for the first's transaction, then does nothing. Read-then-insert would race there.

A refund can overtake its charge (the saga refunds a charge whose reply is late). The refund
then takes the order's charge row itself, as a void charge (0 cents, no payment id), and records
a refund of 0: the late charge finds the row taken and is declined instead of taking the money.
Both commands write that one row first, so a charge and a refund of one order handled at once
see each other: reading the other's table first would miss a row not yet committed.
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

# The payment id of a void charge: the row a refund takes when no charge came before it.
VOID = ""

_CHARGE = (
    "INSERT INTO payment_charges (order_id, customer_id, amount_cents, payment_id) "
    "VALUES (?, ?, ?, ?) ON CONFLICT (order_id) DO NOTHING"
)


def build_payment(*, card_limit_cents: int = 100_000) -> Service:
    """The payment service; charges above ``card_limit_cents`` are declined."""
    payment = Service(
        "payment", schema=SCHEMA, sends=[PaymentCharged, PaymentDeclined, PaymentRefunded]
    )

    @payment.command(transactional=True)
    async def charge(cmd: ChargePayment, ctx: Context) -> None:
        if cmd.amount_cents <= card_limit_cents:
            payment_id = f"pay-{cmd.order_id}"
            await ctx.tx.execute(
                _CHARGE, cmd.order_id, cmd.customer_id, cmd.amount_cents, payment_id
            )
        # What is stored answers, whoever stored it: this charge, an earlier copy, or a refund.
        row = await ctx.tx.fetchone(
            "SELECT amount_cents, payment_id FROM payment_charges WHERE order_id = ?", cmd.order_id
        )
        if row is None:
            await ctx.publish(
                PaymentDeclined(order_id=cmd.order_id, reason="card declined: over limit")
            )
        elif row[1] == VOID:  # refunded before it arrived: the saga gave up on it
            await ctx.publish(
                PaymentDeclined(order_id=cmd.order_id, reason="cancelled: refunded already")
            )
        else:
            await ctx.publish(
                PaymentCharged(order_id=cmd.order_id, amount_cents=row[0], payment_id=row[1])
            )

    @payment.command(transactional=True)
    async def refund(cmd: RefundPayment, ctx: Context) -> None:
        # Nothing charged yet: a void charge, so that a late charge declines.
        await ctx.tx.execute(_CHARGE, cmd.order_id, "", 0, VOID)
        # Refunds what was charged (0 for a void charge), once: a copy finds the refund there.
        await ctx.tx.execute(
            "INSERT INTO payment_refunds (order_id, amount_cents) "
            "SELECT order_id, amount_cents FROM payment_charges WHERE order_id = ? "
            "ON CONFLICT (order_id) DO NOTHING",
            cmd.order_id,
        )
        row = await ctx.tx.fetchone(
            "SELECT amount_cents FROM payment_refunds WHERE order_id = ?", cmd.order_id
        )
        assert row is not None  # inserted above, or by the copy that came first
        await ctx.publish(PaymentRefunded(order_id=cmd.order_id, amount_cents=row[0]))

    return payment
