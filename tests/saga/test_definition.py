"""Saga definitions as pure functions: transitions and build-time validation, no event loop."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from contracts.inventory import (
    InventoryRejected,
    InventoryReleased,
    InventoryReserved,
    ReleaseInventory,
    ReserveInventory,
)
from contracts.notifications import NotifyCustomer
from contracts.orders import LineItem, OrderCancelled, OrderCompleted, OrderPlaced, PlaceOrder
from contracts.payment import (
    ChargePayment,
    PaymentCharged,
    PaymentDeclined,
    PaymentRefunded,
    RefundPayment,
)
from contracts.shipping import OrderShipped, ShipOrder, ShippingFailed
from framework.saga import Instance, RetryBackoff, Saga, SagaDefinitionError, StepKind, Transition
from framework.store import SagaStatus
from handlers.orders import OrderState, order_saga

ITEMS = [LineItem(sku="apple", qty=2, unit_price_cents=250)]
START = PlaceOrder(order_id="o-1", customer_id="c-1", items=ITEMS, address="1 Main St")


def run(saga: Saga[Any], *messages: Any) -> list[Transition[Any]]:
    """Apply ``messages`` one after another from the start, returning every transition."""
    saga.build()
    transition = saga.begin("order-o-1", START)
    out = [transition]
    for message in messages:
        inst = Instance(
            saga_id="order-o-1",
            state=transition.state,
            data=transition.data,
            completed=transition.completed,
            attempt=transition.attempt,
            reason=transition.reason,
        )
        nxt = saga.apply(inst, message)
        assert nxt is not None, f"no transition for {type(message).__name__} in {inst.state}"
        out.append(nxt)
        transition = nxt
    return out


def types(t: Transition[Any]) -> list[type]:
    return [type(m) for m in t.emit]


def timeout(saga: Saga[Any], t: Transition[Any], version: int = 1) -> Any:
    return saga.timeout_type(saga_id="order-o-1", state=t.state, armed_version=version)


def test_happy_path() -> None:
    """Reserve, charge and ship in order; completion announces and notifies."""
    saga = order_saga()
    steps = run(
        saga,
        InventoryReserved(order_id="o-1"),
        PaymentCharged(order_id="o-1", amount_cents=500, payment_id="pay-1"),
        OrderShipped(order_id="o-1", tracking_number="T1"),
    )
    assert [t.state for t in steps] == ["reserve", "charge", "ship", "completed"]
    assert types(steps[0]) == [OrderPlaced, ReserveInventory]
    assert types(steps[1]) == [ChargePayment]
    assert types(steps[2]) == [ShipOrder]
    assert types(steps[3]) == [OrderCompleted, NotifyCustomer]
    assert steps[3].status is SagaStatus.COMPLETED
    assert steps[3].data.payment_id == "pay-1"
    assert steps[0].timeout == 60.0


def test_out_of_stock_has_nothing_to_compensate() -> None:
    """A rejected reservation cancels the order at once and notifies the customer."""
    steps = run(order_saga(), InventoryRejected(order_id="o-1", reason="out of stock: apple"))
    last = steps[-1]
    assert last.status is SagaStatus.COMPENSATED
    assert types(last) == [OrderCancelled, NotifyCustomer]
    assert last.reason == "reserve failed: out of stock: apple"


def test_declined_payment_releases_inventory() -> None:
    """A declined charge releases the reservation, waits for the release, then cancels."""
    steps = run(
        order_saga(),
        InventoryReserved(order_id="o-1"),
        PaymentDeclined(order_id="o-1", reason="card declined"),
        InventoryReleased(order_id="o-1"),
    )
    assert steps[2].state == "reserve:compensating"
    assert steps[2].status is SagaStatus.COMPENSATING
    assert types(steps[2]) == [ReleaseInventory]
    assert steps[3].status is SagaStatus.COMPENSATED
    assert types(steps[3]) == [OrderCancelled, NotifyCustomer]


def test_shipping_failure_compensates_in_reverse() -> None:
    """A failed shipment refunds first, then releases inventory, then cancels."""
    steps = run(
        order_saga(),
        InventoryReserved(order_id="o-1"),
        PaymentCharged(order_id="o-1", amount_cents=500, payment_id="pay-1"),
        ShippingFailed(order_id="o-1", reason="no delivery to Atlantis"),
        PaymentRefunded(order_id="o-1", amount_cents=500),
        InventoryReleased(order_id="o-1"),
    )
    assert [t.state for t in steps[3:]] == [
        "charge:compensating",
        "reserve:compensating",
        "compensated",
    ]
    assert types(steps[3]) == [RefundPayment]
    assert types(steps[4]) == [ReleaseInventory]
    assert steps[-1].reason == "ship failed: no delivery to Atlantis"


def test_step_timeout_compensates_the_step_itself_first() -> None:
    """A step past its deadline fails, and is undone too: its command may only be late."""
    saga = order_saga(step_timeout=5.0)
    steps = run(saga, InventoryReserved(order_id="o-1"))
    late = saga.apply(
        Instance("order-o-1", steps[-1].state, steps[-1].data, steps[-1].completed, 1),
        timeout(saga, steps[-1], 2),
    )
    assert late is not None
    assert late.state == "charge:compensating"
    assert types(late) == [RefundPayment]
    assert late.completed == ("reserve",)
    assert late.reason == "charge timed out after 5.0s"
    refunded = saga.apply(
        Instance("order-o-1", late.state, late.data, late.completed, 1, late.reason),
        PaymentRefunded(order_id="o-1", amount_cents=0),
    )
    assert refunded is not None
    assert refunded.state == "reserve:compensating"
    assert types(refunded) == [ReleaseInventory]


def test_pivot_timeout_compensates_the_steps_before_it() -> None:
    """The pivot has no compensation: past its deadline only the earlier steps are undone."""
    saga = order_saga(step_timeout=5.0, ship_timeout=5.0)
    steps = run(
        saga,
        InventoryReserved(order_id="o-1"),
        PaymentCharged(order_id="o-1", amount_cents=500, payment_id="pay-1"),
    )
    late = saga.apply(
        Instance("order-o-1", steps[-1].state, steps[-1].data, steps[-1].completed, 1),
        timeout(saga, steps[-1], 3),
    )
    assert late is not None
    assert late.state == "charge:compensating"
    assert late.reason == "ship timed out after 5.0s"


def test_compensation_that_keeps_failing_ends_in_compensation_failed() -> None:
    """Unconfirmed compensations are resent with backoff, then the saga says it failed."""
    saga = order_saga()
    saga.compensation_retry = RetryBackoff(attempts=3, first=1.0, factor=2.0)
    saga.compensation_timeout = 1.0  # the least wait: below it the backoff alone decides
    steps = run(
        saga, InventoryReserved(order_id="o-1"), PaymentDeclined(order_id="o-1", reason="x")
    )
    t = steps[-1]
    timeouts = [t.timeout]
    for _ in range(3):
        inst = Instance("order-o-1", t.state, t.data, t.completed, t.attempt, t.reason)
        nxt = saga.apply(inst, timeout(saga, t))
        assert nxt is not None
        t = nxt
        timeouts.append(t.timeout)
        if t.finished:
            break
    assert t.status is SagaStatus.COMPENSATION_FAILED
    assert "compensation of reserve unconfirmed after 3 attempts" in (t.reason or "")
    assert timeouts[:3] == [1.0, 2.0, 4.0]
    resumed = saga.resume(Instance("order-o-1", t.state, t.data, t.completed, t.attempt, t.reason))
    assert resumed.status is SagaStatus.COMPENSATING
    assert types(resumed) == [ReleaseInventory]
    assert resumed.attempt == 1


class Job(msgspec.Struct, frozen=True):
    order_id: str
    tries: int = 0


def _retriable_saga(attempts: int) -> Saga[Job]:
    saga = Saga(
        "job", state=Job, start=PlaceOrder, key="order_id", init=lambda m: Job(order_id=m.order_id)
    )
    saga.step(
        "reserve",
        send=lambda s: ReserveInventory(order_id=s.order_id, items=[]),
        success=InventoryReserved,
        failure=InventoryRejected,
        compensate=lambda s: ReleaseInventory(order_id=s.order_id),
    )
    saga.step(
        "charge",
        send=lambda s: ChargePayment(order_id=s.order_id, customer_id="c", amount_cents=1),
        success=PaymentCharged,
        kind=StepKind.PIVOT,
    )
    saga.step(
        "ship",
        send=lambda s: ShipOrder(order_id=s.order_id, address="a"),
        success=OrderShipped,
        failure=ShippingFailed,
        kind=StepKind.RETRIABLE,
        retry=RetryBackoff(attempts=attempts, first=2.0),
    )
    return saga


def test_retriable_step_is_resent_then_gives_up() -> None:
    """A retriable step past the pivot is resent on failure, then ends FAILED when exhausted."""
    saga = _retriable_saga(attempts=2)
    steps = run(
        saga,
        InventoryReserved(order_id="o-1"),
        PaymentCharged(order_id="o-1", amount_cents=1, payment_id="p"),
        ShippingFailed(order_id="o-1", reason="truck broke"),
    )
    waiting = steps[-1]
    assert waiting.state == "ship:resend"
    assert waiting.timeout == 2.0
    inst = Instance("order-o-1", waiting.state, waiting.data, waiting.completed, waiting.attempt)
    resent = saga.apply(inst, timeout(saga, waiting))
    assert resent is not None
    assert resent.state == "ship"
    assert types(resent) == [ShipOrder]
    assert resent.attempt == 2
    inst = Instance("order-o-1", resent.state, resent.data, resent.completed, resent.attempt)
    final = saga.apply(inst, ShippingFailed(order_id="o-1", reason="truck broke again"))
    assert final is not None
    assert final.status is SagaStatus.FAILED
    assert "gave up after 2 attempts" in (final.reason or "")
    inst = Instance("order-o-1", final.state, final.data, final.completed, final.attempt)
    resumed = saga.resume(inst)
    assert resumed.status is SagaStatus.RUNNING
    assert types(resumed) == [ShipOrder]


def _saga(**kw: Any) -> Saga[OrderState]:
    return Saga(
        "order",
        state=OrderState,
        start=PlaceOrder,
        key="order_id",
        init=lambda m: OrderState(
            order_id=m.order_id, customer_id="c", items=[], total_cents=0, address="a"
        ),
        **kw,
    )


def test_compensatable_step_needs_a_compensation() -> None:
    """A compensatable step without compensate= is refused, naming the saga and the step."""
    saga = _saga()
    saga.step(
        "reserve",
        send=lambda s: ReserveInventory(order_id=s.order_id, items=[]),
        success=InventoryReserved,
    )
    with pytest.raises(
        SagaDefinitionError,
        match=r"saga 'order', step 'reserve' is compensatable but has no compens",
    ):
        saga.build()


def test_steps_after_the_pivot_must_be_retriable() -> None:
    """Only retriable steps may follow the pivot."""
    saga = _saga()
    saga.step(
        "charge",
        send=lambda s: ChargePayment(order_id="o", customer_id="c", amount_cents=1),
        success=PaymentCharged,
        kind=StepKind.PIVOT,
    )
    saga.step(
        "ship",
        send=lambda s: ShipOrder(order_id="o", address="a"),
        success=OrderShipped,
        compensate=lambda s: ShipOrder(order_id="o", address="a"),
    )
    with pytest.raises(SagaDefinitionError, match=r"step 'ship' comes after the pivot"):
        saga.build()


def wrong_reply(s: OrderState) -> ReserveInventory:
    return ReserveInventory(order_id=s.order_id, items=[])


def test_reply_type_nobody_sends() -> None:
    """A step expecting a reply its command never gets (per __replies__) is refused."""
    saga = _saga()
    saga.step(
        "reserve",
        send=wrong_reply,
        success=PaymentCharged,
        compensate=lambda s: ReleaseInventory(order_id="o"),
    )
    with pytest.raises(
        SagaDefinitionError, match=r"PaymentCharged is never sent in answer to ReserveInventory"
    ):
        saga.build()


def test_unreachable_state() -> None:
    """A state that no transition leads to is refused."""
    saga = _saga()

    @saga.on(PlaceOrder, in_states=("start",), to=("completed",))
    def start(inst: Instance[OrderState], msg: PlaceOrder) -> Transition[OrderState]:
        return inst.finish(SagaStatus.COMPLETED)

    @saga.on(InventoryReserved, in_states=("limbo",), to=("completed",))
    def never(inst: Instance[OrderState], msg: InventoryReserved) -> Transition[OrderState]:
        return inst.finish(SagaStatus.COMPLETED)

    with pytest.raises(SagaDefinitionError, match=r"state 'limbo' is unreachable"):
        saga.build()


def test_waiting_state_without_way_out() -> None:
    """A state that is entered but handles nothing is refused."""
    saga = _saga()

    @saga.on(PlaceOrder, in_states=("start",), to=("waiting",))
    def start(inst: Instance[OrderState], msg: PlaceOrder) -> Transition[OrderState]:
        return inst.goto("waiting")

    with pytest.raises(SagaDefinitionError, match=r"state 'waiting' waits with no way out"):
        saga.build()


def test_key_must_exist_on_the_start_message() -> None:
    """The instance key names a field of the start message."""
    with pytest.raises(SagaDefinitionError, match=r"has no field 'orderid'"):
        Saga("order", state=OrderState, start=PlaceOrder, key="orderid", init=lambda m: m)


def test_undeclared_target_is_an_error() -> None:
    """A rule returning a state outside its to= fails loudly instead of going astray."""
    saga = _saga()

    @saga.on(PlaceOrder, in_states=("start",), to=("completed",))
    def start(inst: Instance[OrderState], msg: PlaceOrder) -> Transition[OrderState]:
        return inst.goto("elsewhere")

    saga.build()
    with pytest.raises(SagaDefinitionError, match=r"went to 'elsewhere'"):
        saga.begin("order-o-1", START)


class Pair(msgspec.Struct, frozen=True):
    order_id: str
    reserved: bool = False
    charged: bool = False


def test_general_form_parallel_wait() -> None:
    """The general form waits for two replies in any order before finishing."""
    saga = Saga(
        "pair",
        state=Pair,
        start=PlaceOrder,
        key="order_id",
        init=lambda m: Pair(order_id=m.order_id),
    )

    @saga.on(PlaceOrder, in_states=("start",), to=("waiting",))
    def start(inst: Instance[Pair], msg: PlaceOrder) -> Transition[Pair]:
        return inst.goto(
            "waiting",
            emit=[
                ReserveInventory(order_id=msg.order_id, items=[]),
                ChargePayment(order_id=msg.order_id, customer_id="c", amount_cents=1),
            ],
            timeout=30,
        )

    def settle(inst: Instance[Pair], data: Pair) -> Transition[Pair]:
        if data.reserved and data.charged:
            return inst.finish(SagaStatus.COMPLETED, data=data)
        return inst.goto("waiting", data=data)

    @saga.on(InventoryReserved, in_states=("waiting",), to=("waiting", "completed"))
    def reserved(inst: Instance[Pair], msg: InventoryReserved) -> Transition[Pair]:
        return settle(inst, msgspec.structs.replace(inst.data, reserved=True))

    @saga.on(PaymentCharged, in_states=("waiting",), to=("waiting", "completed"))
    def charged(inst: Instance[Pair], msg: PaymentCharged) -> Transition[Pair]:
        return settle(inst, msgspec.structs.replace(inst.data, charged=True))

    @saga.on(saga.timeout_type, in_states=("waiting",), to=("aborted",))
    def too_slow(inst: Instance[Pair], msg: Any) -> Transition[Pair]:
        return inst.finish(SagaStatus.ABORTED, reason="timed out")

    for order in (
        [
            PaymentCharged(order_id="o-1", amount_cents=1, payment_id="p"),
            InventoryReserved(order_id="o-1"),
        ],
        [
            InventoryReserved(order_id="o-1"),
            PaymentCharged(order_id="o-1", amount_cents=1, payment_id="p"),
        ],
    ):
        steps = run(saga, *order)
        assert [t.state for t in steps] == ["waiting", "waiting", "completed"]
