"""How long a saga waits for a compensation's confirmation: per step, with a saga default.

A compensation whose reply is late is sent again; under a burst the reply waits behind full
queues, so the wait must outlast that (issue 17, item 5). The definition tests are pure; the
runner tests use the memory transport with short real waits.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

import contracts
from contracts.inventory import (
    InventoryRejected,
    InventoryReleased,
    InventoryReserved,
    ReleaseInventory,
    ReserveInventory,
)
from contracts.orders import LineItem, PlaceOrder
from contracts.payment import (
    ChargePayment,
    PaymentCharged,
    PaymentDeclined,
    PaymentRefunded,
    RefundPayment,
)
from contracts.shipping import OrderShipped, ShippingFailed
from framework import App, AppConfig, Context, Service
from framework.saga import Instance, RetryBackoff, Saga, SagaDefinitionError, StepKind, Transition
from framework.saga.definition import DEFAULT_COMPENSATION_TIMEOUT
from framework.store import SagaStatus, store_from_url
from framework.transport.memory import MemoryBroker, MemoryTransport
from handlers.orders import (
    OrderState,
    charge,
    charged,
    new_order,
    order_saga,
    refund,
    release,
    reserve,
    ship,
)
from tests.saga.conftest import eventually

ITEMS = [LineItem(sku="apple", qty=2, unit_price_cents=250)]
START = PlaceOrder(order_id="o-1", customer_id="c-1", items=ITEMS, address="1 Main St")


def _order_saga(
    *, saga_default: float | None = None, refund_wait: float | None = None
) -> Saga[OrderState]:
    """The shop's order saga, with the waits for its compensations given."""
    saga = Saga("order", state=OrderState, start=PlaceOrder, key="order_id", init=new_order)
    if saga_default is not None:
        saga.compensation_timeout = saga_default
    saga.step(
        "reserve",
        send=reserve,
        success=InventoryReserved,
        failure=InventoryRejected,
        compensate=release,
        compensated=InventoryReleased,
    )
    saga.step(
        "charge",
        send=charge,
        success=PaymentCharged,
        failure=PaymentDeclined,
        compensate=refund,
        compensated=PaymentRefunded,
        on_success=charged,
        compensation_timeout=refund_wait,
    )
    saga.step("ship", send=ship, success=OrderShipped, failure=ShippingFailed, kind=StepKind.PIVOT)
    return saga.build()


def _apply(saga: Saga[Any], t: Transition[Any], message: Any) -> Transition[Any]:
    inst = Instance("order-o-1", t.state, t.data, t.completed, t.attempt, t.reason)
    nxt = saga.apply(inst, message)
    assert nxt is not None, f"no transition for {type(message).__name__} in {t.state}"
    return nxt


def _shipping_failed(saga: Saga[Any]) -> Transition[Any]:
    """From the start to the refund of a failed shipment: ``charge:compensating``."""
    t = saga.begin("order-o-1", START)
    for reply in (
        InventoryReserved(order_id="o-1"),
        PaymentCharged(order_id="o-1", amount_cents=500, payment_id="pay-1"),
        ShippingFailed(order_id="o-1", reason="no road"),
    ):
        t = _apply(saga, t, reply)
    assert t.state == "charge:compensating"
    return t


def _late(saga: Saga[Any], t: Transition[Any]) -> Transition[Any]:
    timeout = saga.timeout_type(saga_id="order-o-1", state=t.state, armed_version=1)
    return _apply(saga, t, timeout)


def test_the_order_saga_waits_the_default_for_each_confirmation() -> None:
    """The shop's saga waits DEFAULT_COMPENSATION_TIMEOUT (not the former 1 s) for each reply."""
    saga = order_saga().build()
    refunding = _shipping_failed(saga)
    releasing = _apply(saga, refunding, PaymentRefunded(order_id="o-1", amount_cents=500))
    assert (refunding.timeout, releasing.state, releasing.timeout) == (
        DEFAULT_COMPENSATION_TIMEOUT,
        "reserve:compensating",
        DEFAULT_COMPENSATION_TIMEOUT,
    )


