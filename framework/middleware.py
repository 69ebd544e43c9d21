"""Consume middleware: an onion of ``async def __call__(msg, call_next)`` around each handler.

Middleware is composed once per handler at start-up; per message there is only the chain of
calls. A middleware can look at or replace the ``Incoming`` it passes on, time or log the call,
or raise to fail it (the retry policy then applies).
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
    async def call(msg: Incoming) -> Any:
        return await mw(msg, call_next)

    return call
