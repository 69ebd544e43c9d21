"""What a breaker tells the world: its states, typed events, and a metrics snapshot.

Events are frozen objects handed synchronously to the listeners of a breaker
(``CircuitBreaker.subscribe``). They are built only when someone listens, and only on
transitions and refused calls, never on the hot path of a permitted call.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import ClassVar

__all__ = [
    "BreakerClosed",
    "BreakerDisabled",
    "BreakerEvent",
    "BreakerForcedOpen",
    "BreakerHalfOpened",
    "BreakerMetrics",
    "BreakerOpened",
    "BreakerReset",
    "CallNotPermitted",
    "State",
    "StateTransition",
    "TransitionReason",
]


class State(enum.StrEnum):
    """The states of a circuit breaker."""

    CLOSED = "closed"  # calls go through and are counted
    OPEN = "open"  # calls are refused until the wait is over
    HALF_OPEN = "half_open"  # a few probes go through; their outcome closes or re-opens
    FORCED_OPEN = "forced_open"  # refused until an operator transitions it (no timer)
    DISABLED = "disabled"  # calls go through and nothing is counted


class TransitionReason(enum.StrEnum):
    """Why a breaker changed state."""

    FAILURE_RATE = "failure_rate"
    SLOW_CALL_RATE = "slow_call_rate"
    WAIT_ELAPSED = "wait_elapsed"
    PROBES_SUCCEEDED = "probes_succeeded"
    PROBES_FAILED = "probes_failed"
    PROBES_SLOW = "probes_slow"
    HALF_OPEN_TIMEOUT = "half_open_timeout"  # a probe never completed (Resilience4j #903)
    CONNECTION_BLOCKED = "connection_blocked"  # the broker raised a resource alarm
    CONNECTION_UNBLOCKED = "connection_unblocked"
    REMOTE = "remote"  # a sibling worker of the same service transitioned
    MANUAL = "manual"  # called by code or an operator


@dataclass(frozen=True, slots=True)
class BreakerMetrics:
    """A snapshot of a breaker's state and the window that decides it.

    In half-open the window is the probes'; in open it is the window that opened the breaker.

    Args:
        failure_rate: percent of failed calls, None until ``minimum_calls`` are buffered.
        slow_call_rate: percent of slow calls, None until ``minimum_calls`` are buffered.
        buffered: calls in the window (ignored calls are not).
        failed: failed calls in the window.
        slow: slow calls in the window (successful or not).
        slow_failed: calls both slow and failed.
        not_permitted: calls refused since the breaker was created or last reset.
        retry_after: seconds until a probe may go (open state only), None otherwise.
    """

    name: str
    state: State
    failure_rate: float | None
    slow_call_rate: float | None
    buffered: int
    failed: int
    slow: int
    slow_failed: int
    not_permitted: int
    window: str
    retry_after: float | None = None

    @property
    def successful(self) -> int:
        """Buffered calls that did not fail."""
        return self.buffered - self.failed


@dataclass(frozen=True, slots=True)
class BreakerEvent:
    """Base of every breaker event; ``at`` is the breaker clock's time."""

    breaker: str
    at: float
    log_event: ClassVar[str] = "breaker_event"


@dataclass(frozen=True, slots=True)
class StateTransition(BreakerEvent):
    """A breaker changed state.

    Args:
        from_state: the state it left.
        to_state: the state it entered.
        reason: why.
        metrics: the window that decided the transition (for a close, the probes'), reported
            under the new state.
        wait: seconds it will stay open (open states only); ``inf`` while a resource alarm lasts.
        origin: the worker whose transition this mirrors (shared state), else None.
    """

    from_state: State = State.CLOSED
    to_state: State = State.CLOSED
    reason: TransitionReason = TransitionReason.MANUAL
    metrics: BreakerMetrics | None = None
    wait: float | None = None
    origin: str | None = None
    log_event: ClassVar[str] = "breaker_transitioned"


@dataclass(frozen=True, slots=True)
class BreakerOpened(StateTransition):
    """The breaker opened: calls are refused for ``wait`` seconds."""

    log_event: ClassVar[str] = "breaker_opened"


@dataclass(frozen=True, slots=True)
class BreakerHalfOpened(StateTransition):
    """The breaker lets ``permitted_calls_in_half_open`` probes through."""

    log_event: ClassVar[str] = "breaker_half_opened"


@dataclass(frozen=True, slots=True)
class BreakerClosed(StateTransition):
    """The breaker closed: calls go through again."""

    log_event: ClassVar[str] = "breaker_closed"


@dataclass(frozen=True, slots=True)
class BreakerForcedOpen(StateTransition):
    """The breaker was forced open: every call is refused until it is transitioned again."""

    log_event: ClassVar[str] = "breaker_forced_open"


@dataclass(frozen=True, slots=True)
class BreakerDisabled(StateTransition):
    """The breaker was disabled: every call goes through, nothing is counted."""

    log_event: ClassVar[str] = "breaker_disabled"


@dataclass(frozen=True, slots=True)
class BreakerReset(StateTransition):
    """The breaker was reset: closed, with an empty window and counters."""

    log_event: ClassVar[str] = "breaker_reset"


@dataclass(frozen=True, slots=True)
class CallNotPermitted(BreakerEvent):
    """A call was refused; ``state`` is the breaker's state at that moment."""

    state: State = State.OPEN
    log_event: ClassVar[str] = "breaker_call_rejected"


TRANSITION_EVENTS: dict[State, type[StateTransition]] = {
    State.OPEN: BreakerOpened,
    State.HALF_OPEN: BreakerHalfOpened,
    State.CLOSED: BreakerClosed,
    State.FORCED_OPEN: BreakerForcedOpen,
    State.DISABLED: BreakerDisabled,
}
