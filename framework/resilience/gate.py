"""One downstream at run time: its breaker around each publish or query, and what a refusal does.

The hot path (breaker closed, plain publish) is in ``BreakerMiddleware.__call__``: one
``try_acquire`` (returns an int the breaker already holds), two clock reads, the publish, one
``on_success``. What is here — waiting, retrying nacks, fallbacks — runs only when something
already went wrong, or for queries.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

from framework import envelope
from framework.bus import Outbound, PublishNext
from framework.errors import AccessRefused, PublishFailed, QueryFailed
from framework.resilience.breaker import CircuitBreaker, Clock, Outcome
from framework.resilience.downstream import CachedReply, Downstream, Fallback, WhenOpen
from framework.resilience.fallback import ReplyCache, answer_from
from framework.transport.base import Delivery

__all__ = ["Gate", "LiveBreaker", "fail_fast"]

# True while a handler runs (set by the breakers' consume middleware) or inside ``fail_fast()``:
# a refused send raises at once, whatever its downstream's ``when_open``.
_fail_fast: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "leveret_breakers_fail_fast", default=False
)


@contextlib.contextmanager
def fail_fast() -> Iterator[None]:
    """Within this block a refused send raises ``BreakerOpen`` at once, never waits.

    Handlers run so already. An outbox relay publishes its rows so, to keep a refused row (and
    the rows after it for the same destination) parked instead of holding the relay up.
    """
    token = _fail_fast.set(True)
    try:
        yield
    finally:
        _fail_fast.reset(token)


_FAILURE = Outcome.FAILURE


class LiveBreaker:
    """A breaker in a running app: the timer of its time-driven transitions and the callers
    waiting for it to change. What publishes and what guards calls to external APIs share.

    Args:
        breaker: the breaker.
        clock: the breaker's clock (deadlines of waiting callers are measured on it).
    """

    __slots__ = ("_timer", "_waiters", "breaker", "clock")

    def __init__(self, breaker: CircuitBreaker, clock: Clock) -> None:
        self.breaker = breaker
        self.clock = clock
        self._waiters: list[asyncio.Future[None]] = []
        self._timer: asyncio.TimerHandle | None = None

    def cancelled(self, permit: int) -> None:
        """The call was cancelled: no outcome to count; its permit goes back."""
        self.breaker.release(permit)
        self.wake()

    # -- waiting -----------------------------------------------------------------------------

    async def wait_change(self, until: float) -> None:
        """Wait for a transition, a permit given back, or a timer of this gate; at most until
        clock time ``until`` (measured on the gate's clock, so a fake clock wakes it via tick)."""
        remaining = until - self.clock()
        if remaining <= 0:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(remaining):
                await waiter
        except TimeoutError:
            pass
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def wake(self) -> None:
        """Let every waiting send look at the breaker again."""
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def arm_timer(self) -> None:
        """Schedule ``on_timer`` at the breaker's next time-driven transition (no task)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.breaker.next_deadline()
        if deadline is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # transitioned outside a loop (tests, tools): tick() does the work
        self._timer = loop.call_later(max(0.0, deadline - self.clock()), self.on_timer)

    def on_timer(self) -> None:
        """The deadline passed: transition if due, and let waiting sends try again."""
        self._timer = None
        self.breaker.tick()  # a transition re-arms the timer through the breakers' listener
        self.wake()

    def cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class Gate(LiveBreaker):
    """The breaker of one ``Downstream`` applied to publishes and queries, plus its reply caches.

    Args:
        downstream: the declaration.
        breaker: its breaker.
        clock: the breaker's clock (deadlines of waiting sends are measured on it).
    """

    __slots__ = ("_caches", "_fallbacks", "downstream", "wait_sends")

    def __init__(self, downstream: Downstream, breaker: CircuitBreaker, clock: Clock) -> None:
        super().__init__(breaker, clock)
        self.downstream = downstream
        self.wait_sends = downstream.when_open is WhenOpen.WAIT
        self._caches: dict[CachedReply, ReplyCache] = {}
        self._fallbacks: dict[type[Any], tuple[Fallback, ...]] = {}

    # -- after the call (the call itself is in BreakerMiddleware.__call__) --------------------

    def replied(self, out: Outbound, permit: int, duration: float, reply: Delivery) -> Delivery:
        """A query got its reply: an error reply is a failure; a good one is remembered."""
        breaker = self.breaker
        error = reply.headers.get(envelope.ERROR)
        if error is not None:
            exc = QueryFailed(
                out.routing_key, _text(reply.headers.get(envelope.ERROR_TYPE)), _text(error)
            )
            if breaker.on_error(permit, duration, exc) is _FAILURE:
                answer = self._fallback(out, cause=exc.error_type, on_failure=True)
                if answer is not None:
                    return answer
            return reply
        if breaker.on_success(permit, duration, reply) is _FAILURE:
            return reply
        fallbacks = self._fallbacks_for(out)
        if fallbacks:
            now = self.clock()
            for fallback in fallbacks:
                if isinstance(fallback, CachedReply):
                    self._caches[fallback].remember(out, reply, now)
        return reply

    async def failed(
        self,
        out: Outbound,
        call_next: PublishNext,
        permit: int,
        duration: float,
        exc: Exception,
    ) -> Any:
        """The call raised: count it; a query may fall back, a waiting send retries."""
        outcome = self.breaker.on_error(permit, duration, exc)
        if outcome is Outcome.IGNORED:
            self.wake()  # a half-open permit came back: a waiting send may take it
        elif outcome is _FAILURE:
            if out.timeout is not None:
                answer = self._fallback(out, cause=type(exc).__name__, on_failure=True)
                if answer is not None:
                    return answer
            elif _retriable(exc) and self._may_wait():
                return await self._send_waiting(out, call_next, exc)
        raise exc

    async def refused(self, out: Outbound, call_next: PublishNext) -> Any:
        """The breaker refused the call: a fallback answers, the send waits, or BreakerOpen."""
        if out.timeout is not None:
            answer = self._fallback(out, cause="breaker_open", on_failure=False)
            if answer is not None:
                return answer
        elif self._may_wait():
            return await self._send_waiting(out, call_next, None)
        raise self.breaker.refusal(exchange=out.exchange, routing_key=out.routing_key)

    def _may_wait(self) -> bool:
        return self.wait_sends and not _fail_fast.get()

    async def _send_waiting(
        self, out: Outbound, call_next: PublishNext, failure: Exception | None
    ) -> Any:
        """``WhenOpen.WAIT``: publish as soon as the breaker permits, retrying failed publishes
        (same message id: a consumer's inbox drops a duplicate), until ``max_wait``."""
        breaker, clock, downstream = self.breaker, self.clock, self.downstream
        deadline = clock() + downstream.max_wait
        if failure is not None:
            await self.wait_change(min(clock() + downstream.retry_interval, deadline))
        while True:
            permit = breaker.try_acquire()
            if permit is None:
                if clock() >= deadline:
                    refusal = breaker.refusal(exchange=out.exchange, routing_key=out.routing_key)
                    raise refusal from failure
                await self.wait_change(deadline)
                continue
            started = clock()
            try:
                result = await call_next(out)
            except Exception as exc:
                outcome = breaker.on_error(permit, clock() - started, exc)
                if outcome is not _FAILURE or not _retriable(exc):
                    raise
                if clock() >= deadline:
                    raise
                failure = exc
                await self.wait_change(min(clock() + downstream.retry_interval, deadline))
                continue
            except BaseException:
                breaker.release(permit)
                self.wake()
                raise
            breaker.on_success(permit, clock() - started)
            return result

    # -- fallbacks ---------------------------------------------------------------------------

    def _fallbacks_for(self, out: Outbound) -> tuple[Fallback, ...]:
        query = type(out.message)
        found = self._fallbacks.get(query)
        if found is None:
            found = self._fallbacks[query] = self.downstream.fallback_for(query)
            for fallback in found:
                if isinstance(fallback, CachedReply) and fallback not in self._caches:
                    self._caches[fallback] = ReplyCache(fallback)
        return found

    def _fallback(self, out: Outbound, *, cause: str, on_failure: bool) -> Delivery | None:
        if on_failure and not self.downstream.fallback_on_failure:
            return None
        fallbacks = self._fallbacks_for(out)
        if not fallbacks:
            return None
        return answer_from(
            fallbacks, self._caches, out, breaker=self.breaker.name, cause=cause, now=self.clock()
        )


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _retriable(exc: Exception) -> bool:
    """Whether a waiting send may publish again after ``exc``: not when the broker refused it
    for lack of permission, which only a change of the deployment fixes."""
    return isinstance(exc, PublishFailed) and not isinstance(exc, AccessRefused)
