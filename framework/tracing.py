"""OpenTelemetry tracing: spans per message and W3C trace context in AMQP headers.

``Tracing`` is a ``framework.observe.Observer`` (``pip install 'leveret[otel]'``):

* every send, publish and request gets a PRODUCER span, child of whatever span is current, and
  its context goes into the message's headers (``traceparent``, ``tracestate``, through the
  global propagator: W3C trace context unless you configured another);
* a message written to an outbox (sagas, ``transactional=True`` handlers) carries the context
  current when its row was written, so the relay publishing it later — or the sweeper, after a
  crash — keeps it a child of the handler that decided to send it;
* every delivery a handler queue takes gets a CONSUMER span, child of the producer's span read
  from its headers, current while the middleware and handler run (so what the handler sends is
  its child) and ended when the delivery is acked, retried, dead-lettered or requeued;
* every saga transition gets a span (saga name and id, the states, the status) under the
  consumer span of the message that caused it.

Spans go to the tracer provider you pass, else the global one (``trace.set_tracer_provider``):
leveret configures no exporter, so whatever the application set up receives them. Without a
provider configured the API's no-op tracer makes every call cheap.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import metadata
from typing import Any

from framework.errors import ConfigurationError
from framework.observe import Handling, Observer, Outcome, SagaStep

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.propagators.textmap import Getter
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError as exc:  # the `otel` extra
    raise ConfigurationError(
        "tracing needs opentelemetry-api: pip install 'leveret[otel]'"
    ) from exc

__all__ = ["Tracing"]

_SYSTEM = "rabbitmq"


class _HeaderGetter(Getter[Mapping[str, Any]]):
    """Reads propagation fields from AMQP headers, whose strings may arrive as bytes."""

    def get(self, carrier: Mapping[str, Any], key: str) -> list[str] | None:
        value = carrier.get(key)
        if value is None:
            return None
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        return [str(value)]

    def keys(self, carrier: Mapping[str, Any]) -> list[str]:
        return list(carrier.keys())


_getter = _HeaderGetter()


def _version() -> str:
    try:
        return metadata.version("leveret")
    except metadata.PackageNotFoundError:
        return "unknown"


class Tracing(Observer):
    """Spans for messages and saga transitions, with trace context carried in headers.

    Args:
        tracer_provider: where spans go; the global provider when None (looked up when a span
            starts, so a provider configured after the app was built is used).
    """

    def __init__(self, *, tracer_provider: trace.TracerProvider | None = None) -> None:
        self._tracer = trace.get_tracer("leveret", _version(), tracer_provider=tracer_provider)

    # -- consuming -------------------------------------------------------------------------

    def handling_started(self, handling: Handling) -> None:
        delivery = handling.delivery
        parent = propagate.extract(delivery.headers, getter=_getter)
        name = delivery.type or "unknown"
        attributes: dict[str, Any] = {
            "messaging.system": _SYSTEM,
            "messaging.operation.type": "process",
            "messaging.destination.name": name,
            "leveret.handler": handling.handler.name,
            "leveret.redelivered": delivery.redelivered,
        }
        if delivery.message_id:
            attributes["messaging.message.id"] = delivery.message_id
        if delivery.correlation_id:
            attributes["messaging.message.conversation_id"] = delivery.correlation_id
        span = self._tracer.start_span(
            f"process {name}", context=parent, kind=SpanKind.CONSUMER, attributes=attributes
        )
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        handling.state = (span, token)

    def handling_finished(self, handling: Handling) -> None:
        span, token = handling.state
        try:
            span.set_attribute("leveret.outcome", handling.outcome.value)
            error = handling.error
            if error is not None:
                span.record_exception(error)
            if handling.outcome is Outcome.DEAD_LETTERED:
                span.set_attribute("leveret.dead_reason", handling.reason or "")
                span.set_status(Status(StatusCode.ERROR, handling.reason))
            elif error is not None:
                span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
            span.end()
        finally:
            otel_context.detach(token)

    # -- publishing ------------------------------------------------------------------------

    def publish_started(self, destination: str, headers: dict[str, Any] | None) -> Any:
        if headers is None:  # an outbox row: it carries the context it was written with
            return None
        span = self._tracer.start_span(
            f"send {destination}",
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": _SYSTEM,
                "messaging.operation.type": "send",
                "messaging.destination.name": destination,
            },
        )
        propagate.inject(headers, context=trace.set_span_in_context(span))
        return span

    def publish_finished(self, state: Any, destination: str, error: BaseException | None) -> None:
        if state is None:
            return
        if error is not None:
            state.record_exception(error)
            state.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        state.end()

    def message_stored(self, headers: dict[str, Any]) -> None:
        propagate.inject(headers)  # the current context: the handler deciding to send it

    # -- sagas ----------------------------------------------------------------------------

    def saga_transitioned(self, step: SagaStep) -> None:
        attributes: dict[str, Any] = {
            "leveret.saga.name": step.saga,
            "leveret.saga.id": step.saga_id,
            "leveret.saga.step": step.to_state,
            "leveret.saga.from_state": step.from_state,
            "leveret.saga.to_state": step.to_state,
            "leveret.saga.status": step.status,
            "leveret.saga.message_type": step.message_type,
        }
        if step.seconds_in_state is not None:
            attributes["leveret.saga.seconds_in_state"] = step.seconds_in_state
        span = self._tracer.start_span(
            f"saga {step.saga} {step.from_state} -> {step.to_state}", attributes=attributes
        )
        span.end()
