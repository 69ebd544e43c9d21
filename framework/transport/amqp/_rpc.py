"""Request/reply over RabbitMQ's direct reply-to (``amq.rabbitmq.reply-to``).

Requests go out on a channel of their own (with confirms) that consumes direct reply-to in
no-ack mode, as RabbitMQ requires, before the first request on it; after a reopen it consumes
again before the next one. Replies are matched to their waiting request by correlation id.
A reply can only come on the channel its request went out on: when that channel goes (its
connection lost, a broker node down), the requests waiting on it fail at once with
``ReplyLost`` naming the node, instead of waiting out their timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
from functools import partial

import aiormq.abc

from framework.errors import PublishNacked, ReplyLost, TransportClosed
from framework.transport.amqp._connection import AmqpConnection
from framework.transport.amqp._consume import AmqpDelivery
from framework.transport.amqp._errors import LOST
from framework.transport.amqp._publish import NACK_PAUSE, Publisher
from framework.transport.base import Delivery, OutgoingMessage

__all__ = ["REPLY_TO", "Requester"]

REPLY_TO = "amq.rabbitmq.reply-to"


class Requester:
    """Sends requests and hands each reply to the request waiting for it.

    Args:
        link: the connection (its RPC channel carries requests and replies).
        publisher: publishes the requests with confirms.
    """

    def __init__(self, link: AmqpConnection, publisher: Publisher) -> None:
        self._link = link
        self._publisher = publisher
        self._raw: aiormq.abc.AbstractChannel | None = None
        self._lock = asyncio.Lock()
        self._pending: dict[str, asyncio.Future[Delivery]] = {}
        # Correlation ids of the requests sent on each reply channel, by id(channel): when the
        # channel goes, their replies can no longer come (direct reply-to is per channel).
        self._sent_on: dict[int, set[str]] = {}
        self._queries: dict[str, str] = {}  # correlation id -> the query's wire name

    def close(self) -> None:
        """Fail every request still waiting: no reply can come any more."""
        for future in self._pending.values():
            if not future.done():
                future.set_exception(TransportClosed("the transport closed before the reply"))
        self._raw = None

    async def request(
        self, message: OutgoingMessage, *, exchange: str, routing_key: str, timeout: float
    ) -> Delivery:
        """Publish ``message`` and wait for its reply (see ``AmqpTransport.request``)."""
        self._link.require()
        correlation_id = message.correlation_id
        if not correlation_id:
            raise ValueError("a request needs a unique correlation_id")
        publisher = self._publisher
        if not publisher.knows(exchange):
            await publisher.check_exchange(exchange, routing_key)
        future: asyncio.Future[Delivery] = asyncio.get_running_loop().create_future()
        self._queries[correlation_id] = message.type or routing_key
        self._pending[correlation_id] = future
        try:
            async with asyncio.timeout(timeout):
                loop = asyncio.get_running_loop()
                while True:
                    channel = await self._reply_channel()
                    self._sent_on.setdefault(id(channel), set()).add(correlation_id)
                    try:
                        await publisher.confirmed(
                            channel,
                            message,
                            exchange=exchange,
                            routing_key=routing_key,
                            mandatory=True,
                            reply_to=REPLY_TO,
                        )
                        break
                    except LOST as exc:
                        error = publisher.error(exc, exchange, routing_key)
                        if not (
                            isinstance(error, PublishNacked)
                            and publisher.after_failover(loop.time())
                        ):
                            raise error from None
                        # A quorum queue electing a new leader after a node loss: ask again,
                        # on a fresh channel (a RabbitMQ 3.10 channel that met the queue
                        # leaderless nacks it for good: ``Publisher._taken_elsewhere``).
                        await self._renew(channel)
                        await asyncio.sleep(NACK_PAUSE)
                return await future
        finally:
            self._pending.pop(correlation_id, None)
            self._queries.pop(correlation_id, None)
            for waiting in self._sent_on.values():
                waiting.discard(correlation_id)

    async def _reply_channel(self) -> aiormq.abc.AbstractChannel:
        """The RPC channel, consuming direct reply-to (again after every reopen)."""
        raw = self._raw
        if raw is not None and not raw.is_closed:
            return raw
        async with self._lock:  # only the setup is serialized, never the requests
            raw = self._raw
            if raw is None or raw.is_closed:
                self._link.require()
                assert self._link.rpc_channel is not None
                raw = await self._link.live_channel(self._link.rpc_channel)
                await raw.basic_consume(REPLY_TO, self._on_reply, no_ack=True)
                raw.closing.add_done_callback(partial(self._reply_channel_lost, id(raw)))
                self._raw = raw
            return raw

    async def _renew(self, stale: aiormq.abc.AbstractChannel) -> None:
        """Close the RPC channel ``stale`` if it is still the current one (aio-pika opens it
        again; requests waiting for replies on it fail with ``ReplyLost``)."""
        if stale is not self._raw or stale.is_closed:
            return
        self._raw = None  # from now on requests wait for the new channel (``_reply_channel``)
        async with self._lock:
            # Frames already written for it go out before its Channel.Close: one that reached
            # the broker after the Close-Ok would cost the whole connection (CHANNEL_ERROR).
            await self._link.frame_writer(stale).drain()
            with contextlib.suppress(*LOST):
                await stale.close()

    def _reply_channel_lost(self, channel_id: int, _: object) -> None:
        """Fail at once the requests waiting for replies on a channel that is gone."""
        node = self._link.node
        for correlation_id in self._sent_on.pop(channel_id, set()):
            future = self._pending.get(correlation_id)
            if future is not None and not future.done():
                query = self._queries.get(correlation_id, "?")
                future.set_exception(ReplyLost(query, node))

    async def _on_reply(self, message: aiormq.abc.DeliveredMessage) -> None:
        future = self._pending.get(message.header.properties.correlation_id or "")
        if future is not None and not future.done():
            future.set_result(AmqpDelivery(message, None))
