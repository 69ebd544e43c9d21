"""Tracing across services: trace context in headers and outbox rows, spans in the right tree.

The shop runs as two apps — orders (the saga) and the services it drives — each with its own
``Tracing`` observer and store, exporting to one in-memory exporter. One order placed inside a
client span must give one trace in which each consumer span is the child of the span that sent
its message, and each saga transition a span under the message that caused it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import contracts
from contracts.orders import LineItem, PlaceOrder
from framework import App, AppConfig
from framework.store import SagaStatus, store_from_url
from framework.tracing import Tracing
from handlers.app import DEFAULT_STOCK
from handlers.inventory import build_inventory
from handlers.notifications import build_notifications
from handlers.orders import build_orders, build_read_side
from handlers.payment import build_payment
from handlers.shipping import build_shipping
from tests.app.conftest import Backend
from tests.app.conftest import backend as backend  # the fixture: memory and RabbitMQ
from tests.saga.conftest import eventually


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def one(spans: list[ReadableSpan], name: str, *, handler: str | None = None) -> ReadableSpan:
    """The one span called ``name`` (of ``handler``, if given: an event has a span per handler)."""
    found = [
        s
        for s in spans
        if s.name == name and (handler is None or attrs(s).get("leveret.handler") == handler)
    ]
    assert len(found) == 1, (name, handler, [s.name for s in spans])
    return found[0]


def parent_of(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


async def test_one_order_is_one_trace_across_two_services(
    backend: Backend, tmp_path: Path, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """Producer → consumer → outbox row → consumer in the other app, and saga spans, in order."""
    orders_store = store_from_url(f"sqlite:///{tmp_path / 'orders.db'}")
    services_store = store_from_url(f"sqlite:///{tmp_path / 'services.db'}")
    config = AppConfig(prefix=backend.prefix)
    orders = App(
        [build_orders(step_timeout=60.0), build_read_side(orders_store)],
        transport=backend.transport(),
        config=config,
        store=orders_store,
        contracts=contracts.ALL,
        observers=[Tracing(tracer_provider=provider)],
    )
    services = App(
        [build_inventory(DEFAULT_STOCK), build_payment(), build_shipping(), build_notifications()],
        transport=backend.transport(),
        config=config,
        store=services_store,
        contracts=contracts.ALL,
        observers=[Tracing(tracer_provider=provider)],
    )
    item = LineItem(sku="apple", qty=2, unit_price_cents=250)
    async with services, orders:
        with provider.get_tracer("test").start_as_current_span("client") as client:
            await orders.send(
                PlaceOrder(order_id="t-1", customer_id="c-1", items=[item], address="1 Way, Bern")
            )

        async def completed() -> bool:
            record = await orders_store.get_saga("order-t-1")
            return record is not None and record.status is SagaStatus.COMPLETED

        await eventually(completed, timeout=30, what="the order saga to complete")
        await eventually(
            lambda: any(
                s.name == "process notifications.notify_customer"
                for s in exporter.get_finished_spans()
            ),
            timeout=30,
            what="the customer's notification",
        )

    spans = list(exporter.get_finished_spans())
    trace_ids = {s.context.trace_id for s in spans if s.context is not None}
    assert trace_ids == {client.get_span_context().trace_id}

    send = one(spans, "send orders.place_order")
    assert send.kind is SpanKind.PRODUCER
    assert parent_of(send) == client.get_span_context().span_id
    placed = one(spans, "process orders.place_order")
    assert placed.kind is SpanKind.CONSUMER
    assert parent_of(placed) == span_id(send)
    assert attrs(placed)["leveret.handler"] == "orders.saga:order"
    assert attrs(placed)["leveret.outcome"] == "acked"
    assert placed.status.status_code is not StatusCode.ERROR

    # The saga's outbox row carried the context of the handler that wrote it, into the other app.
    reserve = one(spans, "process inventory.reserve_inventory")
    assert parent_of(reserve) == span_id(placed)
    assert attrs(reserve)["leveret.handler"] == "inventory.reserve"
    # The saga and the read side's projection each handle the reply, in the same trace.
    reserved = one(spans, "process inventory.inventory_reserved", handler="orders.saga:order")
    assert parent_of(reserved) == span_id(reserve)
    projected = [
        s for s in spans if s.name == "process inventory.inventory_reserved" and s is not reserved
    ]
    assert [attrs(s)["leveret.handler"] for s in projected] == [
        "order_view.build_read_side.<locals>.on_reserved[projection]"
    ]
    assert parent_of(projected[0]) == span_id(reserve)
    charge = one(spans, "process payment.charge_payment")
    assert parent_of(charge) == span_id(reserved)

    start = one(spans, "saga order start -> reserve")
    assert parent_of(start) == span_id(placed)
    assert attrs(start) == {
        "leveret.saga.name": "order",
        "leveret.saga.id": "order-t-1",
        "leveret.saga.step": "reserve",
        "leveret.saga.from_state": "start",
        "leveret.saga.to_state": "reserve",
        "leveret.saga.status": "running",
        "leveret.saga.message_type": "orders.place_order",
    }
    to_charge = one(spans, "saga order reserve -> charge")
    assert parent_of(to_charge) == span_id(reserved)
    assert attrs(to_charge)["leveret.saga.message_type"] == "inventory.inventory_reserved"
    assert attrs(to_charge)["leveret.saga.seconds_in_state"] >= 0
    done = [s for s in spans if s.name.startswith("saga order") and s.name.endswith("completed")]
    assert len(done) == 1
    assert attrs(done[0])["leveret.saga.status"] == "completed"
    assert attrs(done[0])["leveret.saga.id"] == "order-t-1"
