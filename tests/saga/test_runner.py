"""The saga runner through the reference shop, on the memory transport and on RabbitMQ.

Each test runs the order saga with the shop's real services on a SQLite file of its own and
checks what a customer would notice: one saga per order, one charge, one refund, one final
notification, and the shop's invariants (``examples.shop.check_invariants``).
"""

from __future__ import annotations

import asyncio
import re

import pytest

from contracts.inventory import InventoryReserved
from contracts.orders import LineItem, PlaceOrder
from contracts.payment import PaymentCharged
from contracts.shipping import OrderShipped
from examples.shop import check_invariants, make_orders, wait_for_sagas
from framework import App, envelope
from framework.consumer import RejectMessage
from framework.context import Context
from framework.saga.runner import SagaActionRefused
from framework.store import SagaStatus, Store
from tests.app.conftest import next_item
from tests.saga.conftest import (
    Backend,
    Deliveries,
    MakeShop,
    eventually,
    saga_of,
    scalar,
    shipping_that_answers_from,
)

ITEMS = [LineItem(sku="apple", qty=2, unit_price_cents=250)]


def order(order_id: str, *, address: str = "1 Main St") -> PlaceOrder:
    return PlaceOrder(order_id=order_id, customer_id="c-1", items=ITEMS, address=address)


def store_of(app: App) -> Store:
    assert app.store is not None
    return app.store


async def terminal(store: Store, order_id: str, timeout: float = 20.0) -> object:
    """Wait until the order's saga has finished; return its record."""

    async def finished() -> object:
        record = await saga_of(store, order_id)
        return record if record is not None and record.status.terminal else None

    return await eventually(finished, timeout=timeout, what=f"the saga of {order_id} to finish")


async def test_duplicate_start_delivery_makes_one_saga_with_one_set_of_effects(
    make_shop: MakeShop,
) -> None:
    """The same PlaceOrder delivered twice (one message id) is one saga, charged once."""
    seen = Deliveries()
    app = await make_shop(middleware=[seen])
    store = store_of(app)
    start = order("dup")
    await app.send(start, message_id="place-dup")
    await app.send(start, message_id="place-dup")
    await eventually(lambda: seen.count("orders", PlaceOrder) == 2, what="both deliveries")
    record = await terminal(store, "dup")
    records = [r for r in await store.list_sagas() if r.saga_id.startswith("order-dup")]
    assert len(records) == 1
    assert await check_invariants(store, [start], records) == []
    history = await store.history("order-dup")
    assert [h.message_id for h in history].count("place-dup") == 1
    assert await scalar(store, "SELECT count(*) FROM payment_charges WHERE order_id = 'dup'") == 1
    assert getattr(record, "status", None) is SagaStatus.COMPLETED


async def test_two_start_messages_for_one_order_at_once_make_one_saga(make_shop: MakeShop) -> None:
    """Two different PlaceOrders for one order sent together start one saga, charged once."""
    seen = Deliveries()
    app = await make_shop(middleware=[seen])
    store = store_of(app)
    first, second = order("twice"), order("twice", address="2 Side St")
    await asyncio.gather(app.send(first), app.send(second))
    await eventually(lambda: seen.count("orders", PlaceOrder) == 2, what="both starts")
    record = await terminal(store, "twice")
    assert await check_invariants(store, [first], [record]) == []  # type: ignore[list-item]
    history = await store.history("order-twice")
    assert sum(h.from_state == "start" for h in history) == 1
    ignored = [h for h in history if h.message_type == PlaceOrder.__wire_name__ and h.note]
    assert len(ignored) == 1, history
    assert (ignored[0].note or "").startswith("ignored")
    assert await scalar(store, "SELECT count(*) FROM payment_charges") == 1


async def test_competing_workers_start_each_order_once(make_shop: MakeShop) -> None:
    """Three apps on one store and broker, each order started by three messages: one saga each."""
    seen = Deliveries()
    workers = [await make_shop(middleware=[seen]) for _ in range(3)]
    client, store = workers[0], store_of(workers[0])
    orders = make_orders("w", 12, seed=5)
    starts = [
        o if n == 0 else PlaceOrder(**{**_fields(o), "customer_id": f"{o.customer_id}-{n}"})
        for o in orders
        for n in range(3)
    ]
    await asyncio.gather(*(client.send(s) for s in starts))
    await eventually(
        lambda: seen.count("orders", PlaceOrder) == len(starts), what="every start message"
    )
    records = await wait_for_sagas(store, "w", len(orders), deadline=60)
    assert len(records) == len(orders)
    assert await check_invariants(store, orders, records) == []
    charges = await scalar(store, "SELECT count(*) FROM payment_charges")
    charged = sum(r.status is SagaStatus.COMPLETED for r in records)
    assert charges >= charged  # declined cards are never charged; refunded ones are
    for record in records:
        history = await store.history(record.saga_id)
        assert sum(h.from_state == "start" for h in history) == 1


async def test_reply_for_an_unknown_saga_is_dead_lettered(
    make_shop: MakeShop, backend: Backend
) -> None:
    """A reply that names no existing saga goes to the DLQ with reason ``unknown_saga: ...``."""
    app = await make_shop()
    queue = app.naming.handler_queue("orders", InventoryReserved.__wire_name__)
    dead = await backend.collect(app.naming.dlq(queue))
    await app.publish(InventoryReserved(order_id="ghost"))
    delivery = await next_item(dead)
    reason = delivery.headers[envelope.DEAD_REASON]
    assert reason.startswith("unknown_saga: "), reason
    assert "order-ghost" in reason
    assert await saga_of(store_of(app), "ghost") is None