def test_a_step_s_compensation_timeout_overrides_the_saga_s() -> None:
    """The refund waits its step's 25 s; the release, which sets none, the saga's 12 s."""
    saga = _order_saga(saga_default=12.0, refund_wait=25.0)
    refunding = _shipping_failed(saga)
    assert refunding.timeout == 25.0
    resent = _late(saga, refunding)
    assert ([type(m) for m in resent.emit], resent.timeout) == ([RefundPayment], 25.0)
    releasing = _apply(saga, resent, PaymentRefunded(order_id="o-1", amount_cents=500))
    assert (releasing.state, releasing.timeout) == ("reserve:compensating", 12.0)
    assert [type(m) for m in releasing.emit] == [ReleaseInventory]


def test_resends_wait_the_timeout_until_the_backoff_is_longer_then_give_up() -> None:
    """Waits are max(compensation_timeout, backoff): 5, 5, 5, 8, 16; then compensation_failed."""
    saga = _order_saga(refund_wait=5.0)
    saga.compensation_retry = RetryBackoff(attempts=5, first=1.0, factor=2.0)
    t = _shipping_failed(saga)
    waits = [t.timeout]
    while not t.finished:
        t = _late(saga, t)
        waits.append(t.timeout)
    assert waits == [5.0, 5.0, 5.0, 8.0, 16.0, None]
    assert t.status is SagaStatus.COMPENSATION_FAILED
    resumed = saga.resume(Instance("order-o-1", t.state, t.data, t.completed, t.attempt, t.reason))
    assert (resumed.status, resumed.timeout) == (SagaStatus.COMPENSATING, 5.0)


def test_a_reply_within_the_wait_moves_on_without_a_resend() -> None:
    """The confirmation before the deadline goes on to the next compensation, nothing resent."""
    saga = _order_saga(refund_wait=30.0)
    refunding = _shipping_failed(saga)
    releasing = _apply(saga, refunding, PaymentRefunded(order_id="o-1", amount_cents=500))
    assert [type(m) for m in releasing.emit] == [ReleaseInventory]  # not RefundPayment again
    assert releasing.attempt == 1


@pytest.mark.parametrize(
    "make",
    [
        lambda s: s.step(
            "reserve",
            send=reserve,
            success=InventoryReserved,
            compensate=release,
            compensation_timeout=5.0,
        ),
        lambda s: s.step(
            "reserve",
            send=reserve,
            success=InventoryReserved,
            compensate=release,
            compensated=InventoryReleased,
            compensation_timeout=0.0,
        ),
    ],
    ids=["without-compensated", "not-positive"],
)
def test_a_step_s_compensation_timeout_is_checked_at_build(
    make: Callable[[Saga[OrderState]], None],
) -> None:
    """A wait with no confirmation to wait for, or of 0 s, is refused naming the step."""
    saga = Saga("order", state=OrderState, start=PlaceOrder, key="order_id", init=new_order)
    make(saga)
    saga.step("ship", send=ship, success=OrderShipped, kind=StepKind.PIVOT)
    with pytest.raises(SagaDefinitionError, match=r"step 'reserve'.*compensation_timeout="):
        saga.build()


def test_a_saga_s_compensation_timeout_must_be_positive() -> None:
    """Saga(compensation_timeout=-1) is refused when it is made, saying what to change."""
    with pytest.raises(SagaDefinitionError, match="compensation_timeout=-1 must be"):
        Saga(
            "order",
            state=OrderState,
            start=PlaceOrder,
            key="order_id",
            init=new_order,
            compensation_timeout=-1,
        )


# -- through the runner, with short real waits -------------------------------------------------


