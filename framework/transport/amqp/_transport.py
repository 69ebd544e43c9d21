"""``AmqpTransport``: the Transport port on RabbitMQ, composed of the package's parts.

The connection (``_connection``) owns the link to the broker and its recovery; the publisher
(``_publish``), the topology (``_topology``), the requester (``_rpc``) and each consumer
(``_consume``) work through it. This class wires them and holds nothing of its own.
"""

from __future__ import annotations

import asyncio
import contextlib

from framework.transport.amqp import _aiormq_handshake, _pamqp
from framework.transport.amqp._config import AmqpConfig, user_of
from framework.transport.amqp._connection import AmqpConnection
from framework.transport.amqp._consume import AmqpConsumer
from framework.transport.amqp._errors import BrokerErrors
from framework.transport.amqp._publish import Publisher
from framework.transport.amqp._replies import ReplyPublisher
from framework.transport.amqp._rpc import Requester
from framework.transport.amqp._topology import AmqpTopology
from framework.transport.base import (
    DIRECT_REPLY_TO,
    BindingSpec,
    Consumer,
    Delivery,
    DeliveryCallback,
    FlowListener,
    OutgoingMessage,
    QueueInfo,
    Topology,
    Transport,
)
from framework.transport.wire import check_encodable

__all__ = ["AmqpTransport"]

_pamqp.install()  # no crafted content header may drop the connection (see _pamqp)
_aiormq_handshake.install()  # a refused vhost says whether it is missing or forbidden
_DEFAULTS = AmqpConfig()


