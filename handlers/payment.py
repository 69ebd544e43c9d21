"""Payment: charges cards through the payment gateway (declined above the card limit) and
refunds them.

An order has at most one row in ``payment_charges`` and one in ``payment_refunds``, both keyed
by its id, and each handler writes its row with ``INSERT ... ON CONFLICT DO NOTHING``, then
answers from the row that is there. So a command sent again (a new message id, the same order:
the saga resends a compensation whose reply was late) changes nothing and answers as the first
did, and two copies handled at once never fail on the key: on PostgreSQL the second insert waits
for the first's transaction, then does nothing. Read-then-insert would race there.

The money moves at the gateway (``handlers.gateway``), and only for the copy whose insert took
the row: it claims the row, calls the gateway and fills in the payment id, in one transaction.
A copy handled at the same time waits for that transaction and then finds the row taken; a
call that fails or is refused rolls the claim back, so the order is charged by a later copy or
by the redelivery. The gateway's own idempotency by order id covers what is left: a claim rolled
back after the gateway took the money (a failed commit) charges nothing more when it comes back.

A refund can overtake its charge (the saga refunds a charge whose reply is late). The refund
then takes the order's charge row itself, as a void charge (0 cents, no payment id), and records
a refund of 0 without calling the gateway: the late charge finds the row taken and is declined
instead of taking the money. Both commands write that one row first, so a charge and a refund of
one order handled at once see each other: reading the other's table first would miss a row not
yet committed.

With ``breakers``, every gateway call goes through its ``payment-gateway`` call breaker: while
the breaker refuses, a charge or refund raises ``BreakerOpen`` before it starts and its command
is deferred (``defer_when_open``) rather than failed; nothing is lost and no attempt is used up.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager, nullcontext

from contracts.payment import (
    ChargePayment,
    PaymentCharged,
    PaymentDeclined,
    PaymentRefunded,
    RefundPayment,
)
from framework import Context, Service
from framework.errors import ConfigurationError
from framework.resilience import Breakers, ExternalCall, defer_when_open
from handlers.gateway import GATEWAY, FakeGateway, PaymentGateway

__all__ = ["CARD_LIMIT_CENTS", "VOID", "build_payment"]

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

# The largest charge a card takes by default; above it the gateway is not asked.
CARD_LIMIT_CENTS = 100_000

# The payment id of a void charge: the row a refund takes when no charge came before it.
VOID = ""
# The payment id of a claimed row until the gateway answers; never committed.
_PENDING = "pending"

_CHARGE = (
    "INSERT INTO payment_charges (order_id, customer_id, amount_cents, payment_id) "
    "VALUES (?, ?, ?, ?) ON CONFLICT (order_id) DO NOTHING"
)
_CLAIM_CHARGE = f"{_CHARGE} RETURNING order_id"
_CLAIM_REFUND = (
    "INSERT INTO payment_refunds (order_id, amount_cents) "
    "SELECT order_id, amount_cents FROM payment_charges WHERE order_id = ? "
    "ON CONFLICT (order_id) DO NOTHING RETURNING amount_cents"
)


def build_payment(
    *,
    card_limit_cents: int = CARD_LIMIT_CENTS,
    gateway: PaymentGateway | None = None,
    breakers: Breakers | None = None,
) -> Service:
    """The payment service; charges above ``card_limit_cents`` are declined.

    Args:
        card_limit_cents: the largest charge a card takes; above it the gateway is not asked.
        gateway: where the money moves (default: a ``FakeGateway`` of its own).
        breakers: the app's breakers (give the app the same object), whose ``payment-gateway``
            call breaker guards every gateway call; None: calls go unguarded.

    Raises:
        ConfigurationError: ``breakers`` declare no ``ExternalCall("payment-gateway")``.
    """
    psp: PaymentGateway = gateway if gateway is not None else FakeGateway()
    if breakers is not None:
        try:
            declared: object = breakers.declaration(GATEWAY)
        except KeyError:
            declared = None
        if not isinstance(declared, ExternalCall):
            raise ConfigurationError(
                f"build_payment(breakers=...): declare ExternalCall({GATEWAY!r}, ...) in the "
                "Breakers to guard the payment gateway with, or pass breakers=None"
            )

    def guarded() -> AbstractAsyncContextManager[object]:
        return nullcontext() if breakers is None else breakers.call(GATEWAY)

    payment = Service(
        "payment", schema=SCHEMA, sends=[PaymentCharged, PaymentDeclined, PaymentRefunded]
    )

    @payment.command(transactional=True)
    @defer_when_open
    async def charge(cmd: ChargePayment, ctx: Context) -> None:
        if cmd.amount_cents <= card_limit_cents:
            claimed = await ctx.tx.fetchone(
                _CLAIM_CHARGE, cmd.order_id, cmd.customer_id, cmd.amount_cents, _PENDING
            )
            if claimed is not None:  # the row is this charge's: take the money
                async with guarded():
                    payment_id = await psp.charge(cmd.order_id, cmd.amount_cents)
                await ctx.tx.execute(
                    "UPDATE payment_charges SET payment_id = ? WHERE order_id = ?",
                    payment_id,
                    cmd.order_id,
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
    @defer_when_open
    async def refund(cmd: RefundPayment, ctx: Context) -> None:
        # Nothing charged yet: a void charge, so that a late charge declines.
        await ctx.tx.execute(_CHARGE, cmd.order_id, "", 0, VOID)
        # Refunds what was charged (0 for a void charge), once: a copy finds the refund there.
        claimed = await ctx.tx.fetchone(_CLAIM_REFUND, cmd.order_id)
        if claimed is not None and claimed[0] > 0:  # the refund is this one's: give money back
            charged = await ctx.tx.fetchone(
                "SELECT payment_id FROM payment_charges WHERE order_id = ?", cmd.order_id
            )
            assert charged is not None  # the refund was copied from it
            async with guarded():
                await psp.refund(charged[0], claimed[0])
        row = await ctx.tx.fetchone(
            "SELECT amount_cents FROM payment_refunds WHERE order_id = ?", cmd.order_id
        )
        assert row is not None  # inserted above, or by the copy that came first
        await ctx.publish(PaymentRefunded(order_id=cmd.order_id, amount_cents=row[0]))

    return payment