def _declining_shop(release_wait: float, answer_after: float) -> tuple[list[Service], Counter[str]]:
    """A saga that reserves, is declined and releases; the release is confirmed late.

    The release's ``compensation_timeout`` is ``release_wait``; the saga's backoff alone would
    resend after 0.05 s. Returns the services and the ReleaseInventory deliveries per order.
    """
    saga = Saga("hold", state=OrderState, start=PlaceOrder, key="order_id", init=new_order)
    saga.compensation_retry = RetryBackoff(attempts=10, first=0.05, factor=1.0)
    saga.step(
        "reserve",
        send=reserve,
        success=InventoryReserved,
        failure=InventoryRejected,
        compensate=release,
        compensated=InventoryReleased,
        compensation_timeout=release_wait,
    )
    saga.step(
        "charge", send=charge, success=PaymentCharged, failure=PaymentDeclined, kind=StepKind.PIVOT
    )
    orders = Service("orders", sends=[ReserveInventory, ReleaseInventory, ChargePayment])
    orders.saga(saga)

    inventory = Service("inventory", sends=[InventoryReserved, InventoryReleased])
    released: Counter[str] = Counter()

    @inventory.command
    async def reserve_stock(cmd: ReserveInventory, ctx: Context) -> None:
        await ctx.publish(InventoryReserved(order_id=cmd.order_id))

    @inventory.command
    async def release_stock(cmd: ReleaseInventory, ctx: Context) -> None:
        released[cmd.order_id] += 1
        await asyncio.sleep(answer_after)  # a slow service: the confirmation comes late
        await ctx.publish(InventoryReleased(order_id=cmd.order_id))

    payment = Service("payment", sends=[PaymentDeclined])

    @payment.command
    async def decline(cmd: ChargePayment, ctx: Context) -> None:
        await ctx.publish(PaymentDeclined(order_id=cmd.order_id, reason="card declined"))

    return [orders, inventory, payment], released


@pytest.fixture
async def run_shop(tmp_path: Path) -> AsyncIterator[Callable[[list[Service]], Any]]:
    """Starts an app of the given services on the memory transport; stops it afterwards."""
    made: list[App] = []

    async def start(services: list[Service]) -> App:
        app = App(
            services,
            transport=MemoryTransport(MemoryBroker()),
            store=store_from_url(f"sqlite:///{tmp_path / 'shop.db'}"),
            contracts=contracts.ALL,
            config=AppConfig(prefix="t"),
        )
        made.append(app)
        await app.start()
        return app

    yield start
    for app in made:
        await app.stop(grace=0)


async def test_a_confirmation_late_but_within_the_wait_is_not_resent(
    run_shop: Callable[[list[Service]], Any],
) -> None:
    """Confirmed after 0.2 s with a 1 s wait: one release, and the expired deadline is ignored."""
    services, released = _declining_shop(release_wait=1.0, answer_after=0.2)
    app: App = await run_shop(services)
    store = app.store
    assert store is not None
    await app.send(START)

    async def deadline_passed() -> bool:
        history = await store.history("hold-o-1")
        return any(
            h.message_type == "saga.hold.timeout" and (h.note or "").startswith("ignored")
            for h in history
        )

    await eventually(deadline_passed, what="the release's deadline to pass, ignored")
    record = await store.get_saga("hold-o-1")
    assert record is not None
    assert record.status is SagaStatus.COMPENSATED
    assert released["o-1"] == 1


async def test_a_confirmation_later_than_the_step_s_wait_is_resent(
    run_shop: Callable[[list[Service]], Any],
) -> None:
    """Confirmed after 0.5 s with a 0.15 s wait: the release is sent again, then compensated."""
    services, released = _declining_shop(release_wait=0.15, answer_after=0.5)
    app: App = await run_shop(services)
    store = app.store
    assert store is not None
    await app.send(START)

    async def compensated() -> bool:
        record = await store.get_saga("hold-o-1")
        return record is not None and record.status is SagaStatus.COMPENSATED

    await eventually(compensated, what="the saga to be compensated")
    history = await store.history("hold-o-1")
    resends = [h for h in history if h.message_type == "saga.hold.timeout" and h.emitted]
    assert resends
    assert {h.to_state for h in resends} == {"reserve:compensating"}
    await eventually(lambda: released["o-1"] >= 2, what="the resent release to arrive")
