"""Consuming: deliveries straight from aiormq channels, and consumers that survive reopens.

A consumer runs on a robust channel of its own. aio-pika restores the channel and its QoS; the
``basic.consume`` is ours, issued again on each new aiormq channel, so a consumer lost to a
broker-side cancel can be re-issued without racing aio-pika's own restore, and deliveries skip
aio-pika's per-message objects and extra task. What a consumer needs from its connection is the
``ConsumerHost`` it is given; it touches nothing else of the transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Coroutine
from typing import Any, Protocol, cast

import aiormq
import aiormq.abc
import structlog
from aio_pika.abc import AbstractRobustChannel
from aiormq.exceptions import ChannelInvalidStateError
from pamqp.commands import Basic, Queue

from framework.transport.amqp import _pamqp
from framework.transport.amqp._config import AmqpConfig
from framework.transport.amqp._errors import LOST
from framework.transport.amqp._frames import AckBatcher
from framework.transport.base import Consumer, Delivery, DeliveryCallback

__all__ = ["AmqpConsumer", "AmqpDelivery", "ConsumerHost"]

log = structlog.get_logger("framework.transport.amqp")

_PLAIN = (str, int, bool, float, type(None))


class ConsumerHost(Protocol):
    """What a consumer uses of its connection (``AmqpConnection`` provides it)."""

    def ack_batcher(self, channel: aiormq.abc.AbstractChannel) -> AckBatcher | None:
        """The batcher settling deliveries of ``channel``; None where aiormq lacks the fast path."""

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``coro`` in a task the connection awaits (or cancels) when it closes."""

    async def probe_queue(self, name: str) -> Queue.DeclareOk:
        """Passively declare ``name`` on a scratch channel; ConfigurationError if it is gone."""

    def consumer_trouble(self, *_: Any) -> None:
        """A consumer may be lost (its channel closed, the broker cancelled it): verify them."""

    def consumer_cancelled(self, consumer: AmqpConsumer) -> None:
        """``consumer`` was cancelled on purpose: no longer verified after a reconnect."""


