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

__all__ = ["Naming"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True, slots=True)
class Naming:
    """All names derive from one prefix, so two apps (or test runs) never collide.

    Raises:
        ConfigurationError: the prefix has characters AMQP names should not carry.
    """

    prefix: str = "leveret"

    def __post_init__(self) -> None:
        if not _NAME.match(self.prefix):
            raise ConfigurationError(
                f"prefix {self.prefix!r} is not a valid name prefix: use letters, digits, "
                "'.', '-' and '_'"
            )

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
        queues: list[QueueSpec] = []
        bindings: list[BindingSpec] = []
        for ms in sorted(set(delays_ms)):
            name = self.delay(ms)
            exchanges.append(ExchangeSpec(name, ExchangeType.FANOUT))
            # Every message in one delay queue has the same TTL, so head-of-line expiry (the only
            # kind RabbitMQ does for per-message TTL) releases them in time.
            queues.append(QueueSpec(name, dead_letter_exchange=self.retry))
            bindings.append(BindingSpec(name, name, ""))
        return Topology(tuple(exchanges), tuple(queues), tuple(bindings))

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
        return Topology(
            queues=(
                QueueSpec(
                    queue,
                    dead_letter_exchange=self.dlx,
                    dead_letter_routing_key=queue,
                    quorum=delivery_limit is not None,
                    delivery_limit=delivery_limit,
                    max_length=max_length,
                    overflow=None if max_length is None else "reject-publish",
                ),
                QueueSpec(dlq, max_length=dlq_max_length, max_length_bytes=dlq_max_bytes),
            ),
            bindings=(
                *((BindingSpec(queue, self.exchange_for(kind), wire_name),) if public else ()),
                BindingSpec(queue, self.retry, queue),
                BindingSpec(dlq, self.dlx, queue),
            ),
        )
