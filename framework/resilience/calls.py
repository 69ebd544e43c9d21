"""Breakers around any awaited call: an HTTP API, a database, another SDK.

Declare the call beside the downstreams, with the same ``BreakerConfig``::

    breakers = Breakers([Downstream("inventory"), ExternalCall("payment-gateway", timeout=2.0)])

then guard a block, or a function that returns a value::

    async with breakers.call("payment-gateway"):
        await client.post(...)

    @breakers.guard("payment-gateway", fallback=CachedResult(max_age=60))
    async def exchange_rate(currency: str) -> float: ...

A call breaker is a ``CircuitBreaker`` like a downstream's: the same window, thresholds,
events, metrics, shared transitions and ``leveret breakers`` line. Only a blocked broker
connection leaves it alone (it says nothing about an external API). While it refuses, the block
raises ``BreakerOpen`` before it runs (a handler marked ``defer_when_open`` then defers its
message, as for a refused send), or the guarded function answers from its fallback.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import math
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

import msgspec

from framework.errors import ConfigurationError
from framework.resilience.breaker import CircuitBreaker, Clock, Outcome
from framework.resilience.config import BreakerConfig
from framework.resilience.downstream import check_breaker_name, check_cache_bounds
from framework.resilience.fallback import RecentValues
from framework.resilience.gate import LiveBreaker

__all__ = [
    "CachedResult",
    "CallGate",
    "DefaultResult",
    "ExternalCall",
    "GuardedCall",
    "ResultFallback",
]

P = ParamSpec("P")
R = TypeVar("R")

_FAILURE = Outcome.FAILURE
_SUCCESS = Outcome.SUCCESS
_MISSING: Any = object()
_key_encoder = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class ExternalCall:
    """A breaker for calls the app makes itself, outside the broker.

    Args:
        name: the breaker's name, in logs, errors, metrics and ``leveret breakers``.
        config: thresholds, window and waits, as for a ``Downstream``. Slow calls count by
            ``slow_call_duration``; exceptions by ``record_exceptions``/``ignore_exceptions``.
        timeout: seconds a guarded call may take; past it the call is cancelled, raises
            ``TimeoutError`` and counts as a failure (unless the config ignores
            ``TimeoutError``). None: no limit.

    Raises:
        ConfigurationError: a bad name or timeout.
    """

    name: str
    config: BreakerConfig = field(default_factory=BreakerConfig)
    timeout: float | None = None

    def __post_init__(self) -> None:
        where = f"ExternalCall({self.name!r})"
        check_breaker_name(where, self.name)
        if self.timeout is not None and not 0 < self.timeout < math.inf:
            raise ConfigurationError(f"{where}: timeout={self.timeout!r}: use seconds > 0 or None")


@dataclass(frozen=True, slots=True)
class CachedResult:
    """Answer with the last good result of the same function for the same arguments.

    Arguments are compared by value: hashable ones as they are, others (lists, dicts) by their
    JSON form; a call whose arguments are neither is not cached.

    Args:
        max_age: seconds a remembered result may be served; older ones are not.
        max_entries: distinct argument lists remembered per function (oldest go first).
    """

    max_age: float
    max_entries: int = 1024

    def __post_init__(self) -> None:
        check_cache_bounds(self)


@dataclass(frozen=True, slots=True)
class DefaultResult:
    """Answer with a fixed value, or one computed from the call's arguments (no I/O, please).

    Args:
        value: the result.
        compute: instead of ``value``, a function taking the guarded function's arguments.
    """

    value: Any = None
    compute: Callable[..., Any] | None = None

    def result_for(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The result for a call with ``args`` and ``kwargs``."""
        return self.value if self.compute is None else self.compute(*args, **kwargs)


ResultFallback = CachedResult | DefaultResult


class GuardedCall:
    """One call through a call breaker, as an async context manager (``Breakers.call``).

    Entering asks for a permit (``BreakerOpen`` when refused) and starts the timeout; leaving
    counts the block: returned (slow or not), raised (as the config classifies it), timed out
    (a failure), or cancelled from outside (not counted).

    Attributes:
        result: set it to what the call returned, for the config's ``record_result``.
        outcome: how the breaker counted the call; None while it runs, or when refused.
    """

    __slots__ = ("_deadline", "_gate", "_permit", "_started", "_timeout", "outcome", "result")

    def __init__(self, gate: CallGate, timeout: float | None) -> None:
        self._gate = gate
        self._timeout = timeout
        self._permit: int | None = None
        self._started = 0.0
        self._deadline: asyncio.Timeout | None = None
        self.result: object = None
        self.outcome: Outcome | None = None

    @property
    def permitted(self) -> bool:
        """Whether the breaker let the call through."""
        return self._permit is not None

    async def __aenter__(self) -> GuardedCall:
        gate = self._gate
        self._permit = gate.breaker.acquire()
        self._started = gate.clock()
        if self._timeout is not None:
            self._deadline = asyncio.timeout(self._timeout)
            await self._deadline.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        gate, permit = self._gate, self._permit
        assert permit is not None
        duration = gate.clock() - self._started
        breaker = gate.breaker
        if self._deadline is not None:
            try:
                await self._deadline.__aexit__(exc_type, exc, tb)
            except TimeoutError as timed_out:
                self.outcome = gate.timed_out(permit, duration, timed_out)
                raise TimeoutError(
                    f"the call guarded by breaker {breaker.name!r} took more than "
                    f"{self._timeout:g}s and was cancelled"
                ) from timed_out
        if exc is None:
            self.outcome = breaker.on_success(permit, duration, self.result)
        elif isinstance(exc, Exception):
            self.outcome = breaker.on_error(permit, duration, exc)
            if self.outcome is Outcome.IGNORED:
                gate.wake()
        else:
            gate.cancelled(permit)


