"""The Transport port: the few broker operations leveret needs, and the data they exchange.

Two implementations ship: ``framework.transport.amqp`` (RabbitMQ through aio-pika) and
``framework.transport.memory`` (an in-process broker with the same semantics). One shared test
suite (``tests/transport``) runs unchanged against both.

Semantics every implementation keeps:

* ``publish`` refuses, before sending anything, a message AMQP cannot carry (``NotEncodable``,
  the same check and text on every transport: ``framework.transport.wire``), and returns only
  once the broker has taken responsibility for the message (publisher confirm). A mandatory
  message that no queue receives raises ``Unroutable``; a nack raises ``PublishNacked``; a
  missing confirm raises ``PublishTimeout``.
* ``consume`` calls the callback once per delivery, concurrently up to ``prefetch`` unacked
  deliveries. Each delivery is settled exactly once with ``ack`` or ``nack``; settling again is a
  no-op, never a channel error.
* Queues may dead-letter (``dead_letter_exchange``) on ``nack(requeue=False)`` and on expiry of a
  per-message TTL (``OutgoingMessage.expiration_ms``); the dead-lettered copy keeps its routing key
  unless the queue sets ``dead_letter_routing_key``.
* ``request`` publishes with a reply address and returns the reply delivery (RabbitMQ's direct
  reply-to); many requests may be in flight at once.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec

__all__ = [
    "DIRECT_REPLY_TO",
    "BindingSpec",
    "Consumer",
    "Delivery",
    "DeliveryCallback",
    "ExchangeSpec",
    "ExchangeType",
    "FlowListener",
    "HeaderLimits",
    "OutgoingMessage",
    "QueueInfo",
    "QueueSpec",
    "Topology",
    "Transport",
    "topic_match",
]

# RabbitMQ's direct reply-to: only the connection that sent a request can consume its replies,
# so a reply addressed here cannot be aimed at anyone else's queue.
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to."


class ExchangeType(enum.StrEnum):
    DIRECT = "direct"
    TOPIC = "topic"
    FANOUT = "fanout"


@dataclass(frozen=True, slots=True)
class ExchangeSpec:
    name: str
    type: ExchangeType
    durable: bool = True


@dataclass(frozen=True, slots=True)
class QueueSpec:
    """A queue and the RabbitMQ arguments leveret uses.

    Args:
        dead_letter_exchange: where rejected and expired messages go (``x-dead-letter-exchange``).
        dead_letter_routing_key: replaces their routing key when set.
        max_length: ``x-max-length``; with ``overflow="reject-publish"`` a full queue nacks,
            by default (``drop-head``) it drops (or dead-letters) its oldest messages.
        max_length_bytes: ``x-max-length-bytes``: the same bound on the ready messages' bodies.
        quorum: declare a quorum queue; then ``delivery_limit`` must be set (3.x has no default).
        message_ttl_ms: ``x-message-ttl``: every message expires (dead-letters) after this long.
            Unlike a per-message TTL, it expires on a quorum queue without waiting for the head.
        dead_letter_strategy: ``x-dead-letter-strategy``; ``at-least-once`` (quorum queues with
            ``overflow="reject-publish"``) keeps a dead letter until its target confirms it.
    """

    name: str
    durable: bool = True
    auto_delete: bool = False
    dead_letter_exchange: str | None = None
    dead_letter_routing_key: str | None = None
    max_length: int | None = None
    max_length_bytes: int | None = None
    overflow: str | None = None
    quorum: bool = False
    delivery_limit: int | None = None
    message_ttl_ms: int | None = None
    dead_letter_strategy: str | None = None

    def arguments(self) -> dict[str, Any]:
        """The ``x-`` arguments RabbitMQ expects for this queue."""
        args: dict[str, Any] = {}
        if self.dead_letter_exchange is not None:
            args["x-dead-letter-exchange"] = self.dead_letter_exchange
        if self.dead_letter_routing_key is not None:
            args["x-dead-letter-routing-key"] = self.dead_letter_routing_key
        if self.max_length is not None:
            args["x-max-length"] = self.max_length
        if self.max_length_bytes is not None:
            args["x-max-length-bytes"] = self.max_length_bytes
        if self.overflow is not None:
            args["x-overflow"] = self.overflow
        if self.quorum:
            args["x-queue-type"] = "quorum"
        if self.delivery_limit is not None:
            args["x-delivery-limit"] = self.delivery_limit
        if self.message_ttl_ms is not None:
            args["x-message-ttl"] = self.message_ttl_ms
        if self.dead_letter_strategy is not None:
            args["x-dead-letter-strategy"] = self.dead_letter_strategy
        return args


@dataclass(frozen=True, slots=True)
class BindingSpec:
    queue: str
    exchange: str
    routing_key: str


@dataclass(frozen=True, slots=True)
class Topology:
    """Everything to declare, idempotently, before consuming or publishing."""

    exchanges: tuple[ExchangeSpec, ...] = ()
    queues: tuple[QueueSpec, ...] = ()
    bindings: tuple[BindingSpec, ...] = ()

    def __add__(self, other: Topology) -> Topology:
        return Topology(
            exchanges=_unique(self.exchanges + other.exchanges),
            queues=_unique(self.queues + other.queues),
            bindings=_unique(self.bindings + other.bindings),
        )


T = TypeVar("T")


def topic_match(pattern: list[str], words: list[str]) -> bool:
    """Whether a topic binding's words (``*`` one word, ``#`` zero or more) match a routing
    key's, as RabbitMQ's topic exchange decides (``key.split(".")`` for each)."""
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(topic_match(rest, words[i:]) for i in range(len(words) + 1))
    return bool(words) and head in ("*", words[0]) and topic_match(rest, words[1:])


def _unique(items: tuple[T, ...]) -> tuple[T, ...]:
    return tuple(dict.fromkeys(items))


@dataclass(frozen=True, slots=True)
class HeaderLimits:
    """Bounds on a delivery's header table, checked while it is decoded.

    A table past a bound is not decoded further: the delivery is rejected to its DLQ unchanged.
    The defaults leave room for everything leveret and RabbitMQ put there (``x-death`` of a
    message that went through every delay queue is a few hundred bytes) and for generous
    application headers.

    Args:
        max_bytes: the encoded table's size; checked from its length prefix, before decoding.
        max_depth: nesting of tables and arrays (the headers themselves are depth 1).
        max_entries: values in the table, nested ones included.
    """

    max_bytes: int = 64 * 1024
    max_depth: int = 16
    max_entries: int = 4096

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_depth", "max_entries"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"HeaderLimits.{name}={value!r}: use a positive integer")
        if self.max_depth > 200:  # decoding recurses once per level
            raise ValueError(f"HeaderLimits.max_depth={self.max_depth}: at most 200")


@dataclass(frozen=True, slots=True)
class QueueInfo:
    """What the broker says about a queue: ready messages and consumers attached to it."""

    messages: int
    consumers: int


class OutgoingMessage(msgspec.Struct, kw_only=True, gc=False):
    """A message as it goes onto the wire: body bytes plus AMQP properties and headers."""

    body: bytes
    message_id: str
    type: str | None = None
    correlation_id: str | None = None
    content_type: str | None = "application/json"
    headers: dict[str, Any] = msgspec.field(default_factory=dict)
    reply_to: str | None = None
    persistent: bool = True
    expiration_ms: int | None = None
    timestamp: int | None = None
    # AMQP ``user_id``: RabbitMQ refuses a publish whose user_id is not the connection's user,
    # so a receiver can trust it names the sender's credentials.
    user_id: str | None = None


class Delivery(abc.ABC):
    """A received message. Settle it once with ``ack`` or ``nack``; later calls do nothing.

    ``session`` is an opaque token of the channel (or connection) that delivered it, compared
    by identity: a different one means the channel was lost and reopened in between, so the
    broker has given back every message still unsettled on the old one and will deliver them
    again. None when the transport does not say.
    """

    __slots__ = (
        "body",
        "content_type",
        "correlation_id",
        "exchange",
        "headers",
        "message_id",
        "redelivered",
        "reply_to",
        "routing_key",
        "session",
        "timestamp",
        "type",
        "user_id",
    )

    def __init__(
        self,
        *,
        body: bytes,
        message_id: str | None,
        type: str | None,
        correlation_id: str | None,
        content_type: str | None,
        headers: Mapping[str, Any],
        reply_to: str | None,
        redelivered: bool,
        exchange: str,
        routing_key: str,
        timestamp: int | None,
        user_id: str | None = None,
        session: object | None = None,
    ) -> None:
        self.body = body
        self.message_id = message_id
        self.type = type
        self.correlation_id = correlation_id
        self.content_type = content_type
        self.headers = headers
        self.reply_to = reply_to
        self.redelivered = redelivered
        self.exchange = exchange
        self.routing_key = routing_key
        self.timestamp = timestamp
        self.user_id = user_id
        self.session = session

    @abc.abstractmethod
    async def ack(self) -> None:
        """Tell the broker the message is done with."""

    @abc.abstractmethod
    async def nack(self, *, requeue: bool) -> None:
        """Give the message back (``requeue=True``) or dead-letter/drop it (``False``)."""

    def to_outgoing(self, **changes: Any) -> OutgoingMessage:
        """A copy of this message to publish again (retry, DLQ), with ``changes`` applied."""
        out = OutgoingMessage(
            body=self.body,
            message_id=self.message_id or "",
            type=self.type,
            correlation_id=self.correlation_id,
            content_type=self.content_type,
            headers=dict(self.headers),
            reply_to=self.reply_to,
            persistent=True,
            timestamp=self.timestamp,
        )
        return msgspec.structs.replace(out, **changes) if changes else out


DeliveryCallback = Callable[[Delivery], Awaitable[None]]

# ``listener(blocked, reason)``: the broker stopped (True) or resumed (False) accepting this
# connection's publishes, e.g. on a memory or disk alarm; ``reason`` is the broker's text.
FlowListener = Callable[[bool, str | None], None]


class Consumer(abc.ABC):
    """A running subscription on one queue."""

    queue: str

    @abc.abstractmethod
    async def cancel(self) -> None:
        """Stop receiving new deliveries. Deliveries in flight stay unsettled until settled."""


class Transport(abc.ABC):
    """The broker port. See the module docstring for the semantics every implementation keeps."""

    @abc.abstractmethod
    async def connect(self) -> None:
        """Open connections and channels.

        Raises:
            BrokerUnreachable: not connected within the connect deadline.
        """

    @abc.abstractmethod
    async def declare(self, topology: Topology) -> None:
        """Declare exchanges, queues and bindings; declaring the same thing again is a no-op.

        Raises:
            ConfigurationError: an existing queue or exchange has different settings.
        """

    async def unbind(self, binding: BindingSpec) -> None:  # noqa: B027  # optional, see below
        """Remove ``binding``; a binding that does not exist (or whose queue or exchange does
        not) is nothing to remove, never an error.

        Declaring never removes a binding, so this is how an app drops one that an older
        version of it declared (``App.start`` unbinds the saga timeout queues from the public
        commands exchange). Not abstract: the default does nothing, which is right for a
        transport whose broker cannot have kept bindings from an earlier run; a transport on a
        persistent broker overrides it.
        """

    @abc.abstractmethod
    async def delete_queue(self, name: str) -> None:
        """Delete a queue and its messages (tests and tooling)."""

    async def delete_exchange(self, name: str) -> None:  # noqa: B027  # optional, see below
        """Delete an exchange and its bindings; one that does not exist is nothing to delete.

        For tooling that removes an app's topology (``framework.queues.delete_topology``). Not
        abstract: the default does nothing, which is right for a transport whose broker does not
        outlive the process; a transport on a persistent broker overrides it.
        """

    @abc.abstractmethod
    async def publish(
        self,
        message: OutgoingMessage,
        *,
        exchange: str,
        routing_key: str,
        mandatory: bool = True,
        timeout: float | None = None,
    ) -> None:
        """Publish and wait for the broker's confirm.

        ``timeout`` is this publish's deadline in seconds (the transport's own by default): a
        broker transport that loses its connection meanwhile sends the message again, with the
        same message id, once the connection is back, until the deadline passes.

        Raises:
            NotEncodable: AMQP cannot carry it (``framework.transport.wire.check_encodable``);
                nothing was sent, and sending it again fails the same way.
            Unroutable: mandatory and no queue took it.
            PublishNacked: the broker refused it.
            PublishTimeout: no confirm by the deadline (its ``may_be_delivered`` says whether
                the message may have reached the broker).
        """

    @abc.abstractmethod
    async def consume(self, queue: str, callback: DeliveryCallback, *, prefetch: int) -> Consumer:
        """Start delivering messages from ``queue`` to ``callback``."""

    @abc.abstractmethod
    async def request(
        self, message: OutgoingMessage, *, exchange: str, routing_key: str, timeout: float
    ) -> Delivery:
        """Publish ``message`` with a reply address and return the reply.

        The reply is matched by ``message.correlation_id``, which must be unique per request.

        Raises:
            TimeoutError: no reply within ``timeout`` (the caller turns it into QueryTimeout).
            Unroutable: nobody consumes the request's routing key.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Close everything; in-flight unsettled deliveries return to their queues."""

    @abc.abstractmethod
    async def queue_depth(self, name: str) -> int:
        """Ready (not unacked) messages in a queue; for tests and tooling."""

    @abc.abstractmethod
    async def queue_info(self, name: str) -> QueueInfo:
        """Ready messages and consumers of a queue, as the broker counts them (health, tools).

        Raises:
            ConfigurationError: the queue does not exist.
        """

    @property
    def user(self) -> str | None:
        """The broker user this transport connects as: the only ``user_id`` its publishes may
        carry (RabbitMQ refuses any other), so a delivery whose ``user_id`` is this user was sent
        with the same credentials. None when the transport cannot tell.
        """
        return None

    def publishing_stalled_for(self) -> float:
        """Seconds the broker has confirmed nothing while publishes wait or keep failing: a
        publish waiting for its confirm that long, or every publish since then unconfirmed (a
        cluster without a majority, a blocked connection). 0 while publishing works, or when
        the transport cannot tell. ``/ready`` says not ready past a few seconds.
        """
        return 0.0

    # Added for circuit breakers (resilience): a blocked connection is a failure signal.
    def add_flow_listener(self, listener: FlowListener) -> None:  # noqa: B027  # optional hook
        """Call ``listener`` when the broker blocks or unblocks publishing on this connection.

        Not abstract: a transport without flow control never calls it.
        """
