"""Prometheus metrics: an observer that counts what an app does (the ``prometheus`` extra).

``PrometheusMetrics`` is a ``framework.observe.Observer``: it counts deliveries by outcome,
times handlers, counts publishes by destination, follows breaker transitions, counts saga
starts and ends and times their steps, and samples the store's outbox and inbox every
``sample_interval`` seconds. Label values come from the code (handler, wire name, exchange,
breaker, saga and state names, exception class names, the kind of a dead-letter reason), never
from message ids or payloads, so the number of series stays bounded.

``leveret run --metrics-port PORT`` installs it in every worker. The workers write their values
to files (prometheus-client's multiprocess mode, in a directory the supervisor makes) and the
supervisor serves the sum over all of them on one port: one scrape target per ``leveret run``,
however many workers and restarts. In your own process, pass a registry and serve it yourself::

    registry = CollectorRegistry()
    app = App([...], observers=[PrometheusMetrics(registry=registry)])
    prometheus_client.start_http_server(9100, registry=registry)
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

from framework.errors import ConfigurationError
from framework.observe import Handling, Observer, Outcome, SagaStep

try:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
except ImportError as exc:  # the `prometheus` extra
    raise ConfigurationError(
        "metrics need prometheus-client: pip install 'leveret[prometheus]'"
    ) from exc

if TYPE_CHECKING:
    from framework.app import App
    from framework.resilience.events import BreakerEvent

__all__ = ["MULTIPROCESS_ENV", "MetricsServer", "PrometheusMetrics", "reason_kind"]

#: prometheus-client's multiprocess mode writes values to files in this directory when set.
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"

_log = structlog.get_logger("leveret.metrics")
_REASON_KIND = re.compile(r"[a-z][a-z0-9_]{0,39}")
# Handlers of a message bus run from a millisecond to the handler deadline (60 s by default).
_HANDLER_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# Saga steps wait for other services: seconds to hours.
_STEP_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
_STORE_DEADLINE = 10.0


def reason_kind(reason: str | None) -> str:
    """The bounded part of a ``leveret-dead-reason`` header: the word before the first colon
    (``handler_failed``, ``malformed_json``, ``unknown_saga``, ...), ``other`` if there is none.
    """
    if not reason:
        return "other"
    kind = reason.split(":", 1)[0].strip()
    return kind if _REASON_KIND.fullmatch(kind) else "other"


class _HandlerSeries:
    """The labelled children of one handler, looked up once instead of per message."""

    __slots__ = ("acked", "consumed", "duration", "requeued")

    def __init__(self, metrics: PrometheusMetrics, handler: str) -> None:
        self.consumed = metrics.consumed.labels(handler=handler)
        self.acked = metrics.acked.labels(handler=handler)
        self.requeued = metrics.requeued.labels(handler=handler)
        self.duration = metrics.handler_duration.labels(handler=handler)


class PrometheusMetrics(Observer):
    """Counts, times and samples an app for Prometheus.

    Args:
        registry: where the metrics are registered (a fresh ``CollectorRegistry`` by default, so
            two apps in one process never collide). In multiprocess mode values go to files and
            the supervisor's registry reads them.
        sample_interval: seconds between reads of the store's outbox and inbox sizes.
    """

    def __init__(
        self, *, registry: CollectorRegistry | None = None, sample_interval: float = 5.0
    ) -> None:
        if sample_interval <= 0:
            raise ConfigurationError(f"sample_interval={sample_interval!r} must be > 0 seconds")
        self.registry = registry if registry is not None else CollectorRegistry()
        self.sample_interval = sample_interval
        r = self.registry
        self.consumed = Counter(
            "leveret_messages_consumed",
            "Deliveries taken from a handler's queue, before decoding.",
            ["handler"],
            registry=r,
        )
        self.acked = Counter(
            "leveret_messages_acked",
            "Deliveries handled and acked (failed queries too: their caller got the error).",
            ["handler"],
            registry=r,
        )
        self.retried = Counter(
            "leveret_messages_retried",
            "Deliveries republished for another attempt after the handler raised.",
            ["handler", "reason"],
            registry=r,
        )
        self.dead_lettered = Counter(
            "leveret_messages_dead_lettered",
            "Deliveries moved to the queue's DLQ, by the kind of their dead-letter reason.",
            ["handler", "reason"],
            registry=r,
        )
        self.requeued = Counter(
            "leveret_messages_requeued",
            "Deliveries nacked back to their queue (shutdown, or a retry publish that failed).",
            ["handler"],
            registry=r,
        )
        self.handler_errors = Counter(
            "leveret_handler_errors",
            "Handler runs that raised, by exception class.",
            ["handler", "exception"],
            registry=r,
        )
        self.handler_duration = Histogram(
            "leveret_handler_duration_seconds",
            "Time in the consume middleware and the handler, per run.",
            ["handler"],
            buckets=_HANDLER_BUCKETS,
            registry=r,
        )
        self.publish_confirmed = Counter(
            "leveret_publish_confirmed",
            "Publishes the broker confirmed (queries: answered), by destination.",
            ["destination"],
            registry=r,
        )
        self.publish_failed = Counter(
            "leveret_publish_failed",
            "Publishes that failed (nack, return, timeout, breaker open), by destination.",
            ["destination", "error"],
            registry=r,
        )
        self.breaker_state = Gauge(
            "leveret_breaker_state",
            "1 for the state each breaker is in (summed over workers: workers in that state).",
            ["breaker", "state"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.breaker_transitions = Counter(
            "leveret_breaker_transitions",
            "Breaker state changes.",
            ["breaker", "from_state", "to_state"],
            registry=r,
        )
        self.breaker_not_permitted = Counter(
            "leveret_breaker_calls_not_permitted",
            "Calls a breaker refused.",
            ["breaker"],
            registry=r,
        )
        self.sagas_started = Counter(
            "leveret_sagas_started",
            "Saga instances created.",
            ["saga"],
            registry=r,
        )
        self.sagas_finished = Counter(
            "leveret_sagas_finished",
            "Saga instances that reached a terminal status "
            "(completed, compensated, compensation_failed, failed, aborted).",
            ["saga", "status"],
            registry=r,
        )
        self.saga_conflicts = Counter(
            "leveret_saga_conflicts",
            "Saga transactions that lost a race with a concurrent update of the same instance "
            "and were tried again.",
            ["saga"],
            registry=r,
        )
        self.saga_step_duration = Histogram(
            "leveret_saga_step_duration_seconds",
            "Time a saga instance spent in a state (a step or its compensation) before leaving it.",
            ["saga", "state"],
            buckets=_STEP_BUCKETS,
            registry=r,
        )
        self.outbox_pending = Gauge(
            "leveret_outbox_pending_rows",
            "Outbox rows not yet published (sampled).",
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.outbox_failed = Gauge(
            "leveret_outbox_failed_rows",
            "Outbox rows that can never be published (NotEncodable); their sagas are failed "
            "(sampled).",
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.outbox_oldest_age = Gauge(
            "leveret_outbox_oldest_pending_age_seconds",
            "Age of the oldest unpublished outbox row, 0 when there is none (sampled).",
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.inbox_rows = Gauge(
            "leveret_inbox_rows",
            "Message ids recorded in the inbox (sampled).",
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.dlq_messages = Gauge(
            "leveret_dlq_messages",
            "Dead letters in each DLQ (sampled when the app bounds its DLQs).",
            ["queue"],
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.dlq_at_bound = Gauge(
            "leveret_dlq_at_bound",
            "1 when a DLQ holds dlq_max_length dead letters: it now drops its oldest ones.",
            ["queue"],
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self._full_dlqs: set[str] = set()
        self._handlers: dict[int, _HandlerSeries] = {}
        self._unsubscribe: list[Callable[[], None]] = []
        self._sampler: asyncio.Task[None] | None = None

    # -- deliveries ------------------------------------------------------------------------

    def _series(self, handling: Handling) -> _HandlerSeries:
        key = id(handling.handler)
        series = self._handlers.get(key)
        if series is None:
            series = self._handlers[key] = _HandlerSeries(self, handling.handler.name)
        return series

    def handling_started(self, handling: Handling) -> None:
        self._series(handling).consumed.inc()

    def handling_finished(self, handling: Handling) -> None:
        series = self._series(handling)
        if handling.duration is not None:
            series.duration.observe(handling.duration)
        error = handling.error
        name = handling.handler.name
        if error is not None:
            self.handler_errors.labels(handler=name, exception=type(error).__name__).inc()
        outcome = handling.outcome
        if outcome is Outcome.ACKED:
            series.acked.inc()
        elif outcome is Outcome.RETRIED:
            reason = type(error).__name__ if error is not None else "other"
            self.retried.labels(handler=name, reason=reason).inc()
        elif outcome is Outcome.DEAD_LETTERED:
            self.dead_lettered.labels(handler=name, reason=reason_kind(handling.reason)).inc()
        else:
            series.requeued.inc()

    # -- publishes ---------------------------------------------------------------------------

    def publish_finished(self, state: Any, destination: str, error: BaseException | None) -> None:
        if error is None:
            self.publish_confirmed.labels(destination=destination).inc()
        else:
            self.publish_failed.labels(destination=destination, error=type(error).__name__).inc()

    # -- sagas -------------------------------------------------------------------------------

    def saga_transitioned(self, step: SagaStep) -> None:
        if step.started:
            self.sagas_started.labels(saga=step.saga).inc()
        elif step.seconds_in_state is not None and step.from_state != step.to_state:
            self.saga_step_duration.labels(saga=step.saga, state=step.from_state).observe(
                step.seconds_in_state
            )
        if step.finished:
            self.sagas_finished.labels(saga=step.saga, status=step.status).inc()

    def saga_conflicted(self, saga: str) -> None:
        self.saga_conflicts.labels(saga=saga).inc()

    # -- breakers and the store --------------------------------------------------------------

    async def app_started(self, app: App) -> None:
        if app.breakers is not None:
            for breaker in app.breakers:
                self._set_breaker_state(breaker.name, str(breaker.state))
                self._unsubscribe.append(breaker.subscribe(self._on_breaker_event))
        if app.store is not None and self._sampler is None:
            self._sampler = asyncio.create_task(
                self._sample_forever(app), name="leveret-metrics-sampler"
            )

    async def app_stopping(self, app: App) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe.clear()
        sampler, self._sampler = self._sampler, None
        if sampler is not None:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler

    def _set_breaker_state(self, breaker: str, state: str) -> None:
        from framework.resilience.events import State

        for each in State:
            self.breaker_state.labels(breaker=breaker, state=each.value).set(
                1 if each.value == state else 0
            )

    def _on_breaker_event(self, event: BreakerEvent) -> None:
        from framework.resilience.events import CallNotPermitted, StateTransition

        if isinstance(event, StateTransition):
            self.breaker_transitions.labels(
                breaker=event.breaker,
                from_state=event.from_state.value,
                to_state=event.to_state.value,
            ).inc()
            self._set_breaker_state(event.breaker, event.to_state.value)
        elif isinstance(event, CallNotPermitted):
            self.breaker_not_permitted.labels(breaker=event.breaker).inc()

    async def sample(self, app: App) -> None:
        """Read the outbox depth, the oldest unsent row's age and the inbox size now, and
        each DLQ's depth when the app bounds its DLQs (``AppConfig.dlq_max_length``).

        Raises:
            TimeoutError: the store did not answer within 10 s.
        """
        if app.config.dlq_max_length is not None:
            await self._sample_dlqs(app, app.config.dlq_max_length)
        if app.store is None:
            return
        async with asyncio.timeout(_STORE_DEADLINE):
            stats = await app.store.stats()
        self.outbox_pending.set(stats.outbox_pending)
        self.outbox_failed.set(stats.outbox_failed)
        oldest = stats.oldest_pending_at
        self.outbox_oldest_age.set(0.0 if oldest is None else max(0.0, time.time() - oldest))
        self.inbox_rows.set(stats.inbox_rows)

    async def _sample_dlqs(self, app: App, bound: int) -> None:
        """Count each DLQ's dead letters; log once when one reaches its bound."""
        for dlq in sorted({app.naming.dlq(p.queue) for p in app.pipelines}):
            messages = (await app.transport.queue_info(dlq)).messages
            self.dlq_messages.labels(queue=dlq).set(messages)
            full = messages >= bound
            self.dlq_at_bound.labels(queue=dlq).set(1 if full else 0)
            if full and dlq not in self._full_dlqs:
                _log.warning("dlq_bound_reached", queue=dlq, messages=messages, bound=bound)
            (self._full_dlqs.add if full else self._full_dlqs.discard)(dlq)

    async def _sample_forever(self, app: App) -> None:
        while True:
            try:
                await self.sample(app)
            except Exception as exc:  # a store hiccup must not end sampling
                _log.warning("metrics_sample_failed", error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(self.sample_interval)


class MetricsServer:
    """The HTTP endpoint of ``leveret run --metrics-port``: its workers' metrics, summed.

    Makes a fresh directory for the workers' value files (prometheus-client's multiprocess
    mode; pass it to them as ``PROMETHEUS_MULTIPROC_DIR``) and serves ``/metrics`` from a
    thread. Counters and histograms of a worker that died stay in the sum, so totals never go
    backwards on a restart; its gauges are dropped (``worker_exited``).

    Args:
        port: the TCP port (0 picks a free one: see ``port`` afterwards).
        host: the address to listen on (every interface by default, for a Prometheus server
            elsewhere).

    Raises:
        ConfigurationError: the port cannot be bound (in use, or privileged).
    """

    def __init__(self, port: int, *, host: str = "0.0.0.0") -> None:
        from prometheus_client import start_http_server
        from prometheus_client.multiprocess import MultiProcessCollector

        self.directory = tempfile.mkdtemp(prefix="leveret-metrics-")
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.directory)  # type: ignore[no-untyped-call]  # prometheus-client leaves it unannotated
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=registry)
        except OSError as exc:
            shutil.rmtree(self.directory, ignore_errors=True)
            raise ConfigurationError(
                f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}; "
                "choose another --metrics-port"
            ) from None
        self.port: int = self._server.server_port

    def worker_exited(self, pid: int) -> None:
        """Drop the gauges of a worker that exited (its counters stay in the sums)."""
        from prometheus_client.multiprocess import mark_process_dead

        mark_process_dead(pid, self.directory)  # type: ignore[no-untyped-call]  # unannotated upstream

    def close(self) -> None:
        """Stop serving and delete the value files."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5.0)
        shutil.rmtree(self.directory, ignore_errors=True)
