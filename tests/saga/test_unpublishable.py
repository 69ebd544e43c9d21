"""No silent permanent failures: what can never be published is refused where it is made (a
saga's start, ``send``, the outbox writer), and an outbox row that still cannot be published
fails its saga visibly instead of being retried forever (issue 19, item 3)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import msgspec
import pytest
from structlog.testing import capture_logs

from contracts.orders import LineItem, PlaceOrder
from framework import envelope
from framework.bus import Outbound, PublishNext
from framework.codec import Codec
from framework.errors import NotEncodable
from framework.routing import Naming
from framework.saga.outbox import OutboxRelay, OutboxWriter
from framework.saga.runner import MAX_SAGA_ID_BYTES
from framework.store.base import OutboxRow, SagaRecord, SagaStatus, Store
from framework.transport.base import BindingSpec, ExchangeSpec, ExchangeType, QueueSpec, Topology
from framework.transport.memory import MemoryTransport
from handlers.orders import build_orders
from tests.app.conftest import next_item
from tests.saga.conftest import Backend, Deliveries, MakeShop, eventually, saga_of

# The store tests' fixtures (memory, SQLite, PostgreSQL), for the outbox's tests here.
from tests.store.conftest import make_store, store, store_kind, store_url

__all__ = ["make_store", "store", "store_kind", "store_url"]


def order(order_id: str) -> PlaceOrder:
    items = [LineItem(sku="apple", qty=1, unit_price_cents=150)]
    return PlaceOrder(order_id=order_id, customer_id="c-1", items=items, address="1 Main St")


async def test_a_saga_key_too_long_for_amqp_is_dead_lettered_at_the_start(
    make_shop: MakeShop, backend: Backend
) -> None:
    """A key whose saga id passes 255 bytes goes to the DLQ as saga_key_too_long, at once and
    without a saga; a key at the limit starts one."""
    seen = Deliveries()
    app = await make_shop(middleware=[seen])
    queue = app.naming.handler_queue("orders", PlaceOrder.__wire_name__)
    dead = await backend.collect(app.naming.dlq(queue))
    longest = "k" * (MAX_SAGA_ID_BYTES - len("order-"))
    await app.send(order(longest + "k"))
    delivery = await next_item(dead)
    reason = delivery.headers[envelope.DEAD_REASON]
    assert reason.startswith("saga_key_too_long: the 'order_id' of PlaceOrder makes the saga id")
    assert "of 256 bytes; saga ids (order-<order_id>) hold at most 255 bytes" in reason
    assert "so the key at most 249" in reason
    assert seen.count("orders", PlaceOrder) == 1  # not retried
    store = app.store
    assert store is not None
    assert await saga_of(store, longest + "k") is None
    await app.send(order(longest))
    assert await eventually(lambda: saga_of(store, longest), what="the saga at the limit")


async def test_send_refuses_what_amqp_cannot_carry_before_anything_is_sent(
    backend: Backend,
) -> None:
    """``send`` with a 300-character message id or a UUID header raises NotEncodable before
    publish middleware (a circuit breaker) or the broker see anything."""
    outbound: list[Outbound] = []

    async def watch(out: Outbound, call_next: PublishNext) -> Any:
        outbound.append(out)
        return await call_next(out)

    app = await backend.app([build_orders()], publish_middleware=[watch])
    with pytest.raises(NotEncodable, match="message_id is 300 bytes of UTF-8"):
        await app.send(order("o-1"), message_id="m" * 300)
    with pytest.raises(NotEncodable, match="header 'tenant' holds a UUID"):
        await app.send(order("o-1"), headers={"tenant": uuid.uuid4()})
    assert outbound == []
    queue = app.naming.handler_queue("orders", PlaceOrder.__wire_name__)
    transport = await backend.connected()
    assert await transport.queue_depth(queue) == 0


def test_the_outbox_writer_refuses_a_row_that_could_never_be_published() -> None:
    """A row is checked where a handler's or saga's transaction writes it, not by the relay."""
    writer = OutboxWriter(_codec(), Naming("t"))
    with pytest.raises(NotEncodable, match="message_id is 300 bytes"):
        writer.row(order("o-1"), message_id="m" * 300, correlation_id=None, causation_id=None)
    with pytest.raises(NotEncodable, match="correlation_id is 256 bytes"):
        writer.row(order("o-1"), message_id="m-1", correlation_id="c" * 256, causation_id=None)


def _codec() -> Codec:
    return Codec([PlaceOrder])


async def test_an_outbox_row_that_can_never_be_published_fails_its_saga_once(
    store: Store, store_kind: str
) -> None:
    """A row AMQP cannot carry (written before rows were checked) leaves the pending rows for
    good, its saga becomes failed (compensation_failed while compensating) with the reason,
    the relay logs it once at ERROR, and later sweeps leave it alone."""
    # The status mapping is the relay's, not the store's: one store covers compensating.
    status = SagaStatus.COMPENSATING if store_kind == "memory" else SagaStatus.RUNNING
    naming = Naming("t")
    transport = MemoryTransport()
    await transport.connect()
    await transport.declare(
        Topology(
            exchanges=(ExchangeSpec(naming.commands, ExchangeType.DIRECT),),
            queues=(QueueSpec("t.q"),),
            bindings=(BindingSpec("t.q", naming.commands, "orders.place_order"),),
        )
    )
    now = time.time()
    record = SagaRecord(
        saga_id="order-o-1",
        saga="order",
        correlation_id="c-1",
        status=status,
        state="reserve.waiting",
        data=b"{}",
        version=3,
        created_at=now,
        updated_at=now,
        deadline_at=now + 60,
    )
    good = _row("order-o-1/3/0/aa", now - 2, correlation_id="c-1")
    bad = _row("order-o-1/3/1/bb", now - 1, correlation_id="c" * 300)
    async with store.transaction() as tx:
        await tx.insert(record)
        await tx.add_outbox([good, bad])
    relay = OutboxRelay(store, transport, naming, sweep_grace=0)
    try:
        with capture_logs() as logs:
            assert await relay.sweep() == 2
            assert await relay.sweep() == 0
        assert await transport.queue_depth("t.q") == 1  # the good row went
    finally:
        await transport.close()
    failures = [e for e in logs if e["event"] == "outbox_row_failed"]
    assert [(e["log_level"], e["message_id"]) for e in failures] == [("error", bad.message_id)]
    assert not [e for e in logs if e["event"] == "outbox_publish_failed"]
    assert await store.pending_outbox() == []
    [failed] = await store.failed_outbox(saga_id="order-o-1")
    assert await store.failed_outbox(saga_id="order-o-2") == []
    assert failed.message_id == bad.message_id
    assert failed.failed_at is not None
    assert failed.error is not None
    assert failed.error.startswith(
        "NotEncodable: the message cannot be put on the wire: correlation_id is 300 bytes"
    )
    stats = await store.stats()
    assert (stats.outbox_pending, stats.outbox_failed) == (0, 1)
    saga = await store.get_saga("order-o-1")
    assert saga is not None
    expected = (
        SagaStatus.COMPENSATION_FAILED if status is SagaStatus.COMPENSATING else SagaStatus.FAILED
    )
    assert (saga.status, saga.state, saga.version, saga.deadline_at) == (
        expected,
        "reserve.waiting",
        4,
        None,
    )
    assert saga.reason is not None
    assert saga.reason.startswith(
        f"outbox: orders.place_order message {bad.message_id} can never be published"
    )
    assert [s.saga_id for s in await store.list_sagas(status=expected)] == ["order-o-1"]
    last = (await store.history("order-o-1"))[-1]
    assert (last.message_type, last.message_id, last.status) == (
        "outbox.failed",
        bad.message_id,
        expected,
    )


async def test_fail_outbox_takes_only_a_pending_row(store: Store) -> None:
    """``fail_outbox`` moves a pending row once; an unknown, sent or failed one is left as is."""
    now = time.time()
    rows = [_row(f"m-{n}", now, correlation_id="c") for n in range(2)]
    async with store.transaction() as tx:
        await tx.add_outbox(rows)
    await store.mark_sent(["m-1"])
    async with store.transaction() as tx:
        outcomes = [await tx.fail_outbox(m, "why", at=now) for m in ("m-0", "m-1", "ghost")]
    async with store.transaction() as tx:
        again = await tx.fail_outbox("m-0", "why again", at=now + 1)
    assert (outcomes, again) == ([True, False, False], False)
    assert [(r.message_id, r.error) for r in await store.failed_outbox()] == [("m-0", "why")]
    assert await store.pending_outbox() == []


_props = msgspec.json.Encoder()


def _row(message_id: str, created_at: float, *, correlation_id: str) -> OutboxRow:
    properties = {"type": "orders.place_order", "correlation_id": correlation_id, "headers": {}}
    return OutboxRow(
        message_id=message_id,
        exchange="t.commands",
        routing_key="orders.place_order",
        body=b"{}",
        properties=_props.encode(properties),
        destination="orders.place_order",
        saga_id="order-o-1",
        created_at=created_at,
    )