def _from_wire(value: Any) -> Any:
    """A decoded header value as plain Python: byte arrays become bytes."""
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, bytearray):
        return bytes(value)
    if isinstance(value, dict):
        return {k: _from_wire(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_wire(v) for v in value]
    return value


class AmqpDelivery(Delivery):
    """A delivery read from aiormq's message; its ``session`` is the aiormq channel."""

    __slots__ = ("_acks", "_channel", "_consumer", "_settled", "_tag")

    def __init__(
        self,
        message: aiormq.abc.DeliveredMessage,
        consumer: AmqpConsumer | None,
        acks: AckBatcher | None = None,
    ):
        properties = message.header.properties
        delivery = cast(Basic.Deliver, message.delivery)
        headers = properties.headers
        timestamp = properties.timestamp
        super().__init__(
            body=message.body,
            message_id=properties.message_id,
            type=properties.message_type,
            correlation_id=properties.correlation_id,
            content_type=properties.content_type,
            headers={k: _from_wire(v) for k, v in headers.items()} if headers else {},
            reply_to=properties.reply_to,
            redelivered=bool(delivery.redelivered),
            exchange=delivery.exchange or "",
            routing_key=delivery.routing_key or "",
            timestamp=None if timestamp is None else int(timestamp.timestamp()),
            user_id=properties.user_id,
            session=message.channel,
        )
        self._channel = message.channel
        self._tag = delivery.delivery_tag or 0
        self._consumer = consumer
        self._acks = acks
        self._settled = consumer is None  # replies arrive without acks

    async def ack(self) -> None:
        if self._settled:
            return
        self._settled = True
        try:
            if self._channel.is_closed:
                raise ChannelInvalidStateError("channel closed")
            if self._acks is not None:
                self._acks.ack(self._tag)  # written with the next flush
            else:
                await self._channel.basic_ack(self._tag, wait=False)
        except LOST as exc:
            # The channel died in a reconnect; the broker redelivers the message.
            log.warning("ack_dropped_channel_closed", message_id=self.message_id, error=repr(exc))
        if self._consumer is not None:
            self._consumer.settled()

    async def nack(self, *, requeue: bool) -> None:
        if self._settled:
            return
        self._settled = True
        try:
            if self._channel.is_closed:
                raise ChannelInvalidStateError("channel closed")
            if self._acks is not None:
                self._acks.nack(self._tag, requeue=requeue)
            else:
                await self._channel.basic_nack(self._tag, requeue=requeue, wait=False)
        except LOST as exc:
            log.warning("nack_dropped_channel_closed", message_id=self.message_id, error=repr(exc))
        if self._consumer is not None:
            self._consumer.settled()


class AmqpConsumer(Consumer):
    """A consumer on its own robust channel; it consumes (again) on each new aiormq channel.

    Args:
        host: the connection's services for consumers.
        channel: the robust channel, opened for this consumer alone.
        queue: the queue to consume.
        callback: called with each delivery.
        config: for its deadlines.
        rejects_undecodable: the broker dead-letters what the queue rejects, so a delivery that
            cannot be decoded is rejected unread (elsewhere rejecting would drop it).
    """

    def __init__(
        self,
        host: ConsumerHost,
        channel: AbstractRobustChannel,
        queue: str,
        callback: DeliveryCallback,
        *,
        config: AmqpConfig,
        rejects_undecodable: bool,
    ) -> None:
        self.queue = queue
        self.channel = channel
        self.tag = f"leveret.{uuid.uuid4().hex}"
        self.cancelled = False
        self.in_flight = 0
        self._host = host
        self._config = config
        self._callback = callback
        self._lock = asyncio.Lock()
        self._acks: AckBatcher | None = None
        self._rejects_undecodable = rejects_undecodable

    async def start(self, prefetch: int) -> None:
        """Open the channel with ``prefetch`` unacked deliveries and consume.

        Raises:
            ConfigurationError: the queue does not exist.
        """
        await self.channel.initialize()
        await self.channel.set_qos(prefetch_count=prefetch)
        await self.ensure_consuming()

    def watch(self) -> None:
        """From now on a closed channel is reported, and each reopened one consumed again."""
        self.channel.close_callbacks.add(self._host.consumer_trouble)
        self.channel.reopen_callbacks.add(self.on_reopen)

    async def on_message(self, message: aiormq.abc.DeliveredMessage) -> None:
        # aiormq starts one task per delivery, in delivery order; this runs before any await,
        # so the batcher sees the deliveries of its channel in order.
        acks = self._acks
        if acks is None or acks.channel is not message.channel:
            acks = self._acks = self._host.ack_batcher(message.channel)
        if acks is not None:
            acks.delivered(cast(Basic.Deliver, message.delivery).delivery_tag or 0)
        self.in_flight += 1
        bad = self._rejects_undecodable and _pamqp.undecodable(
            message.header.properties, cast(Basic.Deliver, message.delivery).routing_key
        )
        if bad:
            # Nothing downstream could publish it again: the broker dead-letters it unchanged.
            log.warning(
                "message_rejected_undecodable",
                queue=self.queue,
                field=bad,
                message_id=repr(message.header.properties.message_id),
            )
            await AmqpDelivery(message, self, acks).nack(requeue=False)
            return
        try:
            await self._callback(AmqpDelivery(message, self, acks))
        except Exception:
            # Left unsettled; it returns to the queue when the channel closes.
            log.exception("consumer_callback_failed", queue=self.queue)

    def settled(self) -> None:
        self.in_flight -= 1
        if self.cancelled and self.in_flight <= 0:
            self._host.spawn(self.close_channel())

    async def ensure_consuming(self) -> bool:
        """Consume on the channel's current aiormq channel if not yet; False if it is closed.

        Raises:
            ConfigurationError: the queue is gone (checked first, so the channel survives).
        """
        async with self._lock:
            if self.cancelled:
                return True
            raw = cast(aiormq.Channel, await self.channel.get_underlay_channel())
            if raw.is_closed:
                return False
            if self.tag not in raw.consumers:
                await self._host.probe_queue(self.queue)
                raw.on_consumer_cancel_callbacks.add(self._host.consumer_trouble)
                await raw.basic_consume(self.queue, self.on_message, consumer_tag=self.tag)
            return True

    async def on_reopen(self, _: Any) -> None:
        try:
            async with asyncio.timeout(self._config.declare_timeout):
                await self.ensure_consuming()
        except Exception as exc:
            log.warning("consumer_restore_failed", queue=self.queue, error=repr(exc))
            self._host.consumer_trouble()

    async def cancel(self, *, queue_deleted: bool = False) -> None:
        """Stop consuming; the channel closes once the deliveries in flight are settled.

        Args:
            queue_deleted: the queue is being deleted, and the deliveries in flight with it:
                the channel closes now.
        """
        if queue_deleted:
            self.in_flight = 0
        if self.cancelled:
            return
        self.cancelled = True
        self._host.consumer_cancelled(self)
        try:
            async with asyncio.timeout(self._config.declare_timeout):
                raw = await self.channel.get_underlay_channel()
                if not raw.is_closed:
                    await raw.basic_cancel(self.tag)
        except (TimeoutError, *LOST) as exc:
            log.warning("consumer_cancel_failed", queue=self.queue, error=repr(exc))
        if self.in_flight <= 0:  # else the last settle closes the channel
            await self.close_channel()

    async def close_channel(self) -> None:
        # A channel we close on purpose is no consumer loss for the watchdog.
        self.channel.close_callbacks.discard(self._host.consumer_trouble)
        with contextlib.suppress(TimeoutError, *LOST):
            async with asyncio.timeout(self._config.connect_timeout):
                if self._acks is not None:
                    await self._acks.writer.drain()  # acks asked for go out before the close
                await self.channel.close()
