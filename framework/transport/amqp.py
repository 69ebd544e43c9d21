"""The RabbitMQ transport, on aio-pika's robust connection. The only module importing aio-pika.

Channels: one for publishing (confirms, returns raise), one for topology, one for requests
(confirms, consuming ``amq.rabbitmq.reply-to`` without acks), and one per ``consume()``. Topology
is checked on a throwaway channel first, so a ``PRECONDITION_FAILED`` never kills a long-lived
channel. aio-pika reconnects and reopens the channels (with their QoS, exchanges, queues and
bindings); the hot path talks to the aiormq channel underneath: publishing builds one properties
object per message, and consumers are plain ``basic.consume`` callbacks that we re-issue on each
reopened channel, so deliveries skip aio-pika's per-message objects and extra task.

After a connection loss or a broker-side consumer cancel, a watchdog verifies that every consumer
is back (its tag is live on an open channel, re-issued if missing, and the broker counts a
consumer on the queue). If that does not happen within ``AmqpConfig.consumer_verify_timeout``,
``wait_failed()`` returns the error: the worker exits non-zero and its supervisor starts afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import ssl
import struct
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

import aiormq
import aiormq.abc
import msgspec
import structlog
from aio_pika import RobustConnection
from aio_pika.abc import AbstractConnection, AbstractRobustChannel, AbstractRobustQueue
from aio_pika.connection import make_url
from aiormq.exceptions import (
    AMQPError,
    ChannelAccessRefused,
    ChannelClosed,
    ChannelInvalidStateError,
    ChannelNotFoundEntity,
    ChannelPreconditionFailed,
    DeliveryError,
    PublishError,
)
from pamqp.commands import Basic, Queue

from framework.errors import (
    AccessRefused,
    BrokerUnreachable,
    ConfigurationError,
    LeveretError,
    NotEncodable,
    PublishFailed,
    PublishNacked,
    PublishTimeout,
    TLSVerificationFailed,
    TransportClosed,
    Unroutable,
)
from framework.transport import _lenient, _wire
from framework.transport.base import (
    BindingSpec,
    Consumer,
    Delivery,
    DeliveryCallback,
    FlowListener,
    HeaderLimits,
    OutgoingMessage,
    QueueInfo,
    Topology,
    Transport,
)
from framework.urls import check_broker_url, redact, url_passwords

__all__ = ["AmqpConfig", "AmqpTransport"]

log = structlog.get_logger(__name__)
_lenient.install()  # no crafted content header may drop the connection (see _lenient)

REPLY_TO = "amq.rabbitmq.reply-to"
_REPLY_PREFIX = REPLY_TO + "."
# Errors of a channel or connection that went away under us; the broker requeues what we held.
_LOST = (AMQPError, ChannelInvalidStateError, ConnectionError, RuntimeError)
_PLAIN = (str, int, bool, float, type(None))
# What encoding a message for the wire raises when AMQP cannot carry it: a header value of no
# AMQP type or out of range, a short string over 255 bytes. Never retried: see NotEncodable.
_UNENCODABLE = (TypeError, ValueError, OverflowError, struct.error, RecursionError)
# TLS files aiormq reads from an amqps:// URL's query (with capath, cadata and no_verify_ssl).
_TLS_FILES = ("cafile", "certfile", "keyfile")
# aiormq 7 handles connection.blocked / unblocked in these private methods, with no callback.
_FLOW_HANDLERS = (
    ("_Connection__handle_connection_blocked", True),
    ("_Connection__handle_connection_unblocked", False),
)


@dataclass(frozen=True, slots=True)
class AmqpConfig:
    """Deadlines and intervals of the RabbitMQ transport, in seconds.

    Args:
        connect_timeout: to open the connection and its channels (and to close them).
        publish_timeout: for the broker's confirm of one publish.
        declare_timeout: for declaring topology, starting or cancelling a consumer.
        heartbeat: AMQP heartbeat; a dead peer is noticed after about two of them.
        reconnect_interval: pause between reconnection attempts.
        consumer_verify_timeout: after a connection or consumer loss, time allowed until every
            consumer is verified back; past it ``wait_failed()`` returns.
        header_limits: bounds on the header tables of deliveries; a delivery past them is
            rejected to its DLQ unread. pamqp decodes every connection's frames, so they are
            process-wide: the transport that connects last sets them.
    """

    connect_timeout: float = 10.0
    publish_timeout: float = 10.0
    declare_timeout: float = 10.0
    heartbeat: int = 10
    reconnect_interval: float = 1.0
    consumer_verify_timeout: float = 15.0
    header_limits: HeaderLimits = field(default_factory=HeaderLimits)


def _to_wire(value: Any) -> Any:
    """A header value as pamqp encodes it (it knows bytearray, not bytes)."""
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, bytes):
        return bytearray(value)
    if isinstance(value, dict):
        return {k: _to_wire(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_wire(v) for v in value]
    return value


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


def _properties(message: OutgoingMessage, reply_to: str | None) -> Basic.Properties:
    timestamp = message.timestamp
    expiration = message.expiration_ms
    headers = message.headers
    return Basic.Properties(
        content_type=message.content_type,
        headers={k: _to_wire(v) for k, v in headers.items()} if headers else None,
        delivery_mode=2 if message.persistent else 1,
        correlation_id=message.correlation_id,
        reply_to=reply_to,
        expiration=None if expiration is None else str(expiration),
        message_id=message.message_id,
        timestamp=None if timestamp is None else datetime.fromtimestamp(timestamp, UTC),
        message_type=message.type,
        user_id=message.user_id,
    )


def _wire_properties(message: OutgoingMessage, reply_to: str | None) -> bytes:
    """The same properties as ``_properties``, encoded for the fast publish path."""
    headers = message.headers
    expiration = message.expiration_ms
    return _wire.encode_properties(
        content_type=message.content_type,
        headers={k: _to_wire(v) for k, v in headers.items()} if headers else None,
        delivery_mode=2 if message.persistent else 1,
        correlation_id=message.correlation_id,
        reply_to=reply_to,
        expiration=None if expiration is None else str(expiration),
        message_id=message.message_id,
        timestamp=message.timestamp,
        message_type=message.type,
        user_id=message.user_id,
    )


def _certificate_error(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification failure behind ``exc`` (aiormq wraps it), if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLCertVerificationError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


# RabbitMQ's text of a refused publish: "ACCESS_REFUSED - access to exchange 'x' in vhost ...".
_REFUSED_EXCHANGE = re.compile(r"access to exchange '([^']*)'")
# ... and of a user_id that is not the connection's user (it closes the channel, 406).
_REFUSED_USER_ID = re.compile(r"user_id property set to '([^']*)' but authenticated user was")


def _broker_text(exc: BaseException) -> str:
    return str(exc.args[0]) if exc.args else repr(exc)


class _AmqpDelivery(Delivery):
    __slots__ = ("_acks", "_channel", "_consumer", "_settled", "_tag")

    def __init__(
        self,
        message: aiormq.abc.DeliveredMessage,
        consumer: _AmqpConsumer | None,
        acks: _wire.AckBatcher | None = None,
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
        except _LOST as exc:
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
        except _LOST as exc:
            log.warning("nack_dropped_channel_closed", message_id=self.message_id, error=repr(exc))
        if self._consumer is not None:
            self._consumer.settled()


class _AmqpConsumer(Consumer):
    """A consumer on its own robust channel; it consumes (again) on each new aiormq channel.

    aio-pika restores the channel and its QoS; the ``basic.consume`` is ours, so a consumer lost
    to a broker-side cancel can be re-issued without racing aio-pika's own restore.
    """

    def __init__(
        self,
        transport: AmqpTransport,
        channel: AbstractRobustChannel,
        queue: str,
        callback: DeliveryCallback,
    ) -> None:
        self.queue = queue
        self.channel = channel
        self.tag = f"leveret.{uuid.uuid4().hex}"
        self.cancelled = False
        self.in_flight = 0
        self._transport = transport
        self._callback = callback
        self._lock = asyncio.Lock()
        self._acks: _wire.AckBatcher | None = None
        # Only where the broker dead-letters a rejected delivery may one be rejected unread.
        spec = transport._declared.get(f"queue:{queue}")
        self._rejects_undecodable = getattr(spec, "dead_letter_exchange", None) is not None

    async def on_message(self, message: aiormq.abc.DeliveredMessage) -> None:
        # aiormq starts one task per delivery, in delivery order; this runs before any await,
        # so the batcher sees the deliveries of its channel in order.
        acks = self._acks
        if acks is None or acks.channel is not message.channel:
            acks = self._acks = self._transport._ack_batcher(message.channel)
        if acks is not None:
            acks.delivered(cast(Basic.Deliver, message.delivery).delivery_tag or 0)
        self.in_flight += 1
        bad = self._rejects_undecodable and _lenient.undecodable(
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
            await _AmqpDelivery(message, self, acks).nack(requeue=False)
            return
        try:
            await self._callback(_AmqpDelivery(message, self, acks))
        except Exception:
            # Left unsettled; it returns to the queue when the channel closes.
            log.exception("consumer_callback_failed", queue=self.queue)

    def settled(self) -> None:
        self.in_flight -= 1
        if self.cancelled and self.in_flight <= 0:
            self._transport._spawn(self.close_channel())

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
                await self._transport._probe_queue(self.queue)
                raw.on_consumer_cancel_callbacks.add(self._transport._on_consumer_trouble)
                await raw.basic_consume(self.queue, self.on_message, consumer_tag=self.tag)
            return True

    async def on_reopen(self, _: Any) -> None:
        try:
            async with asyncio.timeout(self._transport.config.declare_timeout):
                await self.ensure_consuming()
        except Exception as exc:
            log.warning("consumer_restore_failed", queue=self.queue, error=repr(exc))
            self._transport._start_watchdog()

    async def cancel(self) -> None:
        if self.cancelled:
            return
        self.cancelled = True
        self._transport._consumers.discard(self)
        try:
            async with asyncio.timeout(self._transport.config.declare_timeout):
                raw = await self.channel.get_underlay_channel()
                if not raw.is_closed:
                    await raw.basic_cancel(self.tag)
        except (TimeoutError, *_LOST) as exc:
            log.warning("consumer_cancel_failed", queue=self.queue, error=repr(exc))
        if self.in_flight <= 0:  # else the last settle closes the channel
            await self.close_channel()

    async def close_channel(self) -> None:
        # A channel we close on purpose is no consumer loss for the watchdog.
        self.channel.close_callbacks.discard(self._transport._on_consumer_trouble)
        with contextlib.suppress(TimeoutError, *_LOST):
            async with asyncio.timeout(self._transport.config.connect_timeout):
                if self._acks is not None:
                    await self._acks.writer.drain()  # acks asked for go out before the close
                await self.channel.close()


class AmqpTransport(Transport):
    """Transport on RabbitMQ through aio-pika's robust connection.

    Args:
        url: ``amqp://user:password@host:port/vhost`` (or ``amqps://``); never logged unredacted.
        config: deadlines and reconnection settings.
    """

    def __init__(self, url: str, *, config: AmqpConfig = AmqpConfig()) -> None:
        self.config = config
        self._url = url
        self._safe_url = redact(url)
        self._connection: RobustConnection | None = None
        self._closed = False
        self._publish_channel: AbstractRobustChannel | None = None
        self._publish_raw: aiormq.abc.AbstractChannel | None = None
        self._topology_channel: AbstractRobustChannel | None = None
        self._rpc_channel: AbstractRobustChannel | None = None
        self._reply_raw: aiormq.abc.AbstractChannel | None = None
        self._reply_lock = asyncio.Lock()
        self._pending: dict[str, asyncio.Future[Delivery]] = {}
        # Strong references: aio-pika restores only what is still referenced (aio-pika #536).
        self._known_exchanges: set[str] = {""}
        self._queues: dict[str, AbstractRobustQueue] = {}
        self._consumers: set[_AmqpConsumer] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._reopened: dict[AbstractRobustChannel, asyncio.Event] = {}
        self._watchdog: asyncio.Task[None] | None = None
        self._trouble = False  # set by every loss signal; the watchdog checks again after it
        self._declared: dict[str, object] = {}  # "queue:NAME"/"exchange:NAME" -> spec
        self._failed: asyncio.Future[BaseException] | None = None
        self._flow_listeners: list[FlowListener] = []
        self._flow_raw: object | None = None  # the aiormq connection whose flow frames we hear
        self._blocked = False
        self._fast = False  # aiormq channels support the batched publish and ack path
        self._writer: _wire.FrameWriter | None = None
        self._deadlines: _wire.ConfirmDeadlines | None = None

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open" if self._connection else "new"
        return f"<AmqpTransport {self._safe_url} {state}>"

    @property
    def user(self) -> str:
        """The URL's user name (``guest`` when it names none, as aio-pika then logs in)."""
        return unquote(urlsplit(self._url).username or "") or "guest"

    # -- lifecycle -------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the connection and the long-lived channels.

        Raises:
            BrokerUnreachable: no connection within ``connect_timeout`` (bad host, port,
                credentials or vhost); the URL in it has its password redacted.
            TLSVerificationFailed: (a BrokerUnreachable) the broker's certificate is not
                trusted.
            ConfigurationError: the URL cannot be parsed, or names a TLS file that cannot be
                read.
        """
        if self._closed:
            raise TransportClosed("a closed transport cannot reconnect; create a new one")
        if self._connection is not None:
            return
        self._check_tls_files()
        check_broker_url(self._url)  # escaped password, no_verify_ssl 0/1; warns when it is off
        cfg = self.config
        _lenient.set_header_limits(cfg.header_limits)
        try:
            url = make_url(
                self._url, heartbeat=cfg.heartbeat, reconnect_interval=cfg.reconnect_interval
            )
        except ValueError as exc:  # yarl's message quotes no part of the URL
            raise ConfigurationError(
                f"the broker URL {self._safe_url} is not valid: {exc}"
            ) from None
        # connect_robust() without the helper, so a failed attempt can still be closed.
        connection = RobustConnection(url)
        try:
            async with asyncio.timeout(cfg.connect_timeout):
                await connection.connect(timeout=cfg.connect_timeout)
                self._publish_channel = await self._open_channel(connection, confirms=True)
                self._topology_channel = await self._open_channel(connection, confirms=False)
                self._rpc_channel = await self._open_channel(connection, confirms=True)
                for channel in (self._publish_channel, self._rpc_channel):
                    channel.reopen_callbacks.add(self._on_reopen)
                self._publish_raw = await self._publish_channel.get_underlay_channel()
                self._fast = _wire.supports_fast_path(self._publish_raw)
                self._deadlines = _wire.ConfirmDeadlines(cfg.publish_timeout)
        except (TimeoutError, *_LOST, OSError) as exc:
            await self._abandon(connection)
            untrusted = _certificate_error(exc)
            if untrusted is not None:
                host = urlsplit(self._url).hostname or ""
                detail = untrusted.verify_message or str(untrusted)
                raise TLSVerificationFailed(self._safe_url, host, self._scrub(detail)) from None
            reason = f"no connection within {cfg.connect_timeout:g}s"
            if not isinstance(exc, TimeoutError):
                reason = f"{type(exc).__name__}: {exc}"
            raise BrokerUnreachable(self._safe_url, self._scrub(reason)) from None
        except BaseException:
            await self._abandon(connection)
            raise
        self._connection = connection
        self._failed = asyncio.get_running_loop().create_future()
        connection.close_callbacks.add(self._on_connection_lost)
        connection.reconnect_callbacks.add(self._on_reconnected)
        self._watch_flow()

    def _check_tls_files(self) -> None:
        """Name a missing ``cafile``/``certfile``/``keyfile`` instead of a bare ENOENT later.

        Raises:
            ConfigurationError: a TLS file named in the URL's query cannot be read.
        """
        with contextlib.suppress(ValueError):
            query = parse_qs(urlsplit(self._url).query)
            for name in _TLS_FILES:
                for path in query.get(name, ()):
                    if not os.access(path, os.R_OK):
                        raise ConfigurationError(
                            f"{name}={path!r} in the broker URL {self._safe_url} is not a "
                            "readable file: give the path of a PEM file"
                        )

    @staticmethod
    async def _open_channel(
        connection: RobustConnection, *, confirms: bool
    ) -> AbstractRobustChannel:
        channel = connection.channel(publisher_confirms=confirms, on_return_raises=confirms)
        await channel.initialize()
        return channel

    async def _abandon(self, connection: RobustConnection) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.config.connect_timeout):
                await connection.close()

    def _scrub(self, text: str) -> str:
        """``text`` without the password, in case a library error quoted the URL."""
        for password in url_passwords(self._url):  # read from the raw string, as redact does
            text = text.replace(password, "***")
        return text

    async def close(self) -> None:
        """Close the connection; unsettled deliveries return to their queues."""
        self._closed = True
        connection, self._connection = self._connection, None
        if self._watchdog is not None:
            self._watchdog.cancel()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(TransportClosed("the transport closed before the reply"))
        if self._failed is not None and not self._failed.done():
            self._failed.set_exception(TransportClosed("the transport was closed"))
            self._failed.exception()  # retrieved: nobody has to wait for it
        if self._writer is not None:  # acks asked for before close() still go out
            with contextlib.suppress(TimeoutError, *_LOST):
                async with asyncio.timeout(self.config.connect_timeout):
                    await self._writer.drain()
            self._writer = None
        if self._deadlines is not None:
            self._deadlines.close()
        tasks = [*self._tasks, *([self._watchdog] if self._watchdog else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._consumers.clear()
        self._publish_raw = self._reply_raw = None
        if connection is not None:
            try:
                async with asyncio.timeout(self.config.connect_timeout):
                    await connection.close()
            except (TimeoutError, *_LOST) as exc:
                log.warning("broker_close_failed", url=self._safe_url, error=repr(exc))

    async def wait_failed(self) -> BaseException:
        """Wait until the transport gives up on recovering, and return why.

        After a lost connection or a broker-cancelled consumer, every consumer must be verified
        back within ``consumer_verify_timeout``; otherwise this returns a ``BrokerUnreachable``.
        The worker awaits it next to its work and exits non-zero when it returns.

        Raises:
            TransportClosed: ``close()`` was called (before or while waiting).
        """
        if self._failed is None:
            raise TransportClosed("the transport is not connected")
        return await asyncio.shield(self._failed)

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _frame_writer(self, channel: aiormq.abc.AbstractChannel) -> _wire.FrameWriter:
        """The frame writer of the aiormq connection under ``channel`` (new after a reconnect)."""
        writer = self._writer
        if writer is None or writer.connection is not channel.connection:
            writer = self._writer = _wire.FrameWriter(channel.connection, self._spawn)
        return writer

    def _ack_batcher(self, channel: aiormq.abc.AbstractChannel) -> _wire.AckBatcher | None:
        if not self._fast:
            return None
        return _wire.AckBatcher(self._frame_writer(channel), channel)

    async def _publish_confirmed(
        self,
        channel: aiormq.abc.AbstractChannel,
        message: OutgoingMessage,
        *,
        exchange: str,
        routing_key: str,
        mandatory: bool,
        reply_to: str | None,
    ) -> None:
        """Publish on ``channel`` and wait for its confirm, at most ``publish_timeout``.

        Raises:
            TimeoutError: no confirm by the deadline.
        """
        if not self._fast or self._deadlines is None:
            try:
                frames = Basic.Publish(exchange=exchange, routing_key=routing_key)
                properties = _properties(message, reply_to)
                properties.marshal()  # what basic_publish will do: fail here, not in aiormq
                frames.marshal()
            except _UNENCODABLE as exc:
                raise self._not_encodable(exc, exchange, routing_key) from None
            await channel.basic_publish(
                message.body,
                exchange=exchange,
                routing_key=routing_key,
                properties=properties,
                mandatory=mandatory,
            )
            return
        message_id = message.message_id
        if not message_id:
            # aiormq sets one too: a basic.return is matched to its publish by message id.
            message_id = uuid.uuid4().hex
            message = msgspec.structs.replace(message, message_id=message_id)
        try:
            confirmation = _wire.publish(
                self._frame_writer(channel),
                channel,
                exchange=exchange,
                routing_key=routing_key,
                mandatory=mandatory,
                properties=_wire_properties(message, reply_to),
                message_id=message_id,
                body=message.body,
            )
        except _UNENCODABLE as exc:
            raise self._not_encodable(exc, exchange, routing_key) from None
        deadlines = self._deadlines
        deadline = deadlines.add(confirmation)  # one shared timer instead of one per publish
        try:
            await confirmation
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if confirmation.done() and task is not None and not task.cancelling():
                # Not a cancellation of this task: the deadline passed, or aiormq failed the
                # confirmation with the CancelledError of its reader when it gave the connection
                # up (no frame for three heartbeats). Raised as a cancellation, that ended the
                # outbox sweeper for good (found by the fault suite): it is an unconfirmed
                # publish.
                if confirmation.cancelled() and deadlines.expired(deadline):
                    raise TimeoutError from None
                raise ConnectionError("the connection was lost before the confirm") from None
            raise

    @staticmethod
    def _not_encodable(exc: BaseException, exchange: str, routing_key: str) -> NotEncodable:
        return NotEncodable(
            f"the message cannot be put on the wire: {exc}",
            exchange=exchange,
            routing_key=routing_key,
        )

    def _require(self) -> RobustConnection:
        if self._connection is None:
            raise TransportClosed("the transport is not connected (or already closed)")
        return self._connection

    # -- recovery ----------------------------------------------------------------------------

    def _on_connection_lost(self, _: AbstractConnection | None, exc: BaseException | None) -> None:
        if self._connection is not None:
            if self._watchdog is None or self._watchdog.done():  # not each failed retry
                log.warning("broker_connection_lost", url=self._safe_url, error=repr(exc))
            self._start_watchdog()

    def _on_reconnected(self, _: Any) -> None:
        log.info("broker_reconnected", url=self._safe_url)
        self._start_watchdog()
        self._watch_flow()
        if self._blocked:  # a new connection starts unblocked; a lasting alarm blocks it again
            self._on_flow(False, None)

    # -- flow control (resource alarms), for circuit breakers --------------------------------

    def add_flow_listener(self, listener: FlowListener) -> None:
        """Call ``listener(blocked, reason)`` on connection.blocked / connection.unblocked."""
        self._flow_listeners.append(listener)

    def _watch_flow(self) -> None:
        """Hear connection.blocked / unblocked on the current aiormq connection.

        aiormq 7 handles both frames in private methods and has no callback for them, so the
        live connection's two handlers are wrapped (again after each reconnect). Should a later
        aiormq rename them, nothing breaks: blocks go unheard (breakers still count the publish
        timeouts a block causes) and a warning says so.
        """
        connection = self._connection
        underlay = connection.transport if connection is not None else None
        raw = underlay.connection if underlay is not None else None
        if raw is None or raw is self._flow_raw:
            return
        self._flow_raw = raw
        for name, blocked in _FLOW_HANDLERS:
            original = getattr(raw, name, None)
            if original is None:
                log.warning("flow_control_unavailable", missing=name)
                return
            setattr(raw, name, self._flow_handler(original, blocked))

    def _flow_handler(self, original: Any, blocked: bool) -> Any:
        async def handle(frame: Any) -> None:
            await original(frame)
            self._on_flow(blocked, getattr(frame, "reason", None) if blocked else None)

        return handle

    def _on_flow(self, blocked: bool, reason: str | None) -> None:
        self._blocked = blocked
        if blocked:
            log.warning("broker_blocked_connection", url=self._safe_url, reason=reason)
        else:
            log.info("broker_unblocked_connection", url=self._safe_url)
        for listener in list(self._flow_listeners):
            try:
                listener(blocked, reason)
            except Exception:
                log.exception("flow_listener_failed")

    def _on_consumer_trouble(self, *_: Any) -> None:
        self._start_watchdog()

    def _start_watchdog(self) -> None:
        if self._connection is None or (self._failed is not None and self._failed.done()):
            return
        self._trouble = True
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = asyncio.get_running_loop().create_task(self._verify_recovery())

    async def _verify_recovery(self) -> None:
        limit = self.config.consumer_verify_timeout
        try:
            async with asyncio.timeout(limit):
                # Polling: no event says "the broker counts our consumer again".
                while True:
                    self._trouble = False
                    if await self._consumers_back() and not self._trouble:
                        break
                    await asyncio.sleep(self.config.reconnect_interval)
        except TimeoutError:
            queues = sorted({c.queue for c in self._consumers})
            log.error("consumers_not_restored", url=self._safe_url, queues=queues, timeout=limit)
            error = BrokerUnreachable(
                self._safe_url, f"consumers of {queues} not restored within {limit:g}s"
            )
            if self._failed is not None and not self._failed.done():
                self._failed.set_result(error)
            return
        log.info("consumers_verified", url=self._safe_url, count=len(self._consumers))

    async def _consumers_back(self) -> bool:
        connection = self._connection
        if connection is None or not connection.connected.is_set():
            return False
        try:
            for consumer in list(self._consumers):
                if not await consumer.ensure_consuming():  # re-issues a lost basic.consume
                    return False
            for queue in {c.queue for c in self._consumers if not c.cancelled}:
                if not (await self._probe_queue(queue)).consumer_count:
                    return False
        except (ConfigurationError, *_LOST):
            return False
        return True

    # -- topology ----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _deadline(self, what: str) -> AsyncIterator[None]:
        """``declare_timeout`` around ``what``; broker trouble surfaces as BrokerUnreachable."""
        seconds = self.config.declare_timeout
        try:
            async with asyncio.timeout(seconds):
                yield
        except (TimeoutError, *_LOST) as exc:
            reason = f"{what}: no answer within {seconds:g}s"
            if not isinstance(exc, TimeoutError):
                reason = f"{what}: {exc!r}"
            raise BrokerUnreachable(self._safe_url, self._scrub(reason)) from None

    @contextlib.asynccontextmanager
    async def _scratch_channel(self) -> AsyncIterator[aiormq.abc.AbstractChannel]:
        """A short-lived raw channel that a channel error may kill without harm."""
        connection = self._require()
        await connection.ready()
        if connection.transport is None:
            raise ChannelInvalidStateError("no connection")
        channel = await connection.transport.connection.channel(publisher_confirms=False)
        try:
            yield channel
        finally:
            if not channel.is_closed:
                with contextlib.suppress(*_LOST):
                    await channel.close()

    async def _probe_queue(self, name: str) -> Queue.DeclareOk:
        try:
            async with self._scratch_channel() as channel:
                return await channel.queue_declare(name, passive=True)
        except ChannelNotFoundEntity:
            raise ConfigurationError(f"queue {name!r} does not exist") from None

    async def declare(self, topology: Topology) -> None:
        """Declare ``topology``: first on a throwaway channel, then on the restored one.

        Raises:
            ConfigurationError: an existing queue or exchange differs, or a binding names a
                missing queue or exchange; the broker's text says which argument.
            BrokerUnreachable: not done within ``declare_timeout``.
        """
        self._require()
        async with self._deadline("declaring topology"):
            await self._check_topology(topology)
            await self._declare_robust(topology)

    async def _check_topology(self, topology: Topology) -> None:
        what = ""
        try:
            async with self._scratch_channel() as channel:
                for exchange in topology.exchanges:
                    what = f"exchange {exchange.name!r}"
                    await channel.exchange_declare(
                        exchange.name, exchange_type=exchange.type.value, durable=exchange.durable
                    )
                for queue in topology.queues:
                    what = f"queue {queue.name!r}"
                    await channel.queue_declare(
                        queue.name,
                        durable=queue.durable,
                        auto_delete=queue.auto_delete,
                        arguments=queue.arguments() or None,
                    )
                for binding in topology.bindings:
                    what = f"binding of queue {binding.queue!r} to {binding.exchange!r}"
                    await channel.queue_bind(
                        binding.queue, binding.exchange, routing_key=binding.routing_key
                    )
        except ChannelClosed as exc:
            raise ConfigurationError(f"cannot declare {what}: {_broker_text(exc)}") from None

    async def _declare_robust(self, topology: Topology) -> None:
        channel = self._topology_channel
        assert channel is not None
        # Declared once each: aio-pika keeps (and restores) every object a declare returns.
        for exchange in topology.exchanges:
            if self._declared.get(f"exchange:{exchange.name}") != exchange:
                await channel.declare_exchange(
                    exchange.name, type=exchange.type.value, durable=exchange.durable
                )
                self._declared[f"exchange:{exchange.name}"] = exchange
                self._known_exchanges.add(exchange.name)
        for spec in topology.queues:
            if self._declared.get(f"queue:{spec.name}") != spec:
                self._queues[spec.name] = await channel.declare_queue(
                    spec.name,
                    durable=spec.durable,
                    auto_delete=spec.auto_delete,
                    arguments=spec.arguments() or None,
                )
                self._declared[f"queue:{spec.name}"] = spec
        for binding in topology.bindings:
            queue = self._queues.get(binding.queue)
            if queue is None:
                # Someone else's queue: bind it, but leave restoring it to its owner (a failed
                # passive redeclare would stall aio-pika's whole reconnect).
                queue = await channel.declare_queue(binding.queue, passive=True, robust=False)
            await queue.bind(binding.exchange, binding.routing_key)

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
        self._require()
        what = f"unbinding queue {binding.queue!r} from {binding.exchange!r}"
        async with self._deadline(what):
            try:
                async with self._scratch_channel() as channel:
                    await channel.queue_unbind(
                        binding.queue, binding.exchange, routing_key=binding.routing_key
                    )
            except ChannelNotFoundEntity:
                return
            except ChannelClosed as exc:
                raise ConfigurationError(f"cannot unbind: {_broker_text(exc)}") from None
            queue = self._queues.get(binding.queue)
            if queue is not None:
                # Idempotent on the broker; what matters is that aio-pika forgets the binding.
                await queue.unbind(binding.exchange, binding.routing_key)

    async def delete_queue(self, name: str) -> None:
        """Delete ``name`` and its messages; our consumers on it are cancelled first."""
        self._require()
        for consumer in [c for c in self._consumers if c.queue == name]:
            consumer.in_flight = 0  # their messages go with the queue
            await consumer.cancel()
        channel = self._topology_channel
        assert channel is not None
        async with self._deadline(f"deleting queue {name!r}"):
            await channel.queue_delete(name)
        self._queues.pop(name, None)
        self._declared.pop(f"queue:{name}", None)

    async def queue_depth(self, name: str) -> int:
        """Ready messages in ``name``.

        Raises:
            ConfigurationError: the queue does not exist.
        """
        self._require()
        async with self._deadline(f"counting queue {name!r}"):
            return (await self._probe_queue(name)).message_count or 0

    async def queue_info(self, name: str) -> QueueInfo:
        """Ready messages and consumers of ``name``, from a passive declare.

        Raises:
            ConfigurationError: the queue does not exist.
            BrokerUnreachable: no answer within ``declare_timeout`` (e.g. while reconnecting).
        """
        self._require()
        async with self._deadline(f"inspecting queue {name!r}"):
            ok = await self._probe_queue(name)
        return QueueInfo(messages=ok.message_count or 0, consumers=ok.consumer_count or 0)

    # -- publishing --------------------------------------------------------------------------

    async def publish(
        self,
        message: OutgoingMessage,
        *,
        exchange: str,
        routing_key: str,
        mandatory: bool = True,
    ) -> None:
        if exchange not in self._known_exchanges:
            await self._check_exchange(exchange, routing_key)
        if mandatory and not exchange and routing_key.startswith(_REPLY_PREFIX):
            mandatory = False  # RabbitMQ returns every mandatory reply, delivered or not
        try:
            channel = self._publish_raw
            if self._fast and channel is not None and not channel.is_closed:
                await self._publish_confirmed(
                    channel,
                    message,
                    exchange=exchange,
                    routing_key=routing_key,
                    mandatory=mandatory,
                    reply_to=message.reply_to,
                )
                return
            async with asyncio.timeout(self.config.publish_timeout):
                if channel is None or channel.is_closed:
                    channel = await self._reopened_publish_channel()
                await self._publish_confirmed(
                    channel,
                    message,
                    exchange=exchange,
                    routing_key=routing_key,
                    mandatory=mandatory,
                    reply_to=message.reply_to,
                )
        except (TimeoutError, *_LOST) as exc:
            raise self._publish_error(exc, exchange, routing_key, message.user_id) from None

    async def _reopened_publish_channel(self) -> aiormq.abc.AbstractChannel:
        self._require()
        assert self._publish_channel is not None
        self._publish_raw = raw = await self._live_channel(self._publish_channel)
        return raw

    async def _live_channel(self, channel: AbstractRobustChannel) -> aiormq.abc.AbstractChannel:
        """The open aiormq channel under ``channel``, waiting for aio-pika to reopen it."""
        reopened = self._reopened.setdefault(channel, asyncio.Event())
        while True:
            await channel.ready()
            raw = await channel.get_underlay_channel()
            if not raw.is_closed:
                return raw
            # Closed, but aio-pika has not noticed yet: wait for its reopen (the caller's
            # deadline bounds this).
            reopened.clear()
            await reopened.wait()

    def _on_reopen(self, channel: AbstractRobustChannel | None) -> None:
        if channel is not None and channel in self._reopened:
            self._reopened[channel].set()

    def _publish_error(
        self, exc: BaseException, exchange: str, routing_key: str, user_id: str | None = None
    ) -> LeveretError:
        where = {"exchange": exchange, "routing_key": routing_key}
        if isinstance(exc, ChannelPreconditionFailed):
            refused = _REFUSED_USER_ID.search(_broker_text(exc))
            if refused is not None and user_id and refused.group(1) == user_id:
                return self._user_id_refused(exc, exchange, routing_key)
        if isinstance(exc, ChannelAccessRefused):
            refused = _REFUSED_EXCHANGE.search(_broker_text(exc))
            if refused is None or refused.group(1) == exchange:
                return self._access_refused(exc, exchange, routing_key)
            # Another publish on the shared channel was refused and the broker closed it
            # before confirming this one: its outcome is unknown, as with a lost connection.
            return PublishTimeout(
                f"the publish channel closed before the confirm ({_broker_text(exc)}); "
                "retry with the same message id",
                **where,
            )
        if isinstance(exc, PublishError):
            return Unroutable(f"no queue is bound to {exchange!r} for {routing_key!r}", **where)
        if isinstance(exc, DeliveryError):
            return PublishNacked(f"the broker refused the message: {exc}", **where)
        if isinstance(exc, TimeoutError):
            return PublishTimeout(f"no confirm within {self.config.publish_timeout:g}s", **where)
        if isinstance(exc, ChannelNotFoundEntity):
            self._known_exchanges.discard(exchange)
            return PublishFailed(f"exchange {exchange!r} does not exist: {exc}", **where)
        if self._connection is None:
            return TransportClosed("the transport is not connected (or already closed)")
        return PublishTimeout(f"connection lost before the confirm: {exc!r}", **where)

    def _access_refused(self, exc: BaseException, exchange: str, routing_key: str) -> AccessRefused:
        # Not retried: the channel is gone and the same publish would be refused again.
        user = urlsplit(self._url).username or "guest"
        log.error("publish_access_refused", exchange=exchange, routing_key=routing_key, user=user)
        return AccessRefused(
            f"RabbitMQ user {user!r} may not publish to exchange {exchange!r} "
            f"({_broker_text(exc)}): grant it write permission on that exchange "
            "(rabbitmqctl set_permissions) or publish with the credentials meant for it",
            exchange=exchange,
            routing_key=routing_key,
            user=user,
        )

    def _user_id_refused(
        self, exc: BaseException, exchange: str, routing_key: str
    ) -> AccessRefused:
        # Final like ACCESS_REFUSED: the same user_id would be refused again.
        log.error("publish_user_id_refused", exchange=exchange, user=self.user)
        return AccessRefused(
            f"RabbitMQ refused the publish to exchange {exchange!r}: {_broker_text(exc)}; "
            "publish with the connection's own user as user_id, or without one",
            exchange=exchange,
            routing_key=routing_key,
            user=self.user,
        )

    async def _check_exchange(self, exchange: str, routing_key: str) -> None:
        try:
            async with asyncio.timeout(self.config.declare_timeout):
                async with self._scratch_channel() as channel:
                    await channel.exchange_declare(exchange, passive=True)
        except ChannelNotFoundEntity:
            raise PublishFailed(
                f"exchange {exchange!r} does not exist; declare it before publishing",
                exchange=exchange,
                routing_key=routing_key,
            ) from None
        except (TimeoutError, *_LOST) as exc:
            raise self._publish_error(exc, exchange, routing_key) from None
        self._known_exchanges.add(exchange)

    # -- consuming ---------------------------------------------------------------------------

    async def consume(self, queue: str, callback: DeliveryCallback, *, prefetch: int) -> Consumer:
        """Consume ``queue`` on a channel of its own with ``prefetch`` unacked deliveries.

        Raises:
            ConfigurationError: the queue does not exist.
        """
        connection = self._require()
        channel = connection.channel(publisher_confirms=False)
        consumer = _AmqpConsumer(self, channel, queue, callback)
        try:
            async with self._deadline(f"consuming queue {queue!r}"):
                await channel.initialize()
                await channel.set_qos(prefetch_count=prefetch)
                await consumer.ensure_consuming()
        except BaseException:
            with contextlib.suppress(Exception):
                await channel.close()
            raise
        self._consumers.add(consumer)
        channel.close_callbacks.add(self._on_consumer_trouble)
        channel.reopen_callbacks.add(consumer.on_reopen)
        return consumer

    # -- request / reply ---------------------------------------------------------------------

    async def request(
        self, message: OutgoingMessage, *, exchange: str, routing_key: str, timeout: float
    ) -> Delivery:
        self._require()
        correlation_id = message.correlation_id
        if not correlation_id:
            raise ValueError("a request needs a unique correlation_id")
        if exchange not in self._known_exchanges:
            await self._check_exchange(exchange, routing_key)
        future: asyncio.Future[Delivery] = asyncio.get_running_loop().create_future()
        self._pending[correlation_id] = future
        try:
            async with asyncio.timeout(timeout):
                channel = await self._reply_channel()
                try:
                    await self._publish_confirmed(
                        channel,
                        message,
                        exchange=exchange,
                        routing_key=routing_key,
                        mandatory=True,
                        reply_to=REPLY_TO,
                    )
                except _LOST as exc:
                    raise self._publish_error(exc, exchange, routing_key) from None
                return await future
        finally:
            self._pending.pop(correlation_id, None)

    async def _reply_channel(self) -> aiormq.abc.AbstractChannel:
        """The RPC channel, consuming direct reply-to (again after every reopen)."""
        raw = self._reply_raw
        if raw is not None and not raw.is_closed:
            return raw
        async with self._reply_lock:  # only the setup is serialized, never the requests
            raw = self._reply_raw
            if raw is None or raw.is_closed:
                self._require()
                assert self._rpc_channel is not None
                raw = await self._live_channel(self._rpc_channel)
                await raw.basic_consume(REPLY_TO, self._on_reply, no_ack=True)
                self._reply_raw = raw
            return raw

    async def _on_reply(self, message: aiormq.abc.DeliveredMessage) -> None:
        future = self._pending.get(message.header.properties.correlation_id or "")
        if future is not None and not future.done():
            future.set_result(_AmqpDelivery(message, None))
