"""The observer hooks in process: what they report, what they cost when absent, the metrics they
feed, and tracing through the global tracer provider."""

from __future__ import annotations

import secrets
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

import contracts
from contracts.inventory import ReserveInventory
from contracts.orders import LineItem, PlaceOrder
from framework import App, BreakerOpen, Context, Service
from framework.errors import ConfigurationError
from framework.metrics import PrometheusMetrics, reason_kind
from framework.observe import Handling, Observer, Outcome, SagaStep
from framework.resilience import Breakers, Downstream
from framework.store.base import ConcurrencyConflict, StoreTx
from framework.store.memory import MemoryStore
from framework.testing.harness import Harness
from framework.tracing import Tracing
from framework.transport.base import OutgoingMessage
from handlers.app import DEFAULT_STOCK
from handlers.inventory import build_inventory
from handlers.orders import build_orders
from tests.apps.metrics_app import FLAKY_HANDLER, Work, build_app
from tests.saga.conftest import payment_that_holds


class Recorder(Observer):
    """Writes down every hook call."""

    def __init__(self) -> None:
        self.handled: list[Handling] = []
        self.published: list[tuple[str, bool, str | None]] = []
        self.stored = 0
        self.sagas: list[SagaStep] = []
        self.lifecycle: list[str] = []

    async def app_started(self, app: App) -> None:
        self.lifecycle.append("started")

    async def app_stopping(self, app: App) -> None:
        self.lifecycle.append("stopping")

    def handling_started(self, handling: Handling) -> None:
        handling.state = self

    def handling_finished(self, handling: Handling) -> None:
        assert handling.state is self
        self.handled.append(handling)

    def publish_started(self, destination: str, headers: dict[str, Any] | None) -> Any:
        return (destination, headers is not None)

    def publish_finished(self, state: Any, destination: str, error: BaseException | None) -> None:
        assert state[0] == destination
        self.published.append((destination, state[1], type(error).__name__ if error else None))

    def message_stored(self, headers: dict[str, Any]) -> None:
        self.stored += 1

    def saga_transitioned(self, step: SagaStep) -> None:
        self.sagas.append(step)


async def run_the_mix(app: App) -> None:
    """A retried message, a poison one, a good one, an undecodable one, and one order."""
    async with Harness(app) as harness:
        await app.send(Work(n=1, fail_first=True))
        await app.send(Work(n=2, poison=True))
        await app.send(Work(n=3))
        bad = OutgoingMessage(body=b"{not json", message_id="bad-1", type=Work.__wire_name__)
        await app.transport.publish(
            bad, exchange=app.naming.commands, routing_key=Work.__wire_name__, mandatory=True
        )
        item = LineItem(sku="apple", qty=1, unit_price_cents=100)
        await app.send(PlaceOrder(order_id="o-1", customer_id="c", items=[item], address="A, B"))
        await harness.settle()


