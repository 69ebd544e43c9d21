"""Naming rules for exchanges and queues, and the topology an app declares."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from framework.errors import ConfigurationError
from framework.messages import MessageKind
from framework.transport.base import (
    BindingSpec,
    ExchangeSpec,
    ExchangeType,
    QueueSpec,
    Topology,
)

__all__ = ["DEFAULT_DELIVERY_LIMIT", "QUEUE_TYPES", "Naming"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


QUEUE_TYPES = ("classic", "quorum")
# RabbitMQ 4 made 20 the default delivery limit of quorum queues; 3.x has none (a poison message
# loops forever), so leveret always sets one.
DEFAULT_DELIVERY_LIMIT = 20


@dataclass(frozen=True, slots=True)
class Naming:
    """All names derive from one prefix, so two apps (or test runs) never collide; the queue
    type decides how every durable queue leveret owns is declared.

    Args:
        prefix: the first part of every name.
        queue_type: ``classic`` (the single-node default) or ``quorum``: then handler queues,
            DLQs and delay queues are all quorum queues, replicated over a cluster's nodes,
            with ``delivery_limit`` and at-least-once dead-lettering.
        delivery_limit: deliveries before a quorum queue dead-letters a message.

    Raises:
        ConfigurationError: the prefix has characters AMQP names should not carry, or the
            queue type is unknown.
    """

    prefix: str = "leveret"
    queue_type: str = "classic"
    delivery_limit: int = DEFAULT_DELIVERY_LIMIT

    def __post_init__(self) -> None:
        if not _NAME.match(self.prefix):
            raise ConfigurationError(
                f"prefix {self.prefix!r} is not a valid name prefix: use letters, digits, "
                "'.', '-' and '_'"
            )
        if self.queue_type not in QUEUE_TYPES:
            raise ConfigurationError(
                f"queue_type={self.queue_type!r}: use 'classic' (one node) or 'quorum' (a cluster)"
            )

    @property
    def quorum(self) -> bool:
        return self.queue_type == "quorum"

    @property
    def commands(self) -> str:
        return f"{self.prefix}.commands"

    @property
    def events(self) -> str:
        return f"{self.prefix}.events"

    @property
    def queries(self) -> str:
        return f"{self.prefix}.queries"

    @property
    def dlx(self) -> str:
        return f"{self.prefix}.dlx"

    @property
    def retry(self) -> str:
        """Direct exchange that routes a message back to the queue named by its routing key."""
        return f"{self.prefix}.retry"

    def delay(self, ms: int) -> str:
        """Exchange and queue holding messages for ``ms`` before they dead-letter to ``retry``."""
        return f"{self.prefix}.delay.{ms}"

    def exchange_for(self, kind: MessageKind) -> str:
        if kind is MessageKind.COMMAND:
            return self.commands
        if kind is MessageKind.EVENT:
            return self.events
        if kind is MessageKind.QUERY:
            return self.queries
        raise ConfigurationError(f"{kind.value} messages are not published on an exchange")

    def handler_queue(self, service: str, wire_name: str) -> str:
        return f"{self.prefix}.{service}.{wire_name}"

    def dlq(self, queue: str) -> str:
        return f"{queue}.dlq"

    def base_topology(self, delays_ms: Iterable[int]) -> Topology:
        """The exchanges every app declares, plus one TTL queue per retry delay."""
        exchanges = [
            ExchangeSpec(self.commands, ExchangeType.DIRECT),
            ExchangeSpec(self.events, ExchangeType.TOPIC),
            ExchangeSpec(self.queries, ExchangeType.DIRECT),
            ExchangeSpec(self.dlx, ExchangeType.DIRECT),
            ExchangeSpec(self.retry, ExchangeType.DIRECT),
        ]
        topology = Topology(exchanges=tuple(exchanges))
        for ms in sorted(set(delays_ms)):
            topology = topology + self.delay_topology(ms)
        return topology

    def delay_topology(self, ms: int) -> Topology:
        """The delay tier for ``ms``: a fanout exchange and its queue, which dead-letters every
        message to ``retry`` (routed back by its routing key, the queue it came from) once it
        has waited ``ms``.

        Every message in one delay queue waits as long, so head-of-line expiry (the only kind
        RabbitMQ does for per-message TTL) releases them in time; a quorum delay queue also
        sets ``x-message-ttl``, and dead-letters at least once.
        """
        name = self.delay(ms)
        if self.quorum:
            queue = QueueSpec(
                name,
                dead_letter_exchange=self.retry,
                quorum=True,
                message_ttl_ms=ms,
                overflow="reject-publish",
                dead_letter_strategy="at-least-once",
            )
        else:
            queue = QueueSpec(name, dead_letter_exchange=self.retry)
        return Topology(
            exchanges=(ExchangeSpec(name, ExchangeType.FANOUT),),
            queues=(queue,),
            bindings=(BindingSpec(name, name, ""),),
        )

    def handler_topology(
        self,
        queue: str,
        kind: MessageKind,
        wire_name: str,
        *,
        delivery_limit: int | None = None,
        max_length: int | None = None,
        public: bool = True,
        dlq_max_length: int | None = None,
        dlq_max_bytes: int | None = None,
    ) -> Topology:
        """A handler's queue, its DLQ and its bindings.

        A ``public`` queue is bound to its kind's exchange by ``wire_name``; any queue is bound
        to the retry exchange by its own name, which is how retries, and the messages the
        framework sends itself through the delay tier (saga timeouts), reach it. A saga's timeout
        queue is not public, so no one can route a timeout to it through the commands exchange.

        With ``delivery_limit`` the queue is a quorum queue that dead-letters a message after
        that many deliveries, even when a worker crashes on it every time (3.x has no default).
        With ``max_length`` a full queue refuses publishes (``reject-publish``): senders get a
        nack, which their circuit breaker counts, instead of the broker dropping messages.
        ``dlq_max_length`` / ``dlq_max_bytes`` bound the DLQ: past them it drops its oldest
        dead letters (``drop-head``), so a flood of bad input cannot grow it without end.
        """
        dlq = self.dlq(queue)
        if self.quorum:
            handler = QueueSpec(
                queue,
                dead_letter_exchange=self.dlx,
                dead_letter_routing_key=queue,
                quorum=True,
                delivery_limit=delivery_limit or self.delivery_limit,
                max_length=max_length,
                # At-least-once dead-lettering needs reject-publish (else RabbitMQ silently
                # falls back to at-most-once).
                overflow="reject-publish",
                dead_letter_strategy="at-least-once",
            )
        else:
            handler = QueueSpec(
                queue,
                dead_letter_exchange=self.dlx,
                dead_letter_routing_key=queue,
                quorum=delivery_limit is not None,
                delivery_limit=delivery_limit,
                max_length=max_length,
                overflow=None if max_length is None else "reject-publish",
            )
        return Topology(
            queues=(
                handler,
                QueueSpec(
                    dlq,
                    max_length=dlq_max_length,
                    max_length_bytes=dlq_max_bytes,
                    # No delivery limit: a DLQ has no dead-letter exchange, so a message past
                    # it would be dropped, and every read of `leveret dlq` (which puts the
                    # messages back) counts as a delivery. (On 3.10, -1 is a limit of 0.)
                    quorum=self.quorum,
                ),
            ),
            bindings=(
                *((BindingSpec(queue, self.exchange_for(kind), wire_name),) if public else ()),
                BindingSpec(queue, self.retry, queue),
                BindingSpec(dlq, self.dlx, queue),
            ),
        )
