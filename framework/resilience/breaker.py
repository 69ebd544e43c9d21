"""The circuit breaker: a state machine with an injected clock and no tasks of its own.

A caller asks for a permit, makes the call, and reports how it went::

    permit = breaker.try_acquire()          # None: refused (open, or half-open is full)
    if permit is None:
        ...                                 # fallback, wait, or raise BreakerOpen
    started = clock()
    try:
        result = await call()
    except Exception as exc:
        breaker.on_error(permit, clock() - started, exc)
        raise
    breaker.on_success(permit, clock() - started, result)

A permit is the breaker's state epoch (an int it already holds: no allocation). Outcomes that
arrive after the breaker changed state are dropped, so a slow call admitted while closed cannot
decide a later half-open. Time-driven transitions (open -> half-open, a half-open that waited too
long -> open) happen when the breaker is next used or read, or when the owner calls ``tick()``
at ``next_deadline()``: the breaker itself never sleeps.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable

import structlog

from framework.errors import BreakerOpen, ConfigurationError
from framework.resilience.config import BreakerConfig, WindowType
from framework.resilience.events import (
    TRANSITION_EVENTS,
    BreakerEvent,
    BreakerMetrics,
    BreakerReset,
    CallNotPermitted,
    State,
    TransitionReason,
)
from framework.resilience.window import FAILED, SLOW, CountWindow, TimeWindow, Window

__all__ = ["CircuitBreaker", "Clock", "Listener", "Outcome"]

Clock = Callable[[], float]
Listener = Callable[[BreakerEvent], None]

_log = structlog.get_logger("leveret.breakers")

_CLOSED = State.CLOSED
_OPEN = State.OPEN
_HALF_OPEN = State.HALF_OPEN
_FORCED_OPEN = State.FORCED_OPEN
_DISABLED = State.DISABLED


class Outcome(enum.Enum):
    """How one call went, as the breaker counts it."""

    SUCCESS = "success"
    FAILURE = "failure"
    IGNORED = "ignored"


_SUCCESS = Outcome.SUCCESS
_FAILURE = Outcome.FAILURE
_IGNORED = Outcome.IGNORED


class CircuitBreaker:
    """Closed, open, half-open, forced-open and disabled, after Resilience4j.

    Args:
        name: what the breaker guards, in events, logs and errors.
        config: thresholds, window and waits.
        clock: monotonic seconds; inject a fake one in tests.

    Raises:
        ConfigurationError: the name is empty.
    """

    __slots__ = (
        "_classify",
        "_clock",
        "_count_window",
        "_epoch",
        "_granted",
        "_half_open_until",
        "_listeners",
        "_min_calls",
        "_not_permitted",
        "_open_reason",
        "_open_until",
        "_openings",
        "_permitted",
        "_probing",
        "_record_result",
        "_slow_duration",
        "_slow_threshold",
        "_state",
        "_threshold",
        "_transition_listeners",
        "_window",
        "config",
        "name",
    )

    def __init__(
        self, name: str, config: BreakerConfig | None = None, *, clock: Clock = time.monotonic
    ) -> None:
        if not name:
            raise ConfigurationError("a circuit breaker needs a name (the downstream it guards)")
        self.name = name
        self.config = config = config or BreakerConfig()
        self._clock = clock
        self._classify = config.classifier()
        self._threshold = config.failure_rate_threshold
        self._slow_threshold = config.slow_call_rate_threshold
        self._slow_duration = config.slow_call_duration
        self._permitted = config.permitted_calls_in_half_open
        self._min_calls = config.effective_minimum_calls
        self._record_result = config.record_result
        self._count_window = config.window_type is WindowType.COUNT
        self._listeners: list[Listener] = []  # every event
        self._transition_listeners: list[Listener] = []  # transitions only
        self._state = _CLOSED
        self._epoch = 0
        self._window: Window = self._closed_window()
        self._probing = False  # whether _window holds half-open probes (kept while open)
        self._granted = 0
        self._open_until = 0.0
        self._open_reason: TransitionReason | None = None
        self._half_open_until = 0.0
        self._openings = 0
        self._not_permitted = 0

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.name!r} {self._state.value}>"

    # -- the hot path ------------------------------------------------------------------------

    def try_acquire(self) -> int | None:
        """A permit for one call, or None when the call must not be made."""
        state = self._state
        if state is _CLOSED or state is _DISABLED:
            return self._epoch
        return self._acquire_guarded(state)

    def acquire(self, *, exchange: str = "", routing_key: str = "") -> int:
        """A permit for one call.

        Raises:
            BreakerOpen: the call must not be made; it names the breaker and ``routing_key``.
        """
        permit = self.try_acquire()
        if permit is None:
            raise self.refusal(exchange=exchange, routing_key=routing_key)
        return permit

    def on_success(self, permit: int, duration: float, result: object = None) -> Outcome:
        """Report a call that returned; ``record_result`` may still count it as failed."""
        predicate = self._record_result
        if predicate is not None and predicate(result):
            self.record(permit, _FAILURE, duration)
            return _FAILURE
        if (
            permit == self._epoch
            and self._state is _CLOSED
            and self._count_window
            and duration < self._slow_duration
        ):
            # The common case, kept short. In a count window a quick success can only lower
            # both rates, except when it brings the window up to minimum_calls.
            window = self._window
            window.add(0, 0.0)
            if window.calls == self._min_calls:
                self._check_closed(window)
            return _SUCCESS
        self.record(permit, _SUCCESS, duration)
        return _SUCCESS

    def on_error(self, permit: int, duration: float, exc: BaseException) -> Outcome:
        """Report a call that raised; the config's predicates decide how it counts."""
        verdict = self._classify(exc)
        outcome = _IGNORED if verdict is None else _FAILURE if verdict else _SUCCESS
        self.record(permit, outcome, duration)
        return outcome

    def release(self, permit: int) -> None:
        """Give a permit back unused (the call was not made, or was cancelled)."""
        self.record(permit, _IGNORED, 0.0)

    def record(self, permit: int, outcome: Outcome, duration: float) -> None:
        """Count one outcome. O(1); dropped when the breaker changed state since ``permit``."""
        if permit != self._epoch:
            return
        state = self._state
        if state is _CLOSED:
            if outcome is _IGNORED:
                return
            code = FAILED if outcome is _FAILURE else 0
            if duration >= self._slow_duration:
                code |= SLOW
            window = self._window
            window.add(code, self._clock() if type(window) is TimeWindow else 0.0)
            if window.calls >= self._min_calls:
                self._check_closed(window)
        elif state is _HALF_OPEN:
            if outcome is _IGNORED:
                self._granted -= 1  # another probe may go instead
                return
            code = FAILED if outcome is _FAILURE else 0
            if duration >= self._slow_duration:
                code |= SLOW
            window = self._window
            window.add(code, 0.0)
            if window.calls >= self._permitted:
                self._judge_probes(window)
        # Open, forced-open, disabled: nothing to count.

    # -- reading -----------------------------------------------------------------------------

    @property
    def state(self) -> State:
        """The current state, after any time-driven transition that is due."""
        self.tick()
        return self._state

    def retry_after(self) -> float | None:
        """Seconds until a call may be permitted: 0 when now, None when not on a timer."""
        self.tick()
        state = self._state
        if state is _CLOSED or state is _DISABLED:
            return 0.0
        if state is _OPEN:
            if math.isinf(self._open_until):
                return None
            return max(0.0, self._open_until - self._clock())
        if state is _HALF_OPEN:
            if self._granted < self._permitted:
                return 0.0
            # Full of probes: at the latest the half-open deadline decides.
            return max(0.0, self._half_open_until - self._clock())
        return None

    def next_deadline(self) -> float | None:
        """Clock time of the next time-driven transition (for the owner's timer), or None."""
        state = self._state
        if state is _OPEN and not math.isinf(self._open_until):
            return self._open_until
        if state is _HALF_OPEN:
            return self._half_open_until
        return None

    def tick(self) -> None:
        """Make the time-driven transitions that are due now."""
        state = self._state
        if state is _OPEN:
            if self.config.automatic_transition and self._clock() >= self._open_until:
                self._transition(_HALF_OPEN, TransitionReason.WAIT_ELAPSED)
        elif state is _HALF_OPEN and self._clock() >= self._half_open_until:
            self._open(TransitionReason.HALF_OPEN_TIMEOUT)

    def metrics(self) -> BreakerMetrics:
        """A snapshot of the state and the window that decides it."""
        self.tick()
        return self._snapshot()

    def _snapshot(self, state: State | None = None) -> BreakerMetrics:
        """The current window's numbers, reported under ``state`` (default: the current one)."""
        window = self._window
        window.advance(self._clock())
        calls = window.calls
        probing = self._probing
        rated = calls >= (self._permitted if probing else self._min_calls)
        state = state or self._state
        retry_after = None
        if state is _OPEN and not math.isinf(self._open_until):
            retry_after = max(0.0, self._open_until - self._clock())
        return BreakerMetrics(
            name=self.name,
            state=state,
            failure_rate=window.failed * 100.0 / calls if rated else None,
            slow_call_rate=window.slow * 100.0 / calls if rated else None,
            buffered=calls,
            failed=window.failed,
            slow=window.slow,
            slow_failed=window.slow_failed,
            not_permitted=self._not_permitted,
            window=f"{self._permitted} probes" if probing else self.config.describe_window(),
            retry_after=retry_after,
        )

    @property
    def open_reason(self) -> TransitionReason | None:
        """Why the breaker is open (open or forced-open), else None."""
        return self._open_reason if self._state in (_OPEN, _FORCED_OPEN) else None

    def refusal(self, *, exchange: str = "", routing_key: str = "") -> BreakerOpen:
        """The ``BreakerOpen`` error describing why a call is refused right now."""
        reason = self.open_reason
        return BreakerOpen(
            self.name,
            state=self._state.value,
            retry_after=self.retry_after(),
            exchange=exchange,
            routing_key=routing_key,
            reason=reason.value if reason is not None else None,
        )

    # -- listeners ---------------------------------------------------------------------------

    def subscribe(
        self, listener: Listener, *, transitions_only: bool = False
    ) -> Callable[[], None]:
        """Call ``listener(event)`` on every transition and (unless ``transitions_only``) every
        refused call; returns a function that unsubscribes it."""
        chosen = self._transition_listeners if transitions_only else self._listeners
        chosen.append(listener)

        def unsubscribe() -> None:
            if listener in chosen:
                chosen.remove(listener)

        return unsubscribe

    # -- transitions on demand ---------------------------------------------------------------

    def transition_to_open(
        self,
        reason: TransitionReason = TransitionReason.MANUAL,
        *,
        wait: float | None = None,
        origin: str | None = None,
    ) -> None:
        """Open now, for ``wait`` seconds (``inf``: until told otherwise; None: the config's)."""
        self._open(reason, wait=wait, origin=origin)

    def transition_to_half_open(
        self, reason: TransitionReason = TransitionReason.MANUAL, *, origin: str | None = None
    ) -> None:
        """Let probes through now."""
        self._transition(_HALF_OPEN, reason, origin=origin)

    def transition_to_closed(
        self, reason: TransitionReason = TransitionReason.MANUAL, *, origin: str | None = None
    ) -> None:
        """Close now, with an empty window."""
        self._transition(_CLOSED, reason, origin=origin)

    def transition_to_forced_open(
        self, reason: TransitionReason = TransitionReason.MANUAL, *, origin: str | None = None
    ) -> None:
        """Refuse every call until transitioned again; no timer brings it back."""
        self._transition(_FORCED_OPEN, reason, origin=origin)

    def transition_to_disabled(
        self, reason: TransitionReason = TransitionReason.MANUAL, *, origin: str | None = None
    ) -> None:
        """Permit every call and count nothing until transitioned again."""
        self._transition(_DISABLED, reason, origin=origin)

    def reset(self) -> None:
        """Back to closed with an empty window and zeroed counters."""
        before = self._state
        self._not_permitted = 0
        self._openings = 0
        self._enter(_CLOSED)
        self._emit_transition(
            BreakerReset, before, _CLOSED, TransitionReason.MANUAL, None, None, None
        )

    # -- internals ---------------------------------------------------------------------------

    def _closed_window(self) -> Window:
        size = self.config.window_size
        if self.config.window_type is WindowType.TIME:
            return TimeWindow(size)
        return CountWindow(size)

    def _acquire_guarded(self, state: State) -> int | None:
        now = self._clock()
        if state is _OPEN:
            if now < self._open_until:
                return self._refuse(state)
            self._transition(_HALF_OPEN, TransitionReason.WAIT_ELAPSED)
            state = self._state
        if state is _HALF_OPEN:
            if now >= self._half_open_until:
                self._open(TransitionReason.HALF_OPEN_TIMEOUT)
                return self._refuse(self._state)
            if self._granted < self._permitted:
                self._granted += 1
                return self._epoch
        return self._refuse(self._state)

    def _refuse(self, state: State) -> int | None:
        """Count a refused call; always None (no permit), to be returned by the caller."""
        self._not_permitted += 1
        if self._listeners:
            self._emit(CallNotPermitted(self.name, self._clock(), state))
        return None

    def _check_closed(self, window: Window) -> None:
        calls = window.calls
        if window.failed * 100.0 >= self._threshold * calls:
            self._open(TransitionReason.FAILURE_RATE)
        elif window.slow * 100.0 >= self._slow_threshold * calls:
            self._open(TransitionReason.SLOW_CALL_RATE)

    def _judge_probes(self, window: Window) -> None:
        calls = window.calls
        if window.failed * 100.0 >= self._threshold * calls:
            self._open(TransitionReason.PROBES_FAILED)
        elif window.slow * 100.0 >= self._slow_threshold * calls:
            self._open(TransitionReason.PROBES_SLOW)
        else:
            self._transition(_CLOSED, TransitionReason.PROBES_SUCCEEDED)

    def _open(
        self, reason: TransitionReason, *, wait: float | None = None, origin: str | None = None
    ) -> None:
        self._transition(_OPEN, reason, wait=wait, origin=origin)

    def _transition(
        self,
        to: State,
        reason: TransitionReason,
        *,
        wait: float | None = None,
        origin: str | None = None,
    ) -> None:
        before = self._state
        if to is before and to is not _OPEN:
            return
        if to is _OPEN:
            if wait is None:
                self._openings += 1
                wait = self.config.open_wait(self._openings)
            self._open_until = self._clock() + wait
            self._open_reason = reason
        elif to is _FORCED_OPEN:
            self._open_reason = reason
        elif to is _CLOSED:
            self._openings = 0
        # Events report the window that decided the transition, not the fresh one after it.
        decided = self._snapshot(to) if self._listeners or self._transition_listeners else None
        self._enter(to)
        event = TRANSITION_EVENTS[to]
        wait = wait if to is _OPEN else None
        self._emit_transition(event, before, to, reason, wait, origin, decided)

    def _enter(self, to: State) -> None:
        self._state = to
        self._epoch += 1
        self._granted = 0
        if to is _CLOSED:
            self._window = self._closed_window()
            self._probing = False
        elif to is _HALF_OPEN:
            self._window = CountWindow(self._permitted)
            self._probing = True
            self._half_open_until = self._clock() + self.config.max_wait_in_half_open
        # Open and forced-open keep the window that opened them, for metrics and logs.

    def _emit_transition(
        self,
        event_type: type[BreakerEvent],
        before: State,
        to: State,
        reason: TransitionReason,
        wait: float | None,
        origin: str | None,
        metrics: BreakerMetrics | None,
    ) -> None:
        if not self._listeners and not self._transition_listeners:
            return
        self._emit(
            event_type(  # type: ignore[call-arg]  # every transition event has these fields
                self.name,
                self._clock(),
                from_state=before,
                to_state=to,
                reason=reason,
                metrics=metrics or self._snapshot(),  # no tick(): it could transition mid-event
                wait=wait,
                origin=origin,
            )
        )

    def _emit(self, event: BreakerEvent) -> None:
        listeners = self._listeners
        if not isinstance(event, CallNotPermitted):
            listeners = self._transition_listeners + listeners
        for listener in listeners:
            try:
                listener(event)
            except Exception:
                # A broken listener must not break the call path or the state machine.
                _log.exception("breaker_listener_failed", breaker=self.name)