async def test_hooks_report_each_delivery_publish_row_and_transition(tmp_path: Path) -> None:
    """Outcomes, errors, durations and dead-letter reasons per delivery; two observers both hear."""
    recorder, registry = Recorder(), CollectorRegistry()
    app = build_app(db_url=f"sqlite:///{tmp_path}/{secrets.token_hex(4)}.db")
    app.observe(recorder, PrometheusMetrics(registry=registry))
    await run_the_mix(app)

    assert recorder.lifecycle == ["started", "stopping"]
    flaky = [h for h in recorder.handled if h.handler.name == FLAKY_HANDLER]
    assert Counter(h.outcome for h in flaky) == {
        Outcome.ACKED: 2,
        Outcome.RETRIED: 2,
        Outcome.DEAD_LETTERED: 2,
    }
    dead = sorted(h.reason or "" for h in flaky if h.outcome is Outcome.DEAD_LETTERED)
    assert dead[0] == "handler_failed: ValueError"
    assert dead[1].startswith("malformed_json")
    assert sum(isinstance(h.error, ValueError) for h in flaky) == 3
    assert sum(h.duration is None for h in flaky) == 1  # the undecodable body never ran
    assert all(h.outcome is Outcome.ACKED for h in recorder.handled if h not in flaky)

    p = app.naming.prefix
    sent = Counter(recorder.published)
    assert sent[(Work.__wire_name__, True, None)] == 3
    assert sent[(f"{p}.retry", True, None)] == 2
    assert sent[(f"{p}.dlx", True, None)] == 2
    assert sent[("inventory.reserve_inventory", False, None)] == 1  # an outbox row
    assert recorder.stored >= 5  # reserve, charge, ship, notify, the events, the timeouts

    saga = [(s.from_state, s.to_state, s.status, s.started, s.finished) for s in recorder.sagas]
    assert saga == [
        ("start", "reserve", "running", True, False),
        ("reserve", "charge", "running", False, False),
        ("charge", "ship", "running", False, False),
        ("ship", "completed", "completed", False, True),
    ]
    assert all(s.seconds_in_state is not None for s in recorder.sagas[1:])

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    h = {"handler": FLAKY_HANDLER}
    assert sample("leveret_messages_consumed_total", **h) == 6
    assert sample("leveret_messages_acked_total", **h) == 2
    assert sample("leveret_messages_retried_total", reason="ValueError", **h) == 2
    assert sample("leveret_messages_dead_lettered_total", reason="handler_failed", **h) == 1
    assert sample("leveret_messages_dead_lettered_total", reason="malformed_json", **h) == 1
    assert sample("leveret_handler_errors_total", exception="ValueError", **h) == 3
    assert sample("leveret_handler_duration_seconds_count", **h) == 5
    assert sample("leveret_publish_confirmed_total", destination=f"{p}.dlx") == 2
    assert sample("leveret_sagas_started_total", saga="order") == 1
    assert sample("leveret_sagas_finished_total", saga="order", status="completed") == 1
    for state in ("reserve", "charge", "ship"):
        assert sample("leveret_saga_step_duration_seconds_count", saga="order", state=state) == 1


async def test_without_an_observer_no_observer_code_runs(tmp_path: Path) -> None:
    """No observer: not one function of framework.observe runs per message (one does with one)."""
    plain = build_app(db_url=f"sqlite:///{tmp_path}/{secrets.token_hex(4)}.db")
    assert plain.observer is None
    assert plain.bus.observer is None
    assert all(p.observer is None for p in plain.pipelines)
    observed = build_app(db_url=f"sqlite:///{tmp_path}/{secrets.token_hex(4)}.db")
    observed.observe(Observer())

    async def mix(app: App) -> int:
        calls = 0

        def start_profiling() -> None:
            nonlocal calls

            def profile(frame: FrameType, event: str, arg: Any) -> None:
                nonlocal calls
                if event == "call" and frame.f_globals.get("__name__") == "framework.observe":
                    calls += 1

            sys.setprofile(profile)

        start_profiling()
        try:
            await run_the_mix(app)
        finally:
            sys.setprofile(None)
        return calls

    assert await mix(plain) == 0
    assert await mix(observed) > 20  # a Handling per delivery, and every hook of the base class


async def test_observe_wires_every_part_and_refuses_a_running_app(tmp_path: Path) -> None:
    """observe() reaches the bus, pipelines, relay, outbox writer and saga runners; not later."""
    app = build_app(db_url=f"sqlite:///{tmp_path}/{secrets.token_hex(4)}.db")
    first, second = Recorder(), Recorder()
    app.observe(first)
    assert app.observer is first
    app.observe(second)
    combined = app.observer
    assert combined is not None
    assert combined is not first
    assert app.bus.observer is combined
    assert all(p.observer is combined for p in app.pipelines)
    assert app.relay is not None
    assert app.relay.observer is combined
    assert all(runner.observer is combined for runner in app.sagas.values())
    async with Harness(app):
        with pytest.raises(ConfigurationError, match="before the app starts"):
            app.observe(Recorder())


