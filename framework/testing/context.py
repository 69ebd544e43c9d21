"""Contexts for calling a handler directly in a unit test, recording what it sends and logs.

::

    ctx = FakeContext()
    await reserve_stock(ReserveStock(order_id="o-1", sku="apple", qty=2), ctx)
    assert ctx.published == [StockReserved(order_id="o-1", sku="apple", qty=2)]
    assert [line.event for line in ctx.logs] == ["stock_reserved"]

No broker, no app and no event loop beyond the test's: the handler runs as a plain coroutine.
A handler that needs the store's transaction (``transactional=True``, ``ctx.tx``) or runs a
saga is better tested end to end with ``Harness``.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

import structlog

from framework import envelope
from framework.bus import Bus
from framework.codec import Codec
from framework.context import Context, QueryContext
from framework.messages import Command, Event
from framework.routing import Naming
from framework.transport.memory import MemoryTransport

__all__ = ["FakeContext", "FakeQueryContext", "LogLine"]


@dataclass(frozen=True, slots=True)
class LogLine:
    """One line a handler logged through ``ctx.log``.

    Args:
        level: the logger method called (``info``, ``warning``, ``exception``...).
        event: the event name, e.g. ``stock_reserved``.
        fields: the key-value pairs passed with it, and those the handler bound.
    """

    level: str
    event: str
    fields: Mapping[str, Any]


def _recording_logger(lines: list[LogLine]) -> Any:
    def record(_logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> Any:
        fields = dict(event_dict)
        lines.append(LogLine(level=method, event=str(fields.pop("event", "")), fields=fields))
        raise structlog.DropEvent

    return structlog.wrap_logger(
        None,
        processors=[record],
        wrapper_class=structlog.BoundLogger,
        cache_logger_on_first_use=True,
    )


def _fields(
    message_id: str,
    correlation_id: str | None,
    headers: Mapping[str, Any] | None,
    redelivered: bool,
    attempt: int,
    handler: str,
    saga_id: str | None,
) -> dict[str, Any]:
    merged = dict(headers or {})
    if saga_id is not None:
        merged[envelope.SAGA_ID] = saga_id
    return {
        "message_id": message_id,
        "correlation_id": correlation_id,
        "headers": merged,
        "redelivered": redelivered,
        "attempt": attempt,
        "handler": handler,
    }


class FakeContext(Context):
    """A command or event handler's ``Context`` that records instead of publishing.

    ``send`` and ``publish`` check the message's kind as the real ones do (``WrongBus``) and
    return ids ``<message id>/<handler>/<n>``, like a transactional handler's.

    Args:
        message_id: the id of the message being handled.
        correlation_id: its correlation id (default: ``message_id``).
        headers: its AMQP headers.
        redelivered: whether the broker had delivered it before.
        attempt: failed attempts before this one (the ``leveret-attempt`` header).
        handler: the handler's name as logs show it (``service.function``).
        saga_id: the saga it belongs to (the ``leveret-saga-id`` header).

    Attributes:
        sent: the commands sent, in order.
        published: the events published, in order.
        logs: the lines logged through ``ctx.log``.
    """

    __slots__ = ("logs", "published", "sent")

    def __init__(
        self,
        *,
        message_id: str = "test-message",
        correlation_id: str | None = None,
        headers: Mapping[str, Any] | None = None,
        redelivered: bool = False,
        attempt: int = 0,
        handler: str = "test.handler",
        saga_id: str | None = None,
    ) -> None:
        # A bus that is never connected: the overrides below are the only publish path.
        bus = Bus(MemoryTransport(), Codec(()), Naming("test"))
        super().__init__(
            bus,
            **_fields(message_id, correlation_id, headers, redelivered, attempt, handler, saga_id),
        )
        self.sent: list[Command] = []
        self.published: list[Event] = []
        self.logs: list[LogLine] = []
        self._log = _recording_logger(self.logs)

    def _next_id(self) -> str:
        return f"{self.message_id}/{self.handler}/{len(self.sent) + len(self.published)}"

    async def send(self, command: Command) -> str:
        """Record ``command``; returns the id it would carry.

        Raises:
            WrongBus: ``command`` is not a Command.
        """
        self._bus.check_bus(command, "send")
        message_id = self._next_id()
        self.sent.append(command)
        return message_id

    async def publish(self, event: Event, *, message_id: str | None = None) -> str:
        """Record ``event``; returns ``message_id`` or the id it would carry.

        Raises:
            WrongBus: ``event`` is not an Event.
        """
        self._bus.check_bus(event, "publish")
        chosen = message_id if message_id is not None else self._next_id()
        self.published.append(event)
        return chosen


class FakeQueryContext(QueryContext):
    """A query handler's ``QueryContext`` (read-only: no ``send``, no ``publish``) whose log
    lines are recorded in ``logs``; the arguments are ``FakeContext``'s."""

    __slots__ = ("logs",)

    def __init__(
        self,
        *,
        message_id: str = "test-message",
        correlation_id: str | None = None,
        headers: Mapping[str, Any] | None = None,
        redelivered: bool = False,
        attempt: int = 0,
        handler: str = "test.handler",
        saga_id: str | None = None,
    ) -> None:
        super().__init__(
            **_fields(message_id, correlation_id, headers, redelivered, attempt, handler, saga_id)
        )
        self.logs: list[LogLine] = []
        self._log = _recording_logger(self.logs)
