"""The payment gateway the payment service charges through: a small client port and its fake.

``PaymentGateway`` is what the payment service needs of a payment service provider (PSP): take
an order's money and give it back. Both are idempotent, as a real PSP is with an idempotency
key: a charge sent again for the same order (a redelivery, a duplicate command, a retry after a
timeout) takes the money once and answers with the same payment id, and a refund sent again
refunds once.

``FakeGateway`` is the default, so that the shop stays one command with no server: a ledger in
memory, with an injectable latency and outages during which calls fail with
``GatewayUnavailable`` (an HTTP 503) or hang until the outage is over (past the caller's
timeout). ``GATEWAY_CALL`` declares the circuit breaker the shop guards the gateway with.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass
from typing import Protocol

from framework.resilience import Backoff, BreakerConfig, Clock, ExternalCall

__all__ = [
    "GATEWAY",
    "GATEWAY_CALL",
    "FakeGateway",
    "GatewayUnavailable",
    "Outage",
    "PaymentGateway",
]

# The name of the gateway's call breaker: in logs, metrics and ``leveret breakers``.
GATEWAY = "payment-gateway"

GATEWAY_CALL = ExternalCall(
    GATEWAY,
    # Past 2 s a call is cancelled and counts as a failure: a hung gateway opens the breaker.
    timeout=2.0,
    config=BreakerConfig(
        window_size=20,
        minimum_calls=5,
        failure_rate_threshold=50.0,
        # One probe at a time: each failed probe is one more failed attempt of a charge.
        permitted_calls_in_half_open=1,
        wait_in_open=Backoff(initial=1.0, multiplier=2.0, maximum=8.0),
        # Half-open on time, without waiting for a charge to come along.
        automatic_transition=True,
    ),
)


class GatewayUnavailable(Exception):
    """The gateway did not take the call (a 5xx answer, a refused connection): try later."""


class PaymentGateway(Protocol):
    """The calls the payment service makes to its PSP, each idempotent."""

    async def charge(self, order_id: str, amount_cents: int) -> str:
        """Take ``amount_cents`` for ``order_id`` (once per order); return the payment id.

        Raises:
            GatewayUnavailable: nothing was taken; call again.
        """
        ...

    async def refund(self, payment_id: str, amount_cents: int) -> None:
        """Give back ``amount_cents`` of payment ``payment_id`` (once per payment).

        Raises:
            GatewayUnavailable: nothing was refunded; call again.
        """
        ...


@dataclass(frozen=True, slots=True)
class Outage:
    """A time the gateway is down, from ``start`` to ``end`` on its clock.

    Args:
        start: when it went down.
        end: when it comes back.
        hang: calls hang until ``end`` instead of failing at once.
    """

    start: float
    end: float
    hang: bool = False


class FakeGateway:
    """An in-memory PSP: one charge per order and one refund per payment, kept in a ledger.

    Each process has its own: with ``leveret run --workers N`` a refund may reach a worker
    whose fake never saw the charge, so a refund is taken on trust, not checked against the
    charges (one ledger per process; the embedded shop checks its one ledger).

    Args:
        latency: seconds each call takes.
        clock: monotonic seconds, on which outages start and end.

    Attributes:
        charged: order id to ``(payment id, cents)``, every charge taken.
        refunded: payment id to cents, every refund made.
        calls: calls answered (``charge``, ``refund``), failed (``failed``) and hung (``hung``).
        outages: the outages so far, oldest first.
    """

    def __init__(self, *, latency: float = 0.0, clock: Clock = time.monotonic) -> None:
        self.latency = latency
        self.clock = clock
        self.charged: dict[str, tuple[str, int]] = {}
        self.refunded: dict[str, int] = {}
        self.calls: Counter[str] = Counter()
        self.outages: list[Outage] = []
        self._planned: list[tuple[int, float, bool]] = []

    def fail_for(self, seconds: float, *, hang: bool = False, after_charges: int = 0) -> None:
        """Go down for ``seconds``, now or once ``after_charges`` orders are charged: calls fail
        (or, with ``hang``, hang) until then. The outage is in ``outages`` once it started."""
        self._planned.append((after_charges, seconds, hang))
        self._start_due()

    def _start_due(self) -> None:
        charged = len(self.charged)
        for plan in [plan for plan in self._planned if charged >= plan[0]]:
            self._planned.remove(plan)
            _, seconds, hang = plan
            now = self.clock()
            self.outages.append(Outage(now, now + seconds, hang))

    def outage(self) -> Outage | None:
        """The outage going on now, if any."""
        now = self.clock()
        for outage in self.outages:
            if outage.start <= now < outage.end:
                return outage
        return None

    def net_cents(self, order_id: str) -> int:
        """What the gateway holds of ``order_id``'s money: charged minus refunded."""
        charge = self.charged.get(order_id)
        if charge is None:
            return 0
        payment_id, cents = charge
        return cents - self.refunded.get(payment_id, 0)

    async def charge(self, order_id: str, amount_cents: int) -> str:
        """Take ``amount_cents`` for ``order_id`` once; a second charge answers as the first."""
        await self._answer("charge")
        payment_id, _ = self.charged.setdefault(order_id, (f"pay-{order_id}", amount_cents))
        self._start_due()
        return payment_id

    async def refund(self, payment_id: str, amount_cents: int) -> None:
        """Give back ``amount_cents`` of ``payment_id`` once; a second refund changes nothing."""
        await self._answer("refund")
        self.refunded.setdefault(payment_id, amount_cents)

    async def _answer(self, call: str) -> None:
        if self.latency:
            await asyncio.sleep(self.latency)
        outage = self.outage()
        if outage is None:
            self.calls[call] += 1
            return
        if not outage.hang:
            self.calls["failed"] += 1
            raise GatewayUnavailable("payment gateway answered 503 Service Unavailable")
        # A hung gateway answers once it is back, if the caller still waits (it should not).
        self.calls["hung"] += 1
        await asyncio.sleep(max(0.0, outage.end - self.clock()))
        self.calls[call] += 1
