"""Property: whatever the broker and the workers do to deliveries, the shop's invariants hold.

Hypothesis picks a mix of orders (ok, out of stock, declined card, undeliverable address) and a
seed for ``Chaos``, a consume middleware on every handler of an in-process shop (memory
transport, SQLite in memory) that, per delivery, delivers a second copy with the same message id,
parks it in a TTL queue so that it comes back later and out of order, delays it, fails it before
the handler ran (a crash: redelivered), or fails it after the handler committed (a crash before
the ack: redelivered, then dropped by the inbox). Every order must end in one terminal saga, with
``examples.shop.check_invariants`` finding nothing: one charge or none net of refunds, stock held
only for shipped orders, exactly one final notification, a read model that agrees.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import contracts
from contracts.orders import LineItem, PlaceOrder
from examples.shop import check_invariants, wait_for_sagas
from framework import App, AppConfig, Service
from framework.middleware import Incoming, Next
from framework.retry import RetryPolicy
from framework.store import SagaStatus, store_from_url
from framework.transport.base import BindingSpec, ExchangeSpec, ExchangeType, QueueSpec, Topology
from framework.transport.memory import MemoryTransport
from handlers.app import DEFAULT_STOCK
from handlers.inventory import build_inventory
from handlers.notifications import build_notifications
from handlers.orders import build_orders, build_read_side, order_saga
from handlers.payment import build_payment
from handlers.shipping import build_shipping

KINDS = ("ok", "out_of_stock", "declined", "undeliverable")
DEFER_MS = (5, 20, 60)


class ChaosFailure(Exception):
    """A failure injected by ``Chaos``."""


class Chaos:
    """Consume middleware that mistreats deliveries, each decision drawn from a seeded RNG.

    Every delivery of a message id to a queue is mistreated at most ``budget`` times, so that
    each message is eventually handled (the retry policy allows more failures than that).
    """

    def __init__(self, seed: int, *, rate: float, budget: int = 2) -> None:
        self.rng = random.Random(seed)
        self.rate = rate
        self.budget = budget
        self.app: App | None = None
        self.done: Counter[tuple[str, str]] = Counter()
        self.actions: Counter[str] = Counter()
        self._declared: set[int] = set()

    async def __call__(self, msg: Incoming, call_next: Next) -> Any:
        assert self.app is not None
        queue = self.app.naming.handler_queue(msg.handler.service, type(msg.message).__wire_name__)
        key = (queue, msg.context.message_id)
        if self.done[key] >= self.budget or self.rng.random() >= self.rate:
            return await call_next(msg)
        self.done[key] += 1
        action = self.rng.choice(("duplicate", "defer", "delay", "fail_before", "fail_after"))
        self.actions[action] += 1
        if action == "duplicate":
            await self.app.transport.publish(
                msg.delivery.to_outgoing(), exchange=self.app.naming.retry, routing_key=queue
            )
        elif action == "defer":
            ms = self.rng.choice(DEFER_MS)
            await self._declare_delay(ms)
            await self.app.transport.publish(
                msg.delivery.to_outgoing(expiration_ms=ms),
                exchange=self.app.naming.delay(ms),
                routing_key=queue,
            )
            return None  # acked now; the copy comes back in `ms` milliseconds
        elif action == "delay":
            await asyncio.sleep(self.rng.uniform(0, 0.02))  # injected latency: reorders deliveries
        elif action == "fail_before":
            raise ChaosFailure("crashed before the handler ran")
        result = await call_next(msg)
        if action == "fail_after":
            raise ChaosFailure("crashed after the handler committed, before the ack")
        return result

    async def _declare_delay(self, ms: int) -> None:
        if ms in self._declared:
            return
        assert self.app is not None
        name = self.app.naming.delay(ms)
        await self.app.transport.declare(
            Topology(
                exchanges=(ExchangeSpec(name, ExchangeType.FANOUT),),
                queues=(QueueSpec(name, dead_letter_exchange=self.app.naming.retry),),
                bindings=(BindingSpec(name, name, ""),),
            )
        )
        self._declared.add(ms)


def orders_of(kinds: list[str]) -> list[PlaceOrder]:
    """One order per kind, failing (or not) the way its kind says."""
    made = []
    for i, kind in enumerate(kinds):
        items = [LineItem(sku="apple", qty=1 + i % 3, unit_price_cents=250)]
        address = f"{i + 1} Main St"
        if kind == "out_of_stock":
            items.append(LineItem(sku="discontinued", qty=1, unit_price_cents=999))
        elif kind == "declined":
            items = [LineItem(sku="plum", qty=100, unit_price_cents=5_000)]
        elif kind == "undeliverable":
            address = "Atlantis"
        made.append(
            PlaceOrder(order_id=f"p-{i:03d}", customer_id=f"c-{i}", items=items, address=address)
        )
    return made


def orders_with_deadlines(seconds: float) -> Service:
    """The orders service with a deadline of ``seconds`` on reserve and charge, none on ship.

    A step past its deadline is compensated, itself included; the pivot (ship) has no
    compensation, so a late shipment after its deadline would ship a cancelled order (see
    ``Saga.step``): it gets no deadline here.
    """
    saga = order_saga(step_timeout=seconds)
    orders = Service("orders")
    orders.saga(saga)
    return orders


async def run_shop(
    orders: list[PlaceOrder], chaos: Chaos, *, service: Service | None = None
) -> list[str]:
    """Place ``orders`` on a fresh in-process shop under ``chaos``; the invariants it breaks."""
    store = store_from_url("sqlite://:memory:")
    app = App(
        [
            service or build_orders(),
            build_read_side(store),
            build_inventory(DEFAULT_STOCK),
            build_payment(),
            build_shipping(),
            build_notifications(),
        ],
        transport=MemoryTransport(),
        config=AppConfig(prefix="prop", retry=RetryPolicy(immediate=4, delays=(0.01,))),
        store=store,
        contracts=contracts.ALL,
        middleware=[chaos],
    )
    chaos.app = app
    async with app:
        await asyncio.gather(*(app.send(o) for o in orders))
        records = await wait_for_sagas(store, "p", len(orders), deadline=30)
        problems = await check_invariants(store, orders, records, settle=5)
        assert {r.status for r in records} <= {SagaStatus.COMPLETED, SagaStatus.COMPENSATED}
    return problems


@pytest.mark.timeout(180)
@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
@given(
    kinds=st.lists(st.sampled_from(KINDS), min_size=1, max_size=8),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    rate=st.floats(min_value=0.0, max_value=0.6),
)
def test_invariants_hold_under_duplicates_reordering_delays_and_crashes(
    kinds: list[str], seed: int, rate: float
) -> None:
    """Duplicated, deferred, delayed and failed deliveries never break the shop's invariants."""
    chaos = Chaos(seed, rate=rate)
    problems = asyncio.run(run_shop(orders_of(kinds), chaos))
    assert problems == [], (problems, dict(chaos.actions))


@pytest.mark.timeout(180)
@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
@given(
    kinds=st.lists(st.sampled_from(KINDS), min_size=1, max_size=6),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    rate=st.floats(min_value=0.2, max_value=0.6),
)
def test_invariants_hold_when_step_deadlines_pass_before_late_replies(
    kinds: list[str], seed: int, rate: float
) -> None:
    """Deadlines shorter than the deferrals: late commands are undone or refused, never kept."""
    chaos = Chaos(seed, rate=rate)
    orders = orders_of(kinds)
    problems = asyncio.run(run_shop(orders, chaos, service=orders_with_deadlines(0.03)))
    assert problems == [], (problems, dict(chaos.actions))
