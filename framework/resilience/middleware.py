"""The breakers' two middlewares, and the decorator that lets a handler defer its message.

* ``BreakerMiddleware`` (publish side) finds the downstream of each outgoing message by its
  routing key — once per routing key, then a dict lookup — and sends it through that breaker.
* ``HandlerGuard`` (consume side) marks the handler's context, so refused sends raise at once
  inside handlers, and defers the message of a handler decorated with ``defer_when_open`` when
  such a refusal escapes it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar, overload

from framework.bus import Outbound, PublishNext
from framework.errors import BreakerOpen, ConfigurationError
from framework.messages import MessageKind
from framework.middleware import Incoming, Next
from framework.resilience.gate import Gate, _fail_fast

if TYPE_CHECKING:
    from framework.resilience.registry import Breakers

__all__ = ["BreakerMiddleware", "Deferral", "HandlerGuard", "defer_when_open", "deferral_of"]

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

_DEFER_ATTRIBUTE = "__leveret_defer_when_open__"
_UNRESOLVED: Any = object()


class BreakerMiddleware:
    """Publish middleware: every send, publish and query to a guarded downstream consults its
    breaker; other messages pass straight through.

    Args:
        gates: the downstreams' gates, in declaration order (the first match wins).
        events_exchange: the app's events exchange, to tell events from commands and queries
            (None: by the message's kind).
    """

    __slots__ = ("_events_exchange", "_gates", "_routes")

    def __init__(self, gates: Sequence[Gate], *, events_exchange: str | None = None) -> None:
        self._gates = tuple(gates)
        self._events_exchange = events_exchange
        self._routes: dict[str, Gate | None] = {}

    def bind(self, events_exchange: str) -> None:
        """Tell events apart by the exchange they are published on (set by the app)."""
        self._events_exchange = events_exchange
        self._routes.clear()

    def gate_for(self, exchange: str, routing_key: str) -> Gate | None:
        """The gate of messages published to ``exchange`` with ``routing_key``, or None when no
        breaker guards them (resolved once per routing key)."""
        gate = self._routes.get(routing_key, _UNRESOLVED)
        if gate is _UNRESOLVED:
            gate = self._resolve(routing_key, is_event=exchange == self._events_exchange)
        return gate  # type: ignore[no-any-return]  # a Gate or None, see _resolve

    def route(self, routing_key: str, *, is_event: bool = False) -> Gate | None:
        """The gate guarding ``routing_key``, looked up afresh (no cache)."""
        for gate in self._gates:
            if gate.downstream.matches(routing_key, is_event=is_event):
                return gate
        return None

    def _resolve(self, routing_key: str, *, is_event: bool) -> Gate | None:
        gate = self._routes[routing_key] = self.route(routing_key, is_event=is_event)
        return gate

    def __call__(self, out: Outbound, call_next: PublishNext) -> Coroutine[Any, Any, Any]:
        # A plain function returning the coroutine: no second coroutine frame per publish.
        return self.guard(call_next, out)

    def bind_next(self, call_next: PublishNext) -> PublishNext:
        """This middleware bound to the rest of the onion (``Bus`` composes with it): calling
        the result starts ``guard`` directly, without a wrapper coroutine per publish."""
        return partial(self.guard, call_next)

    async def guard(self, call_next: PublishNext, out: Outbound) -> Any:
        """Send ``out`` on through its destination's breaker (``call_next`` first, so that
        ``bind_next`` can bind it once)."""
        gate = self._routes.get(out.routing_key, _UNRESOLVED)
        if gate is _UNRESOLVED:
            if self._events_exchange is not None:
                is_event = out.exchange == self._events_exchange
            else:
                is_event = getattr(type(out.message), "__kind__", None) is MessageKind.EVENT
            gate = self._resolve(out.routing_key, is_event=is_event)
        if gate is None:
            return await call_next(out)
        # The hot path is written out here rather than in a Gate method: one coroutine frame
        # less per publish. Everything off the closed-and-fine path is the gate's.
        breaker = gate.breaker
        permit = breaker.try_acquire()
        if permit is None:
            return await gate.refused(out, call_next)
        clock = gate.clock
        started = clock()
        try:
            result = await call_next(out)
        except Exception as exc:
            return await gate.failed(out, call_next, permit, clock() - started, exc)
        except BaseException:
            gate.cancelled(permit)
            raise
        if out.timeout is None:
            breaker.on_success(permit, clock() - started)
            return result
        return gate.replied(out, permit, clock() - started, result)


@dataclass(frozen=True, slots=True)
class Deferral:
    """How a handler defers its message when a send in it is refused by a breaker.

    Args:
        max_deferrals: deferrals of one message before the refusal counts as a failure (the
            retry policy then applies); None for no limit.
    """

    max_deferrals: int | None = None


@overload
def defer_when_open(func: F, /) -> F: ...


@overload
def defer_when_open(*, max_deferrals: int | None = None) -> Callable[[F], F]: ...


def defer_when_open(
    func: F | None = None, /, *, max_deferrals: int | None = None
) -> F | Callable[[F], F]:
    """Mark a command or event handler: when a send in it hits an open breaker, its message is
    re-queued after the breaker's wait (through a TTL delay queue) instead of failing, and no
    retry attempt is used up.

    Works above or below the service decorator::

        @orders.command
        @defer_when_open(max_deferrals=20)
        async def place_order(cmd: PlaceOrder, ctx: Context) -> None: ...

    Raises:
        ConfigurationError: ``max_deferrals`` is below 1.
    """
    if max_deferrals is not None and (isinstance(max_deferrals, bool) or max_deferrals < 1):
        raise ConfigurationError(f"max_deferrals={max_deferrals!r}: use a number >= 1 or None")
    deferral = Deferral(max_deferrals)

    def mark(f: F) -> F:
        setattr(f, _DEFER_ATTRIBUTE, deferral)
        return f

    return mark(func) if func is not None else mark


def deferral_of(func: Callable[..., Any]) -> Deferral | None:
    """The ``defer_when_open`` marking of a handler function, if any."""
    found = getattr(func, _DEFER_ATTRIBUTE, None)
    return found if isinstance(found, Deferral) else None


class HandlerGuard:
    """Consume middleware installed with the breakers (outermost).

    The app installs it only on the handlers where it does something (see
    ``Breakers.consume_middleware_for``): a handler marked ``defer_when_open``, or every
    handler when some downstream makes refused sends wait (``WhenOpen.WAIT``), which handlers
    must not do.

    Args:
        breakers: the app's breakers, which publish deferred messages.
    """

    __slots__ = ("_breakers",)

    def __init__(self, breakers: Breakers) -> None:
        self._breakers = breakers

    def __call__(self, msg: Incoming, call_next: Next) -> Coroutine[Any, Any, Any]:
        return self.guard(call_next, msg)

    def bind_next(self, call_next: Next) -> Next:
        """This middleware bound to the rest of the onion (``compose`` uses it): no wrapper
        coroutine per delivery."""
        return partial(self.guard, call_next)

    async def guard(self, call_next: Next, msg: Incoming) -> Any:
        """Run the rest of the onion with refused sends failing fast; defer on a refusal."""
        try:
            # ``fail_fast()`` written out: a generator context manager per delivery costs more
            # than the breaker check itself.
            token = _fail_fast.set(True)
            try:
                return await call_next(msg)
            finally:
                _fail_fast.reset(token)
        except BreakerOpen as exc:
            deferral = deferral_of(msg.handler.func)
            if deferral is None or msg.handler.kind is MessageKind.QUERY:
                raise
            if not await self._breakers.defer(msg, exc, deferral):
                raise
            return None
