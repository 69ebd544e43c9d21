"""Replies to queries, on a connection of their own.

RabbitMQ 3.10 closes the whole connection of a client that publishes to a direct reply-to
address it cannot resolve (``541 INTERNAL_ERROR``): an address whose requester was on a node that
has since gone down (a query redelivered after a failover), or one forged by a hostile caller.
On the connection that also consumes, that took down every consumer of the worker, and the query
(unacked when the connection went) came back and did it again. Replies therefore go out on a
second connection, opened on the first reply: if a reply kills it, only that reply is lost (the
caller gets ``ReplyLost`` or times out), the connection comes back by itself, and the consumer
acks the query all the same. A reply is sent once, never again after a lost connection:
queries change nothing, and a caller whose connection is gone cannot receive it anyway.
"""

from __future__ import annotations

import asyncio

from framework.transport.amqp._config import AmqpConfig
from framework.transport.amqp._connection import AmqpConnection
from framework.transport.amqp._errors import BrokerErrors
from framework.transport.amqp._publish import Publisher
from framework.transport.base import OutgoingMessage

__all__ = ["ReplyPublisher"]


class ReplyPublisher:
    """Publishes direct reply-to replies on its own connection (see the module docstring)."""

    def __init__(self, url: str, *, config: AmqpConfig, errors: BrokerErrors) -> None:
        self._link = AmqpConnection(url, config=config, errors=errors, role="replies")
        self._publisher = Publisher(self._link, exchanges={""})
        self._lock = asyncio.Lock()
        self._closed = False

    async def publish(self, message: OutgoingMessage, *, routing_key: str) -> None:
        """Publish ``message`` to the reply address ``routing_key``, once.

        Raises:
            PublishTimeout: the reply connection was lost before the confirm (or no confirm
                came in time); the reply is not sent again.
        """
        if self._link.connection is None:
            async with self._lock:
                if self._link.connection is None:
                    await self._link.connect()
                    self._publisher.start()
        await self._publisher.publish(
            message, exchange="", routing_key=routing_key, mandatory=False, resend=False
        )

    async def close(self) -> None:
        self._publisher.close()
        await self._link.close()