class AmqpTransport(Transport):
    """Transport on RabbitMQ through aio-pika's robust connection.

    Args:
        url: ``amqp://user:password@host:port/vhost`` (or ``amqps://``); never logged unredacted.
        config: deadlines and reconnection settings.
    """

    def __init__(self, url: str, *, config: AmqpConfig = _DEFAULTS) -> None:
        self.config = config
        self._url = url
        errors = BrokerErrors(url, publish_timeout=config.publish_timeout)
        self._link = AmqpConnection(url, config=config, errors=errors)
        exchanges = {""}  # the default exchange always exists
        self._publisher = Publisher(self._link, exchanges=exchanges)
        self._topology = AmqpTopology(self._link, exchanges=exchanges)
        self._requester = Requester(self._link, self._publisher)
        # Replies to queries go out on a connection of their own (see _replies).
        self._replies = ReplyPublisher(url, config=config, errors=errors)

    def __repr__(self) -> str:
        link = self._link
        state = "closed" if link.closed else "open" if link.connection else "new"
        return f"<AmqpTransport {link.safe_url} {state}>"

    @property
    def user(self) -> str:
        """The URL's user name (``guest`` when it names none, as aio-pika then logs in)."""
        return user_of(self._url)

    def publishing_stalled_for(self) -> float:
        return self._publisher.stalled_for(asyncio.get_running_loop().time())

    # -- lifecycle -------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the connection and the long-lived channels.

        Raises:
            BrokerAccessDenied: (a BrokerUnreachable and a ConfigurationError) the broker
                refused the credentials or the vhost; raised at once, not retried.
            BrokerUnreachable: no connection within ``connect_timeout`` (bad host or port, no
                broker there); the URL in it has its password redacted.
            TLSVerificationFailed: (a BrokerUnreachable) the broker's certificate is not
                trusted.
            ConfigurationError: the URL cannot be parsed, or names a TLS file that cannot be
                read.
        """
        if self._link.connection is not None:
            return
        await self._link.connect()
        self._publisher.start()

    async def close(self) -> None:
        """Close the connection; unsettled deliveries return to their queues."""
        self._requester.close()
        self._publisher.close()
        await self._replies.close()
        await self._link.close()

    async def wait_failed(self) -> BaseException:
        """Wait until the transport gives up on recovering, and return why.

        After a lost connection or a broker-cancelled consumer, every consumer must be verified
        back within ``consumer_verify_timeout``; otherwise this returns a ``BrokerUnreachable``.
        The worker awaits it next to its work and exits non-zero when it returns.

        Raises:
            TransportClosed: ``close()`` was called (before or while waiting).
        """
        return await self._link.wait_failed()

    def add_flow_listener(self, listener: FlowListener) -> None:
        """Call ``listener(blocked, reason)`` on connection.blocked / connection.unblocked."""
        self._link.add_flow_listener(listener)

    # -- topology ----------------------------------------------------------------------------

    async def declare(self, topology: Topology) -> None:
        """Declare ``topology``: first on a throwaway channel, then on the restored one.

        Raises:
            ConfigurationError: an existing queue or exchange differs, or a binding names a
                missing queue or exchange; the broker's text says which argument.
            BrokerUnreachable: not done within ``declare_timeout``.
        """
        await self._topology.declare(topology)

    async def unbind(self, binding: BindingSpec) -> None:
        """Remove ``binding`` on a throwaway channel.

        RabbitMQ answers a missing binding with ``unbind-ok``, and (depending on its version)
        a missing queue or exchange with NOT_FOUND, which closes only that channel: either way
        there is nothing to remove. A binding this transport declared is also dropped from what
        aio-pika restores after a reconnect.

        Raises:
            ConfigurationError: the broker refused for another reason (its text says which).
            BrokerUnreachable: not done within ``declare_timeout``.
        """
        await self._topology.unbind(binding)

    async def delete_queue(self, name: str) -> None:
        """Delete ``name`` and its messages; our consumers on it are cancelled first."""
        self._link.require()
        for consumer in self._link.consumers_of(name):
            await consumer.cancel(queue_deleted=True)  # their messages go with the queue
        await self._topology.delete_queue(name)

    async def delete_exchange(self, name: str) -> None:
        """Delete exchange ``name`` and its bindings; a missing one is nothing to delete."""
        self._link.require()
        await self._topology.delete_exchange(name)

    async def queue_depth(self, name: str) -> int:
        """Ready messages in ``name``.

        Raises:
            ConfigurationError: the queue does not exist.
        """
        return await self._topology.queue_depth(name)

    async def queue_info(self, name: str) -> QueueInfo:
        """Ready messages and consumers of ``name``, from a passive declare.

        Raises:
            ConfigurationError: the queue does not exist.
            BrokerUnreachable: no answer within ``declare_timeout`` (e.g. while reconnecting).
        """
        return await self._topology.queue_info(name)

    # -- messages ----------------------------------------------------------------------------

    async def publish(
        self,
        message: OutgoingMessage,
        *,
        exchange: str,
        routing_key: str,
        mandatory: bool = True,
        timeout: float | None = None,
    ) -> None:
        check_encodable(message, exchange=exchange, routing_key=routing_key)
        if not exchange and routing_key.startswith(DIRECT_REPLY_TO):
            self._link.require()
            await self._replies.publish(message, routing_key=routing_key)
            return
        await self._publisher.publish(
            message,
            exchange=exchange,
            routing_key=routing_key,
            mandatory=mandatory,
            timeout=timeout,
        )

    async def consume(self, queue: str, callback: DeliveryCallback, *, prefetch: int) -> Consumer:
        """Consume ``queue`` on a channel of its own with ``prefetch`` unacked deliveries.

        Raises:
            ConfigurationError: the queue does not exist.
        """
        channel = self._link.require().channel(publisher_confirms=False)
        consumer = AmqpConsumer(
            self._link,
            channel,
            queue,
            callback,
            config=self.config,
            rejects_undecodable=self._topology.dead_letters(queue),
        )
        try:
            async with self._link.deadline(f"consuming queue {queue!r}"):
                await consumer.start(prefetch)
        except BaseException:
            with contextlib.suppress(Exception):
                await channel.close()
            raise
        self._link.adopt(consumer)
        return consumer

    async def request(
        self, message: OutgoingMessage, *, exchange: str, routing_key: str, timeout: float
    ) -> Delivery:
        check_encodable(message, exchange=exchange, routing_key=routing_key)
        return await self._requester.request(
            message, exchange=exchange, routing_key=routing_key, timeout=timeout
        )
