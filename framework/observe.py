"""Instrumentation hooks: what the framework tells an observer about the work it does.

An ``Observer`` hears about every delivery a handler queue takes and what became of it, every
publish and what the broker said, every message written to an outbox, and every saga
transition. Metrics (``framework.metrics``) and tracing (``framework.tracing``) are observers;
install them with ``App(observers=[...])`` or ``app.observe(...)`` before the app starts.

The hooks are plain methods, called synchronously where the work happens; the base class does
nothing in each, so an observer overrides only what it needs. Without an observer the hot path
pays one ``is None`` check per hook site and allocates nothing: the report objects below exist
only when someone listens. Hooks must not raise and must not block: they run inline, between
a delivery and its ack.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from framework.handlers import HandlerSpec
from framework.transport.base import Delivery

if TYPE_CHECKING:
    from framework.app import App

__all__ = ["Handling", "Observer", "Observers", "Outcome", "SagaStep", "combine"]


class Outcome(enum.StrEnum):
    """What became of a delivery."""

    ACKED = "acked"  # handled (a failed query too: its caller got the error reply)
    RETRIED = "retried"  # republished for another attempt, at once or through a delay queue
    DEAD_LETTERED = "dead_lettered"  # moved to the queue's DLQ
    REQUEUED = "requeued"  # nacked back to its queue: shutdown, or the retry publish failed


@dataclass(slots=True)
class Handling:
    """One delivery on a handler queue, filled in as the pipeline goes.

    Args:
        handler: the handler whose queue delivered it.
        delivery: the delivery as it arrived (headers, type, ids).
        outcome: what became of it (``REQUEUED`` until the pipeline decides otherwise).
        duration: seconds the middleware and handler ran; None when the handler never ran
            (undecodable input).
        error: what the handler raised, or None.
        reason: the ``leveret-dead-reason`` header of a dead-lettered delivery.
        state: the observer's own, set in ``handling_started`` and read back in
            ``handling_finished`` (a span, a start time).
    """

    handler: HandlerSpec
    delivery: Delivery
    outcome: Outcome = Outcome.REQUEUED
    duration: float | None = None
    error: BaseException | None = None
    reason: str | None = None
    state: Any = None


@dataclass(frozen=True, slots=True)
class SagaStep:
    """A saga transition, reported after its transaction committed.

    Args:
        saga: the saga's name.
        saga_id: the instance (a span attribute; never a metric label).
        message_type: wire name of the message that caused it (``operator.resume`` and
            ``operator.abort`` for an operator's action).
        from_state: the state it left (``start`` for a new instance).
        to_state: the state it entered.
        status: the saga's status after it (``running``, ``completed``, ...).
        started: the transition created the instance.
        finished: the status is terminal.
        seconds_in_state: how long the instance had been in ``from_state``; None for a start.
    """

    saga: str
    saga_id: str
    message_type: str
    from_state: str
    to_state: str
    status: str
    started: bool
    finished: bool
    seconds_in_state: float | None


class Observer:
    """Base class of instrumentation: every hook does nothing until overridden."""

    async def app_started(self, app: App) -> None:
        """The app connected and is consuming; start background sampling here."""

    async def app_stopping(self, app: App) -> None:
        """The app is stopping; stop what ``app_started`` started."""

    def handling_started(self, handling: Handling) -> None:
        """A delivery arrived on a handler queue (before it is decoded)."""

    def handling_finished(self, handling: Handling) -> None:
        """The delivery was acked, retried, dead-lettered or requeued (see ``outcome``)."""

    def publish_started(self, destination: str, headers: dict[str, Any] | None) -> Any:
        """A message is about to be published; returns a state for ``publish_finished``.

        Args:
            destination: the routing key of a command, event or query (its wire name); for a
                retry or a dead letter, the exchange it goes through (``P.retry``,
                ``P.delay.<ms>``, ``P.dlx``).
            headers: the message's headers, to add propagation fields to (trace context); None
                for an outbox row, which carries what it was written with.
        """
        return None

    def publish_finished(self, state: Any, destination: str, error: BaseException | None) -> None:
        """The publish was confirmed (``error`` None) or failed."""

    def message_stored(self, headers: dict[str, Any]) -> None:
        """A message was written to an outbox, to be published after its transaction commits:
        add to ``headers`` what must travel with it (the trace context of this moment)."""

    def saga_transitioned(self, step: SagaStep) -> None:
        """A saga instance changed state (the transaction has committed)."""

    def saga_conflicted(self, saga: str) -> None:
        """A message's transaction on a saga lost a race with a concurrent update of the same
        instance (a version conflict, or two starts at once) and is tried again."""


class Observers(Observer):
    """Several observers behind one: each hook is called on each, in order."""

    def __init__(self, observers: Sequence[Observer]) -> None:
        self.observers = tuple(observers)

    async def app_started(self, app: App) -> None:
        for observer in self.observers:
            await observer.app_started(app)

    async def app_stopping(self, app: App) -> None:
        for observer in reversed(self.observers):
            await observer.app_stopping(app)

    def handling_started(self, handling: Handling) -> None:
        states = []
        for observer in self.observers:
            handling.state = None
            observer.handling_started(handling)
            states.append(handling.state)
        handling.state = states

    def handling_finished(self, handling: Handling) -> None:
        states = handling.state
        for observer, state in zip(reversed(self.observers), reversed(states), strict=True):
            handling.state = state
            observer.handling_finished(handling)
        handling.state = states

    def publish_started(self, destination: str, headers: dict[str, Any] | None) -> Any:
        return [o.publish_started(destination, headers) for o in self.observers]

    def publish_finished(self, state: Any, destination: str, error: BaseException | None) -> None:
        for observer, own in zip(reversed(self.observers), reversed(state), strict=True):
            observer.publish_finished(own, destination, error)

    def message_stored(self, headers: dict[str, Any]) -> None:
        for observer in self.observers:
            observer.message_stored(headers)

    def saga_transitioned(self, step: SagaStep) -> None:
        for observer in self.observers:
            observer.saga_transitioned(step)

    def saga_conflicted(self, saga: str) -> None:
        for observer in self.observers:
            observer.saga_conflicted(saga)


def combine(observers: Sequence[Observer]) -> Observer | None:
    """None for no observer, the observer itself for one, ``Observers`` for more."""
    if not observers:
        return None
    if len(observers) == 1:
        return observers[0]
    return Observers(observers)
