"""Consume middleware: an onion of ``async def __call__(msg, call_next)`` around each handler.

Middleware is composed once per handler at start-up; per message there is only the chain of
calls. A middleware can look at or replace the ``Incoming`` it passes on, time or log the call,
or raise to fail it (the retry policy then applies).

A middleware object may also have ``bind_next(call_next) -> Next``: ``compose`` then uses what
it returns as this layer (bound once to the rest of the onion) instead of wrapping ``__call__``
in a coroutine per message. The circuit breakers' middleware does so to stay off the hot path.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from framework.context import MessageContext
from framework.handlers import HandlerSpec
from framework.messages import Message
from framework.transport.base import Delivery

__all__ = ["Incoming", "Middleware", "Next", "compose"]


@dataclass(slots=True)
class Incoming:
    """A decoded message on its way to its handler."""

    message: Message
    context: MessageContext
    delivery: Delivery
    handler: HandlerSpec


Next = Callable[[Incoming], Awaitable[Any]]


class Middleware(Protocol):
    async def __call__(self, msg: Incoming, call_next: Next) -> Any: ...


def compose(middleware: Sequence[Middleware], innermost: Next) -> Next:
    """Wrap ``innermost`` so that ``middleware[0]`` runs first (outermost)."""
    chain = innermost
    for mw in reversed(middleware):
        chain = _link(mw, chain)
    return chain


def _link(mw: Middleware, call_next: Next) -> Next:
    # A middleware may bind itself to the rest of the onion (``bind_next(call_next)``, as the
    # circuit breakers' does): then no wrapper coroutine runs per message.
    bind_next = getattr(mw, "bind_next", None)
    if bind_next is not None:
        linked: Next = bind_next(call_next)
        return linked

    async def call(msg: Incoming) -> Any:
        return await mw(msg, call_next)

    return call
