"""What a handler gets next to its message: metadata, a logger, and (for commands and events)
``send`` and ``publish`` that carry the correlation and causation ids forward."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import structlog

from framework import envelope
from framework.bus import Bus
from framework.messages import Command, Event, Message

if TYPE_CHECKING:
    from framework.saga.signing import Signer

__all__ = ["Context", "MessageContext", "QueryContext"]


class MessageContext:
    """Metadata of the message being handled and a logger bound to it."""

    __slots__ = (
        "_log",
        "attempt",
        "correlation_id",
        "handler",
        "headers",
        "message_id",
        "redelivered",
        "saga_id",
    )

    def __init__(
        self,
        *,
        message_id: str,
        correlation_id: str | None,
        headers: Mapping[str, Any],
        redelivered: bool,
        attempt: int,
        handler: str,
    ) -> None:
        self.message_id = message_id
        self.correlation_id = correlation_id or message_id
        self.headers = headers
        self.redelivered = redelivered
        self.attempt = attempt
        self.handler = handler
        saga = headers.get(envelope.SAGA_ID)
        self.saga_id: str | None = saga if isinstance(saga, str) else None
        self._log: Any = None

    @property
    def causation_id(self) -> str | None:
        """Id of the message that caused this one, if its sender said."""
        value = self.headers.get(envelope.CAUSATION_ID)
        return value if isinstance(value, str) else None

    @property
    def log(self) -> Any:
        """A structlog logger bound to message id, correlation id and handler (made lazily)."""
        if self._log is None:
            self._log = structlog.get_logger("leveret.handler").bind(
                message_id=self.message_id,
                correlation_id=self.correlation_id,
                handler=self.handler,
            )
        return self._log


class QueryContext(MessageContext):
    """Context of a query handler: read-only, so it has no ``send`` or ``publish``."""

    __slots__ = ()


class Context(MessageContext):
    """Context of a command or event handler.

    In a ``transactional=True`` handler, ``tx`` is the store transaction the handler's inbox row
    and outbox rows are written in, and ``send``/``publish`` queue messages in that outbox: they
    are published only after the transaction commits, under ids derived from the message being
    handled (keyed with the app's secret, so that no one can pre-empt them in an inbox).
    """

    __slots__ = ("_bus", "_outbox", "_signer", "tx")

    def __init__(self, bus: Bus, **fields: Any) -> None:
        super().__init__(**fields)
        self._bus = bus
        self._outbox: list[tuple[Message, str]] | None = None
        self._signer: Signer | None = None
        self.tx: Any = None

    def begin_transaction(self, tx: Any, *, signer: Signer | None = None) -> None:
        """Route ``send``/``publish`` into an outbox for ``tx`` (used by the app).

        Args:
            tx: the store transaction of the handler's inbox and outbox rows.
            signer: keys the ids of the queued messages (``Signer.emitted_id``); without one
                they are ``<message id>/<handler>/<n>``, which whoever chose the incoming
                message's id can predict.
        """
        self.tx = tx
        self._outbox = []
        self._signer = signer

    def take_outbox(self) -> list[tuple[Message, str]]:
        """The messages queued since ``begin_transaction``, with their deterministic ids."""
        queued, self._outbox = self._outbox or [], None
        self.tx = self._signer = None
        return queued

    def _queue(self, message: Message, message_id: str | None = None) -> str:
        assert self._outbox is not None
        if message_id is None:
            n = len(self._outbox)
            if self._signer is None:
                message_id = f"{self.message_id}/{self.handler}/{n}"
            else:
                message_id = self._signer.emitted_id(self.message_id, self.handler, n)
        self._outbox.append((message, message_id))
        return message_id

    def event_id(self, slot: str) -> str:
        """The id of an event this transactional handler stores while handling the message:
        ``<message id>/<handler>/<slot>``, with a tag keyed with the app's secret when the app
        gave one (``begin_transaction(signer=...)``), so no one can pre-empt it in an inbox."""
        if self._signer is None:
            return f"{self.message_id}/{self.handler}/{slot}"
        return self._signer.event_id(self.message_id, self.handler, slot)

    def _meta(self) -> dict[str, Any]:
        return {
            "correlation_id": self.correlation_id,
            "causation_id": self.message_id,
            "saga_id": self.saga_id,
            "traceparent": self.headers.get(envelope.TRACEPARENT),
        }

    async def send(self, command: Command) -> str:
        """Send a command, correlated with the message being handled; returns its id."""
        if self._outbox is not None:
            self._bus.check_bus(command, "send")
            return self._queue(command)
        return await self._bus.send(command, **self._meta())

    async def publish(self, event: Event, *, message_id: str | None = None) -> str:
        """Publish an event, correlated with the message being handled; returns its id.

        ``message_id`` gives the event an id of the caller's (it must be deterministic, so that
        a redelivered message publishes the same ids; the event store uses the stored event's);
        by default the id derives from the message being handled.
        """
        if self._outbox is not None:
            self._bus.check_bus(event, "publish")
            return self._queue(event, message_id)
        return await self._bus.publish(event, message_id=message_id, **self._meta())
