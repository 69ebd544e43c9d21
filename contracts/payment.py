"""The payment service: charging and refunding."""

from __future__ import annotations

from typing import Annotated

import msgspec

from framework.messages import Command, Event

__all__ = [
    "ChargePayment",
    "PaymentCharged",
    "PaymentDeclined",
    "PaymentRefunded",
    "RefundPayment",
]

Cents = Annotated[int, msgspec.Meta(ge=0)]


class PaymentCharged(Event):
    __wire_name__ = "payment.payment_charged"

    order_id: str
    amount_cents: Cents
    payment_id: str


class PaymentDeclined(Event):
    __wire_name__ = "payment.payment_declined"

    order_id: str
    reason: str


class PaymentRefunded(Event):
    __wire_name__ = "payment.payment_refunded"

    order_id: str
    amount_cents: Cents


class ChargePayment(Command):
    __wire_name__ = "payment.charge_payment"
    __replies__ = (PaymentCharged, PaymentDeclined)

    order_id: str
    customer_id: str
    amount_cents: Cents


class RefundPayment(Command):
    __wire_name__ = "payment.refund_payment"
    __replies__ = (PaymentRefunded,)

    order_id: str
    amount_cents: Cents
