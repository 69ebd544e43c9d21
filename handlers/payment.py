"""Payment: charges customers and refunds them."""

from __future__ import annotations

from dataclasses import dataclass, field

from contracts.payment import (
    ChargePayment,
    PaymentCharged,
    PaymentDeclined,
    PaymentRefunded,
    RefundPayment,
)
from framework import Context, Service

__all__ = ["Ledger", "build_payment"]


@dataclass
class Ledger:
    """Charges per order; charges above ``limit_cents`` are declined."""

    limit_cents: int = 100_000
    charges: dict[str, int] = field(default_factory=dict)
    refunds: dict[str, int] = field(default_factory=dict)


def build_payment(ledger: Ledger) -> Service:
    """The payment service over ``ledger``."""
    payment = Service("payment")

    @payment.command
    async def charge(cmd: ChargePayment, ctx: Context) -> None:
        if cmd.order_id not in ledger.charges:
            if cmd.amount_cents > ledger.limit_cents:
                await ctx.publish(
                    PaymentDeclined(order_id=cmd.order_id, reason="amount over card limit")
                )
                return
            ledger.charges[cmd.order_id] = cmd.amount_cents
        await ctx.publish(
            PaymentCharged(
                order_id=cmd.order_id,
                amount_cents=ledger.charges[cmd.order_id],
                payment_id=f"pay-{cmd.order_id}",
            )
        )

    @payment.command
    async def refund(cmd: RefundPayment, ctx: Context) -> None:
        if cmd.order_id in ledger.refunds or cmd.order_id not in ledger.charges:
            return
        ledger.refunds[cmd.order_id] = cmd.amount_cents
        await ctx.publish(PaymentRefunded(order_id=cmd.order_id, amount_cents=cmd.amount_cents))

    return payment
