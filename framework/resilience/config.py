"""Configuration of one circuit breaker: a frozen object, validated when it is built.

The fields and their meaning follow Resilience4j's ``CircuitBreakerConfig``; where Resilience4j
allows a half-open state to wait forever for its probes (its issue #903), leveret does not:
``max_wait_in_half_open`` is always finite.
"""

from __future__ import annotations

import enum
import math
import warnings
from collections.abc import Callable
from dataclasses import InitVar, dataclass

from framework.backoff import Backoff
from framework.errors import ConfigurationError

__all__ = ["Backoff", "BreakerConfig", "ExceptionMatch", "ExceptionPredicate", "WindowType"]

ExceptionPredicate = Callable[[BaseException], bool]
# Which exceptions: a tuple of exception classes, or a predicate.
ExceptionMatch = tuple[type[BaseException], ...] | ExceptionPredicate


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
        record_exceptions: the exceptions that count as failures: a tuple of exception classes,
            or a predicate (True: a failure). Empty means every exception not ignored. Other
            exceptions count as successes.
        ignore_exceptions: the exceptions that count neither way (a half-open probe that ends
            with one gives its permit back): a tuple of exception classes, or a predicate (True:
            ignored). Ignoring wins over recording.
        record_exception: deprecated, pass the predicate as ``record_exceptions`` (given with
            classes there too, an exception counts as a failure if either says so).
        ignore_exception: deprecated, pass the predicate as ``ignore_exceptions`` (likewise).
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
    record_exceptions: ExceptionMatch = ()
    ignore_exceptions: ExceptionMatch = ()
    record_exception: InitVar[ExceptionPredicate | None] = None
    ignore_exception: InitVar[ExceptionPredicate | None] = None
    record_result: Callable[[object], bool] | None = None

    def __post_init__(
        self,
        record_exception: ExceptionPredicate | None,
        ignore_exception: ExceptionPredicate | None,
    ) -> None:
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
            match = getattr(self, name)
            if callable(match) and not isinstance(match, type):
                continue
            if not isinstance(match, tuple) or not all(
                isinstance(t, type) and issubclass(t, BaseException) for t in match
            ):
                raise bad(f"{name}={match!r}: use a tuple of exception classes, or a predicate")
        for old, predicate in (("record", record_exception), ("ignore", ignore_exception)):
            if predicate is None:
                continue
            warnings.warn(
                f"BreakerConfig({old}_exception=...) is deprecated: pass the predicate as "
                f"{old}_exceptions=...",
                DeprecationWarning,
                stacklevel=3,  # the caller of the dataclass's __init__
            )
            name = f"{old}_exceptions"
            object.__setattr__(self, name, _either(getattr(self, name), predicate))

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
        record, ignore = _predicate(self.record_exceptions), _predicate(self.ignore_exceptions)

        def classify(exc: BaseException) -> bool | None:
            if ignore is not None and ignore(exc):
                return None
            return True if record is None else record(exc)

        return classify


def _not_int(value: object) -> bool:
    return not isinstance(value, int) or isinstance(value, bool)


def _predicate(match: ExceptionMatch) -> ExceptionPredicate | None:
    """``match`` as a predicate; None for no classes at all."""
    if isinstance(match, tuple):
        if not match:
            return None
        return lambda exc: isinstance(exc, match)
    return match


def _either(match: ExceptionMatch, predicate: ExceptionPredicate) -> ExceptionMatch:
    """A match that holds where ``match`` or ``predicate`` does (the deprecated spelling)."""
    first = _predicate(match)
    if first is None:
        return predicate
    return lambda exc: first(exc) or predicate(exc)
