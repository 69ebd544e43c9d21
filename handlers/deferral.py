"""Defer the message of a transactional handler whose call a breaker refused.

``@defer_when_open`` marks a handler so that the breakers' ``HandlerGuard`` re-queues its
message, after the breaker's wait, when a breaker refuses a call in it. The app looks for the
marking on the function it runs, and for a ``transactional=True`` handler that is the framework's
wrapper (``framework.app.transactional``), which does not carry the marking over: the guard is
not installed and a refusal fails the delivery, using up a retry attempt. Until the framework
carries it over, ``DeferRefusedCalls`` does for the shop what the guard would. Remove it then:
the handlers are marked already.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from framework.errors import BreakerOpen
from framework.messages import MessageKind
from framework.middleware import Incoming, Next
from framework.resilience import Breakers, Deferral

__all__ = ["DeferRefusedCalls"]


class DeferRefusedCalls:
    """Consume middleware: a command or event whose handler was refused by one of the named
    breakers comes back after the breaker's wait, without using up an attempt.

    ``Breakers.defer`` publishes it to the delay queue as long as its wait, which exists when it
    is one of the app's retry delays: keep ``Breakers(defer_delays=...)`` among them (both
    default to 1, 5 and 30 seconds).

    Args:
        breakers: the app's breakers, which publish the deferred message.
        names: the breakers whose refusals defer (the shop's external calls).
        deferral: how often one message may be deferred.
    """

    def __init__(
        self, breakers: Breakers, names: Collection[str], *, deferral: Deferral | None = None
    ) -> None:
        self._breakers = breakers
        self._names = frozenset(names)
        self._deferral = deferral or Deferral()

    async def __call__(self, msg: Incoming, call_next: Next) -> Any:
        try:
            return await call_next(msg)
        except BreakerOpen as refused:
            if refused.breaker not in self._names or msg.handler.kind is MessageKind.QUERY:
                raise
            if not await self._breakers.defer(msg, refused, self._deferral):
                raise
            return None
