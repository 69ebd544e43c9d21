"""Issue 14's attacks on saga integrity (cases 4 to 6), on the memory transport and on RabbitMQ.

An outsider with publish rights on the shop's exchanges tries to move someone else's saga: a
forged saga id header, a timeout of its own making, a message id taken before the real one.
Each test ends with the victim's saga where it belongs.
"""

from __future__ import annotations

import pytest

from contracts.inventory import ReserveInventory
from contracts.orders import LineItem, PlaceOrder
from contracts.payment import PaymentCharged
from examples.shop import check_invariants
from framework import App, envelope
from framework.errors import Unroutable
from framework.store import SagaRecord, SagaStatus, Store
from tests.app.conftest import next_item
from tests.saga.conftest import (
    Backend,
    Deliveries,
    MakeShop,
    eventually,
    payment_that_holds,
    saga_of,
)

ITEMS = [LineItem(sku="apple", qty=2, unit_price_cents=250)]


def order(order_id: str) -> PlaceOrder:
    return PlaceOrder(order_id=order_id, customer_id="c-1", items=ITEMS, address="1 Main St")


def store_of(app: App) -> Store:
    assert app.store is not None
    return app.store


async def charging(app: App, order_id: str) -> SagaRecord:
    """Place ``order_id`` and wait until its saga waits in ``charge``."""
    await app.send(order(order_id))

    async def waiting() -> SagaRecord | None:
        record = await saga_of(store_of(app), order_id)
        return record if record is not None and record.state == "charge" else None

    found: SagaRecord = await eventually(waiting, what=f"the saga of {order_id} in charge")
    return found


async def finished(app: App, order_id: str) -> SagaRecord:
    """Wait until the saga of ``order_id`` has ended; return its record."""

    async def done() -> SagaRecord | None:
        record = await saga_of(store_of(app), order_id)
        return record if record is not None and record.status.terminal else None

    found: SagaRecord = await eventually(done, what=f"the saga of {order_id} to finish")
    return found


async def test_forged_saga_id_header_goes_to_the_dlq_and_the_victim_is_unmoved(
    make_shop: MakeShop, backend: Backend
) -> None:
    """Case 4: a PaymentCharged naming the attacker's order, with the victim's saga id header, is
    dead-lettered as ``saga_key_mismatch``; the victim waits on and completes with its own
    payment."""
    payment, held = payment_that_holds()
    app = await make_shop(payment=payment)
    queue = app.naming.handler_queue("orders", PaymentCharged.__wire_name__)
    dead = await backend.collect(app.naming.dlq(queue))
    victim = await charging(app, "victim")
    await charging(app, "attacker")

    await app.publish(
        PaymentCharged(order_id="attacker", amount_cents=1, payment_id="pay-never-charged"),
        saga_id="order-victim",
    )
    delivery = await next_item(dead)
    reason = delivery.headers[envelope.DEAD_REASON]
    assert reason.startswith("saga_key_mismatch: "), reason
    assert await saga_of(store_of(app), "victim") == victim
    assert await saga_of(store_of(app), "attacker") is not None

    # The payment service answers for real: the victim goes on with its own payment id.
    charge = held["victim"]
    await app.publish(
        PaymentCharged(
            order_id="victim", amount_cents=charge.amount_cents, payment_id="pay-victim"
        ),
        saga_id="order-victim",
    )
    record = await finished(app, "victim")
    assert record.status is SagaStatus.COMPLETED
    assert b'"payment_id":"pay-victim"' in record.data


async def test_outsider_timeouts_neither_route_nor_apply(
    make_shop: MakeShop, backend: Backend
) -> None:
    """Case 5: a timeout sent to the public commands exchange is unroutable, and ones put straight
    into the timeout queue without the armed token are dead-lettered as ``forged_timeout``; the
    victim still completes."""
    payment, held = payment_that_holds()
    app = await make_shop(payment=payment)
    timeout_type = app.sagas["order"].saga.timeout_type
    queue = app.naming.handler_queue("orders", timeout_type.__wire_name__)
    dead = await backend.collect(app.naming.dlq(queue))
    victim = await charging(app, "victim")
    forged = timeout_type(saga_id="order-victim", state="charge", armed_version=victim.version)

    with pytest.raises(Unroutable):
        await app.send(forged)

    guessed = timeout_type(
        saga_id="order-victim", state="charge", armed_version=victim.version, token="0" * 32
    )
    for n, timeout in enumerate((forged, guessed)):
        wire = envelope.build(timeout, app.codec.encode(timeout), message_id=f"forged-{n}")
        # Through the retry exchange by the queue's name: the way the delay tier delivers.
        await app.transport.publish(wire, exchange=app.naming.retry, routing_key=queue)
    for _ in range(2):
        delivery = await next_item(dead)
        reason = delivery.headers[envelope.DEAD_REASON]
        assert reason.startswith("forged_timeout: saga.order.timeout for 'order-victim'"), reason
    assert await saga_of(store_of(app), "victim") == victim

    charge = held["victim"]
    await app.publish(
        PaymentCharged(order_id="victim", amount_cents=charge.amount_cents, payment_id="pay-v"),
        saga_id="order-victim",
    )
    record = await finished(app, "victim")
    assert record.status is SagaStatus.COMPLETED


async def test_ids_taken_before_the_real_ones_do_not_poison_the_inboxes(
    make_shop: MakeShop,
) -> None:
    """Case 6: messages pre-published with the ids the old scheme derived for the victim's
    step commands and timeout are handled, and the victim's saga still completes."""
    seen = Deliveries()
    app = await make_shop(middleware=[seen])
    intruder = ReserveInventory(order_id="intruder", items=ITEMS)
    old_ids = ["order-victim/1/0", "order-victim/1/1", "order-victim/1/timeout"]
    for old in old_ids:
        await app.send(intruder, message_id=old)
    await eventually(
        lambda: seen.count("inventory", ReserveInventory) == len(old_ids),
        what="the intruder's reservations",
    )

    start = order("victim")
    await app.send(start)
    record = await finished(app, "victim")
    assert record.status is SagaStatus.COMPLETED, record.reason
    assert await check_invariants(store_of(app), [start], [record]) == []
    history = await store_of(app).history("order-victim")
    emitted = {m for h in history for m in h.emitted}
    assert emitted.isdisjoint(old_ids)