async def test_late_reply_after_the_saga_finished_is_noted_and_changes_nothing(
    make_shop: MakeShop,
) -> None:
    """A reply after completion is recorded in the history as ignored; state and effects stay."""
    app = await make_shop()
    store = store_of(app)
    start = order("late")
    await app.send(start)
    done = await terminal(store, "late")
    version = getattr(done, "version", None)
    await app.publish(OrderShipped(order_id="late", tracking_number="TRK-again"))
    await app.publish(PaymentCharged(order_id="late", amount_cents=1, payment_id="pay-x"))

    async def noted() -> bool:
        history = await store.history("order-late")
        return sum(bool(h.note) for h in history) == 2

    await eventually(noted, what="both late replies in the history")
    history = await store.history("order-late")
    notes = [h.note for h in history if h.note]
    assert notes == ["ignored: saga already completed"] * 2
    record = await saga_of(store, "late")
    assert record is not None
    assert (record.version, record.status) == (version, SagaStatus.COMPLETED)
    assert await check_invariants(store, [start], [record]) == []


async def test_step_timeout_through_the_delay_queue_compensates(make_shop: MakeShop) -> None:
    """Shipping never answers: the 0.3 s step deadline fires through a TTL queue and compensates."""
    silent, received = shipping_that_answers_from(10**9)
    app = await make_shop(step_timeout=0.3, ship_timeout=0.3, shipping=silent)
    store = store_of(app)
    start = order("slow")
    await app.send(start)
    record = await terminal(store, "slow")
    assert getattr(record, "status", None) is SagaStatus.COMPENSATED
    assert getattr(record, "reason", None) == "ship timed out after 0.3s"
    assert received["slow"] == 1
    history = await store.history("order-slow")
    assert any(h.message_type == "saga.order.timeout" and h.from_state == "ship" for h in history)
    assert await check_invariants(store, [start], [record]) == []  # type: ignore[list-item]
    assert await scalar(store, "SELECT amount_cents FROM payment_refunds") == 500


async def test_resume_and_abort_through_the_runner(make_shop: MakeShop) -> None:
    """An operator resumes a stuck saga to completion and aborts another; finished ones refuse."""
    shipping, received = shipping_that_answers_from(2)
    app = await make_shop(step_timeout=None, shipping=shipping)
    store = store_of(app)
    runner = app.sagas["order"]
    await app.send(order("stuck"))
    await app.send(order("dropped"))
    await eventually(
        lambda: received["stuck"] == 1 and received["dropped"] == 1, what="the first ShipOrders"
    )
    for order_id in ("stuck", "dropped"):
        record = await saga_of(store, order_id)
        assert record is not None
        assert (record.state, record.status) == ("ship", SagaStatus.RUNNING)

    resumed = await runner.resume("order-stuck")
    assert (resumed.state, resumed.status) == ("ship", SagaStatus.RUNNING)
    record = await terminal(store, "stuck")
    assert getattr(record, "status", None) is SagaStatus.COMPLETED
    assert received["stuck"] == 2
    history = await store.history("order-stuck")
    operator = [h for h in history if h.message_type == "operator.resume"]
    assert len(operator) == 1
    [emitted] = operator[0].emitted
    assert re.fullmatch(rf"order-stuck/{operator[0].version}/0/[0-9a-f]{{16}}", emitted)

    aborted = await runner.abort("order-dropped", "customer called")
    assert (aborted.status, aborted.reason) == (SagaStatus.ABORTED, "customer called")
    stored = await saga_of(store, "dropped")
    assert stored is not None
    assert stored.status is SagaStatus.ABORTED

    with pytest.raises(SagaActionRefused, match="already"):
        await runner.resume("order-dropped")
    with pytest.raises(SagaActionRefused, match="already"):
        await runner.abort("order-stuck")
    with pytest.raises(LookupError, match="nobody"):
        await runner.abort("order-nobody")
    assert received["dropped"] == 1  # abort sends nothing


def _fields(message: PlaceOrder) -> dict[str, object]:
    return {name: getattr(message, name) for name in message.__struct_fields__}


async def test_uncorrelated_message_is_rejected_and_leaves_no_inbox_row(
    make_shop: MakeShop,
) -> None:
    """A message with neither a saga id header nor the key field is rejected as uncorrelated
    before any transaction: its id is not recorded, so a corrected redelivery still runs."""
    app = await make_shop()
    runner = app.sagas["order"]
    ctx = Context(
        app,
        message_id="uncorrelated-1",
        correlation_id=None,
        headers={},
        redelivered=False,
        attempt=1,
        handler="orders",
    )
    keyless = InventoryReserved(order_id=None)  # type: ignore[arg-type]  # as a bad peer sends
    with pytest.raises(RejectMessage, match=r"^uncorrelated: InventoryReserved carries neither"):
        await runner.handle(keyless, ctx)
    async with store_of(app).transaction() as tx:
        assert await tx.inbox_add(runner._consumer, "uncorrelated-1")