class CallGate(LiveBreaker):
    """The breaker of one ``ExternalCall`` applied to blocks and guarded functions.

    Args:
        declared: the declaration.
        breaker: its breaker.
        clock: the breaker's clock.
    """

    __slots__ = ("_classify", "declared")

    def __init__(self, declared: ExternalCall, breaker: CircuitBreaker, clock: Clock) -> None:
        super().__init__(breaker, clock)
        self.declared = declared
        self._classify = declared.config.classifier()

    def attempt(self, timeout: float | None = None) -> GuardedCall:
        """One guarded call, within ``timeout`` seconds (None: the declaration's)."""
        return GuardedCall(self, timeout if timeout is not None else self.declared.timeout)

    def timed_out(self, permit: int, duration: float, exc: TimeoutError) -> Outcome:
        """Count a call cut off by its timeout: a failure, unless the config ignores it."""
        if self._classify(exc) is None:
            self.cancelled(permit)
            return Outcome.IGNORED
        self.breaker.record(permit, _FAILURE, duration)
        return _FAILURE

    def guard(
        self,
        func: Callable[P, Awaitable[R]],
        *,
        fallback: ResultFallback | tuple[ResultFallback, ...] | None,
        fallback_on_failure: bool,
        timeout: float | None,
    ) -> Callable[P, Coroutine[Any, Any, R]]:
        """``func`` guarded by this breaker, answering from ``fallback`` when refused.

        Raises:
            ConfigurationError: ``func`` is not an ``async def`` function, or a fallback is
                not a ``CachedResult`` or ``DefaultResult``.
        """
        where = f"@breakers.guard({self.breaker.name!r})"
        if not inspect.iscoroutinefunction(func):
            raise ConfigurationError(f"{where} guards async functions only, got {func!r}")
        fallbacks = (
            () if fallback is None else fallback if isinstance(fallback, tuple) else (fallback,)
        )
        for item in fallbacks:
            if not isinstance(item, CachedResult | DefaultResult):
                raise ConfigurationError(
                    f"{where}: a fallback is CachedResult(max_age=...) or DefaultResult(value), "
                    f"got {item!r}"
                )
        # Per function, never per breaker: two functions with the same arguments differ.
        caches = {
            item: RecentValues[Any, Any](max_age=item.max_age, max_entries=item.max_entries)
            for item in fallbacks
            if isinstance(item, CachedResult)
        }
        clock = self.clock

        def answer(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            for item in fallbacks:
                if isinstance(item, DefaultResult):
                    return item.result_for(args, kwargs)
                key = _arguments_key(args, kwargs)
                found = None if key is None else caches[item].recall(key, clock())
                if found is not None:
                    return found[0]
            return _MISSING

        @functools.wraps(func)
        async def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
            attempt = self.attempt(timeout)
            try:
                async with attempt:
                    result = attempt.result = await func(*args, **kwargs)
            except Exception:
                # Refused, or failed in a way the breaker counts: a fallback may answer.
                if not attempt.permitted or (fallback_on_failure and attempt.outcome is _FAILURE):
                    found = answer(args, kwargs)
                    if found is not _MISSING:
                        return found  # type: ignore[no-any-return]  # the caller's fallback
                raise
            if caches and attempt.outcome is _SUCCESS:
                key = _arguments_key(args, kwargs)
                if key is not None:
                    for cache in caches.values():
                        cache.remember(key, result, clock())
            return result

        return guarded


def _arguments_key(args: tuple[Any, ...], kwargs: dict[str, Any]) -> object | None:
    """A cache key equal for equal arguments, or None when they cannot be compared."""
    key = (args, tuple(sorted(kwargs.items())))
    try:
        hash(key)
    except TypeError:
        try:
            return _key_encoder.encode((args, kwargs))
        except (TypeError, msgspec.EncodeError):
            return None
    return key
