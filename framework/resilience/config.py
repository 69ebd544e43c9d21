"""Configuration of one circuit breaker: a frozen object, validated when it is built.

The fields and their meaning follow Resilience4j's ``CircuitBreakerConfig``; where Resilience4j
allows a half-open state to wait forever for its probes (its issue #903), leveret does not:
``max_wait_in_half_open`` is always finite.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass

from framework.backoff import Backoff
from framework.errors import ConfigurationError

__all__ = ["Backoff", "BreakerConfig", "ExceptionPredicate", "WindowType"]

ExceptionPredicate = Callable[[BaseException], bool]


class WindowType(enum.StrEnum):
    """How the sliding window that computes the failure rate is measured."""

    COUNT = "count"  # the last ``window_size`` calls
    TIME = "time"  # the calls of the last ``window_size`` seconds


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """How a breaker counts, when it opens and how it comes back.

    Args:
        window_type: ``COUNT`` (the last ``window_size`` calls) or ``TIME`` (the calls of the
            last ``window_size`` whole seconds).
        window_size: calls, or seconds, in the sliding window.
        minimum_calls: no rate is computed (and the breaker cannot open) before this many calls
            are in the window; capped at ``window_size`` for a count window.
        failure_rate_threshold: percent of failed calls at or above which the breaker opens.
        slow_call_duration: seconds at or above which a call counts as slow.
        slow_call_rate_threshold: percent of slow calls at or above which the breaker opens
            (100 means only when every call is slow).
        permitted_calls_in_half_open: probes let through in half-open; the breaker closes or
            re-opens once all of them have an outcome.
        max_wait_in_half_open: seconds half-open may wait for its probes; past it the breaker
            opens again, so a probe that never completes cannot wedge it.
        wait_in_open: seconds to stay open, or a function of the number of consecutive openings
            (``Backoff``) for a growing wait with jitter.
        automatic_transition: go half-open as soon as the wait is over (via a timer armed by the
            app) instead of on the first call after it.
        record_exceptions: exception types that count as failures; empty means every exception
            not ignored. Other exceptions count as successes.
        ignore_exceptions: exception types that count neither way (a half-open probe that ends
            with one gives its permit back).
        record_exception: further predicate: True counts the exception as a failure.
        ignore_exception: further predicate: True ignores the exception; wins over recording.
        record_result: predicate on a successful call's result: True counts it as a failure.
    """

    window_type: WindowType = WindowType.COUNT
    window_size: int = 50
    minimum_calls: int = 10
    failure_rate_threshold: float = 50.0
    slow_call_duration: float = 5.0
    slow_call_rate_threshold: float = 100.0
    permitted_calls_in_half_open: int = 3
    max_wait_in_half_open: float = 30.0
    wait_in_open: float | Callable[[int], float] = 30.0
    automatic_transition: bool = False
    record_exceptions: tuple[type[BaseException], ...] = ()
    ignore_exceptions: tuple[type[BaseException], ...] = ()
    record_exception: ExceptionPredicate | None = None
    ignore_exception: ExceptionPredicate | None = None
    record_result: Callable[[object], bool] | None = None

    def __post_init__(self) -> None:
        def bad(what: str) -> ConfigurationError:
            return ConfigurationError(f"BreakerConfig: {what}")

        if not isinstance(self.window_type, WindowType):
            raise bad(f"window_type={self.window_type!r}: use WindowType.COUNT or WindowType.TIME")
        if _not_int(self.window_size) or self.window_size < 1:
            raise bad(f"window_size={self.window_size!r}: use a whole number >= 1")
        if _not_int(self.minimum_calls) or self.minimum_calls < 1:
            raise bad(f"minimum_calls={self.minimum_calls!r}: use a whole number >= 1")
        for name in ("failure_rate_threshold", "slow_call_rate_threshold"):
            value = getattr(self, name)
            if not 0 < value <= 100:
                raise bad(f"{name}={value!r}: use a percentage above 0 and at most 100")
        if not self.slow_call_duration > 0:
            raise bad(f"slow_call_duration={self.slow_call_duration!r}: use seconds > 0")
        if _not_int(self.permitted_calls_in_half_open) or self.permitted_calls_in_half_open < 1:
            raise bad(
                f"permitted_calls_in_half_open={self.permitted_calls_in_half_open!r}: "
                "use a whole number >= 1"
            )
        if not (0 < self.max_wait_in_half_open < math.inf):
            raise bad(
                f"max_wait_in_half_open={self.max_wait_in_half_open!r}: use finite seconds > 0 "
                "(a half-open breaker must not wait forever for a probe that never completes)"
            )
        wait = self.wait_in_open
        if not callable(wait) and not (0 <= wait < math.inf):
            raise bad(f"wait_in_open={wait!r}: use finite seconds >= 0 or a Backoff")
        for name in ("record_exceptions", "ignore_exceptions"):
            types = getattr(self, name)
            if not isinstance(types, tuple) or not all(
                isinstance(t, type) and issubclass(t, BaseException) for t in types
            ):
                raise bad(f"{name}={types!r}: use a tuple of exception classes")

    @property
    def effective_minimum_calls(self) -> int:
        """``minimum_calls``, capped at the window size for a count window."""
        if self.window_type is WindowType.COUNT:
            return min(self.minimum_calls, self.window_size)
        return self.minimum_calls

    def open_wait(self, openings: int) -> float:
        """Seconds to stay open after opening number ``openings`` (1 after a close)."""
        wait = self.wait_in_open
        return float(wait(openings)) if callable(wait) else float(wait)

    @property
    def longest_open_wait(self) -> float | None:
        """The longest wait in open state this config can produce: ``wait_in_open`` itself, a
        ``Backoff``'s ``longest``, or None for another function (its bound is unknown)."""
        wait = self.wait_in_open
        if isinstance(wait, Backoff):
            return wait.longest
        return None if callable(wait) else float(wait)

    def describe_window(self) -> str:
        """``"last 50 calls"`` or ``"last 60s"``, for logs and the CLI."""
        if self.window_type is WindowType.COUNT:
            return f"last {self.window_size} calls"
        return f"last {self.window_size}s"

    def classifier(self) -> Callable[[BaseException], bool | None]:
        """``exc -> True`` (failure), ``False`` (success) or ``None`` (ignored), built once."""
        record_types, ignore_types = self.record_exceptions, self.ignore_exceptions
        record_pred, ignore_pred = self.record_exception, self.ignore_exception
        selective = bool(record_types) or record_pred is not None

        def classify(exc: BaseException) -> bool | None:
            if isinstance(exc, ignore_types) or (ignore_pred is not None and ignore_pred(exc)):
                return None
            if not selective:
                return True
            return isinstance(exc, record_types) or (record_pred is not None and record_pred(exc))

        return classify


def _not_int(value: object) -> bool:
    return not isinstance(value, int) or isinstance(value, bool)