async def test_breaker_state_transitions_and_refusals_are_counted() -> None:
    """The state gauge follows the breaker; transitions, refusals and refused sends are counted."""
    inventory = Service("inventory")

    @inventory.command
    async def reserve(cmd: ReserveInventory, ctx: Context) -> None:
        return None

    registry = CollectorRegistry()
    breakers = Breakers([Downstream("inventory")], status=False)
    app = App([inventory], breakers=breakers, observers=[PrometheusMetrics(registry=registry)])

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    async with Harness(app):
        state = "leveret_breaker_state"
        assert sample(state, breaker="inventory", state="closed") == 1
        assert sample(state, breaker="inventory", state="forced_open") == 0
        breakers["inventory"].transition_to_forced_open()
        assert sample(state, breaker="inventory", state="closed") == 0
        assert sample(state, breaker="inventory", state="forced_open") == 1
        with pytest.raises(BreakerOpen):
            await app.send(ReserveInventory(order_id="o-1", items=[]))
        breakers["inventory"].reset()
    assert (
        sample(
            "leveret_breaker_transitions_total",
            breaker="inventory",
            from_state="closed",
            to_state="forced_open",
        )
        == 1
    )
    assert sample("leveret_breaker_calls_not_permitted_total", breaker="inventory") == 1
    assert (
        sample(
            "leveret_publish_failed_total",
            destination="inventory.reserve_inventory",
            error="BreakerOpen",
        )
        == 1
    )
    assert sample("leveret_breaker_state", breaker="inventory", state="closed") == 1


@pytest.mark.parametrize(
    ("reason", "kind"),
    [
        ("handler_failed: ValueError", "handler_failed"),
        ("malformed_json: expected ',' at byte 3", "malformed_json"),
        ("unknown_type: 'x.y'", "unknown_type"),
        ("rejected: customer 42 is blocked", "rejected"),
        ("missing_message_id: set the AMQP message_id", "missing_message_id"),
        ("Order o-1234 broke", "other"),
        ("", "other"),
        (None, "other"),
    ],
)
def test_dead_letter_reason_labels_are_the_bounded_kind(reason: str | None, kind: str) -> None:
    """A reason label is the word before the colon, never the free text after it."""
    assert reason_kind(reason) == kind


async def test_tracing_uses_the_global_tracer_provider_when_given_none(tmp_path: Path) -> None:
    """Tracing() sends its spans to whatever provider the application set globally."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)  # once per process: no other test sets it
    assert trace.get_tracer_provider() is provider
    app = build_app(db_url=f"sqlite:///{tmp_path}/{secrets.token_hex(4)}.db")
    app.observe(Tracing())
    async with Harness(app) as harness:
        await app.send(Work(n=1))
        await harness.settle()
    names = [s.name for s in exporter.get_finished_spans()]
    assert names == ["send flaky.work", "process flaky.work"]


class LosesFirstRace(MemoryStore):
    """A store on which the first saga step of every instance loses a race, as on PostgreSQL
    when two workers update one saga at once (a second implementation, not a patch)."""

    def __init__(self) -> None:
        super().__init__()
        self.raced: set[str] = set()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        async with super().transaction() as tx:
            yield _RacingTx(tx, self.raced)


class _RacingTx:
    """The memory store's transaction, except that it loses each saga's first save."""

    def __init__(self, tx: Any, raced: set[str]) -> None:
        self._tx = tx
        self._raced = raced

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tx, name)

    async def save_step(self, record: Any, **kwargs: Any) -> None:
        if record.saga_id not in self._raced:
            self._raced.add(record.saga_id)
            raise ConcurrencyConflict(record.saga_id)
        await self._tx.save_step(record, **kwargs)


StoreTx.register(_RacingTx)  # what the event store and transactional handlers check


async def test_saga_conflicts_are_counted_and_retried() -> None:
    """A saga transaction that loses a race is tried again, and counted (the figure that says
    whether to partition sagas over workers)."""
    registry = CollectorRegistry()
    store = LosesFirstRace()
    payment, _ = payment_that_holds()  # the saga stops at the charge: its first steps suffice
    app = App(
        [build_orders(step_timeout=60.0), build_inventory(DEFAULT_STOCK), payment],
        store=store,
        contracts=contracts.ALL,
    )
    app.observe(PrometheusMetrics(registry=registry))
    async with Harness(app) as harness:
        item = LineItem(sku="apple", qty=1, unit_price_cents=100)
        await app.send(PlaceOrder(order_id="o-1", customer_id="c", items=[item], address="A, B"))
        await harness.settle()
    record = await store.get_saga("order-o-1")
    assert record is not None
    assert record.state == "charge"  # started, reserved, charging: the lost race was retried
    assert app.sagas["order"].conflicts == 1
    assert registry.get_sample_value("leveret_saga_conflicts_total", {"saga": "order"}) == 1
