"""The connection to RabbitMQ: connecting, reconnecting, verifying consumers, flow control.

Everything about which broker we are connected to and how we get back to it lives here: aio-pika's
robust connection with its long-lived channels (one for publishing with confirms, one for
topology, one for requests), the callbacks of a lost and a restored connection, and the watchdog
that verifies every consumer afterwards. After a connection loss or a broker-side consumer
cancel, each consumer must be back (its tag live on an open channel, re-issued if missing, and
the broker counting a consumer on its queue) within ``AmqpConfig.consumer_verify_timeout``;
otherwise ``wait_failed()`` returns the error, the worker exits non-zero and its supervisor starts
afresh.

An outage is logged as one WARNING (``broker_connection_lost``) and, once every consumer is
verified back, one INFO (``broker_reconnected``: the node, what was restored, how long it took);
the client libraries' own lines about it are dropped (``framework.logging``). What is worth
more than that is an ERROR: a reconnect the broker refused for the credentials or the vhost
(``broker_access_denied``, at once, then retried: the password may be put back), and an outage
past its bound (``broker_connection_not_restored`` with the last attempt's error, or
``consumers_not_restored``). A login or vhost refused on the first connect is raised at once as
``BrokerAccessDenied``: no other node, no retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import Any

import aiormq.abc
import structlog
from aio_pika.abc import AbstractConnection, AbstractRobustChannel
from aiormq.exceptions import ChannelInvalidStateError, ChannelNotFoundEntity
from pamqp.commands import Queue
from yarl import URL

from framework.errors import ConfigurationError, TransportClosed
from framework.transport.amqp import _frames, _pamqp
from framework.transport.amqp._aiormq_flow import hear_flow
from framework.transport.amqp._config import AmqpConfig, check_url, robust_url
from framework.transport.amqp._consume import AmqpConsumer
from framework.transport.amqp._errors import LOST, BrokerErrors, describe
from framework.transport.amqp._failover import FailoverConnection
from framework.transport.base import FlowListener
from framework.urls import redact, split_urls

__all__ = ["AmqpConnection"]

log = structlog.get_logger("framework.transport.amqp")


@dataclass(slots=True)
class _Outage:
    """One outage of the connection, from its loss until every consumer is verified back."""

    started: float  # loop time of the loss
    error: str  # why the connection was lost, scrubbed
    failed_attempts: int = 0
    last_error: BaseException | None = None  # of the last failed reconnect attempt
    denied: set[str] = field(default_factory=set)  # BrokerAccessDenied causes logged


class AmqpConnection:
    """One robust connection to the broker at ``url``, its channels and its recovery.

    It is the ``ConsumerHost`` of every consumer on it.

    Args:
        url: the broker URL; only ``errors`` ever shows it, redacted.
        config: deadlines and intervals.
        errors: maps (and scrubs) the errors of this URL.
        role: what the connection is for, in its log lines.
    """

    def __init__(
        self, url: str, *, config: AmqpConfig, errors: BrokerErrors, role: str = "main"
    ) -> None:
        self.config = config
        self.role = role  # in the connection's log lines: "main", or "replies"
        self.errors = errors
        self._url = url
        self.connection: FailoverConnection | None = None
        self.closed = False
        self.fast = False  # aiormq channels support the batched publish and ack path
        self.publish_channel: AbstractRobustChannel | None = None
        self.topology_channel: AbstractRobustChannel | None = None
        self.rpc_channel: AbstractRobustChannel | None = None
        # Strong references: aio-pika restores only what is still referenced (aio-pika #536).
        self._consumers: set[AmqpConsumer] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._reopened: dict[AbstractRobustChannel, asyncio.Event] = {}
        self._writer: _frames.FrameWriter | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._trouble = False  # set by every loss signal; the watchdog checks again after it
        self._failed: asyncio.Future[BaseException] | None = None
        self._flow_listeners: list[FlowListener] = []
        self._flow_raw: object | None = None  # the aiormq connection whose flow frames we hear
        self._blocked = False
        self._outage: _Outage | None = None
        # Loop time of the last connection loss: a quorum queue whose leader was on the lost
        # node nacks publishes until a new leader is elected (under a second, RABBITMQ.md).
        self.lost_at: float | None = None

    @property
    def safe_url(self) -> str:
        return self.errors.safe_url

    # -- lifecycle ---------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the connection and the long-lived channels (see ``AmqpTransport.connect``).

        With several node URLs, the nodes are tried in turn (in a random order with
        ``AmqpConfig.shuffle_nodes``, so that workers spread over the cluster), each within its
        share of ``connect_timeout``; the first that answers is used, and a later loss moves the
        connection on to the next node (``_failover``).
        """
        if self.closed:
            raise TransportClosed("a closed transport cannot reconnect; create a new one")
        if self.connection is not None:
            return
        cfg = self.config
        urls = split_urls(self._url)
        for url in urls:
            check_url(url, self.safe_url)
        _pamqp.set_header_limits(cfg.header_limits)
        nodes = [robust_url(url, self.safe_url, cfg) for url in urls]
        order = list(range(len(nodes)))
        if cfg.shuffle_nodes:
            random.shuffle(order)
        deadline = asyncio.get_running_loop().time() + cfg.connect_timeout
        for tried, first in enumerate(order):
            left = deadline - asyncio.get_running_loop().time()
            share = max(left / (len(order) - tried), 0.001)
            try:
                connection = await self._open(nodes, first, share)
                break
            except (TimeoutError, *LOST, OSError) as exc:
                denied = self.errors.access_denied(exc)
                if denied is not None:  # every node takes the same credentials and vhost
                    raise denied from None
                if tried == len(order) - 1:
                    raise self.errors.connect_failed(exc, cfg.connect_timeout) from None
                log.warning(
                    "broker_node_unreachable",
                    node=redact(urls[first]),
                    error=self.errors.scrub(describe(exc)),
                )
        self.connection = connection
        self._failed = asyncio.get_running_loop().create_future()
        connection.close_callbacks.add(self._on_connection_lost)
        connection.reconnect_callbacks.add(self._on_reconnected)
        connection.on_attempt_failed = self._on_attempt_failed
        self._watch_flow()

    async def _open(self, nodes: list[URL], first: int, timeout: float) -> FailoverConnection:
        """A connection over ``nodes`` starting at ``nodes[first]``, with its channels."""
        # Not aio-pika's connect_robust() helper, so that a failed attempt can still be closed.
        connection = FailoverConnection(nodes, first=first)
        try:
            async with asyncio.timeout(timeout):
                await connection.connect(timeout=timeout)
                self.publish_channel = await self._open_channel(connection, confirms=True)
                self.topology_channel = await self._open_channel(connection, confirms=False)
                self.rpc_channel = await self._open_channel(connection, confirms=True)
                for channel in (self.publish_channel, self.rpc_channel):
                    channel.reopen_callbacks.add(self._on_reopen)
                raw = await self.publish_channel.get_underlay_channel()
                self.fast = _frames.supports_fast_path(raw)
        except BaseException:
            await self._abandon(connection)
            raise
        return connection

    @property
    def node(self) -> str:
        """The node connected to (or being tried), redacted."""
        connection = self.connection
        if not isinstance(connection, FailoverConnection):
            return self.safe_url
        return redact(str(connection.url.with_query(None)))

    @staticmethod
    async def _open_channel(
        connection: FailoverConnection, *, confirms: bool
    ) -> AbstractRobustChannel:
        channel = connection.channel(publisher_confirms=confirms, on_return_raises=confirms)
        await channel.initialize()
        return channel

    async def _abandon(self, connection: FailoverConnection) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.config.connect_timeout):
                await connection.close()

    async def close(self) -> None:
        """Close the connection; acks asked for go out first, unsettled deliveries return."""
        self.closed = True
        connection, self.connection = self.connection, None
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._failed is not None and not self._failed.done():
            self._failed.set_exception(TransportClosed("the transport was closed"))
            self._failed.exception()  # retrieved: nobody has to wait for it
        if self._writer is not None:  # acks asked for before close() still go out
            with contextlib.suppress(TimeoutError, *LOST):
                async with asyncio.timeout(self.config.connect_timeout):
                    await self._writer.drain()
            self._writer = None
        tasks = [*self._tasks, *([self._watchdog] if self._watchdog else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._consumers.clear()
        if connection is not None:
            try:
                async with asyncio.timeout(self.config.connect_timeout):
                    await connection.close()
            except (TimeoutError, *LOST) as exc:
                log.warning("broker_close_failed", url=self.safe_url, error=repr(exc))

    async def wait_failed(self) -> BaseException:
        """Wait until recovery is given up, and return why (see ``AmqpTransport.wait_failed``)."""
        if self._failed is None:
            raise TransportClosed("the transport is not connected")
        return await asyncio.shield(self._failed)

    def require(self) -> FailoverConnection:
        """The open connection.

        Raises:
            TransportClosed: not connected, or closed.
        """
        if self.connection is None:
            raise TransportClosed("the transport is not connected (or already closed)")
        return self.connection

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- channels ----------------------------------------------------------------------------

    async def live_channel(self, channel: AbstractRobustChannel) -> aiormq.abc.AbstractChannel:
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

    def frame_writer(self, channel: aiormq.abc.AbstractChannel) -> _frames.FrameWriter:
        """The frame writer of the aiormq connection under ``channel`` (new after a reconnect)."""
        writer = self._writer
        if writer is None or writer.connection is not channel.connection:
            writer = self._writer = _frames.FrameWriter(channel.connection, self.spawn)
        return writer

    def ack_batcher(self, channel: aiormq.abc.AbstractChannel) -> _frames.AckBatcher | None:
        if not self.fast:
            return None
        return _frames.AckBatcher(self.frame_writer(channel), channel)

    @contextlib.asynccontextmanager
    async def deadline(self, what: str) -> AsyncIterator[None]:
        """``declare_timeout`` around ``what``; broker trouble surfaces as BrokerUnreachable."""
        seconds = self.config.declare_timeout
        try:
            async with asyncio.timeout(seconds):
                yield
        except (TimeoutError, *LOST) as exc:
            reason = f"{what}: no answer within {seconds:g}s"
            if not isinstance(exc, TimeoutError):
                reason = f"{what}: {exc!r}"
            raise self.errors.unreachable(reason) from None

    async def raw_channel(self, *, confirms: bool = False) -> aiormq.abc.AbstractChannel:
        """A new raw aiormq channel on the open connection (with confirms, a return fails its
        publish); the caller closes it."""
        connection = self.require()
        await connection.ready()
        if connection.transport is None:
            raise ChannelInvalidStateError("no connection")
        channel: aiormq.abc.AbstractChannel = await connection.transport.connection.channel(
            publisher_confirms=confirms, on_return_raises=confirms
        )
        return channel

    @contextlib.asynccontextmanager
    async def scratch_channel(self) -> AsyncIterator[aiormq.abc.AbstractChannel]:
        """A short-lived raw channel that a channel error may kill without harm."""
        channel = await self.raw_channel()
        try:
            yield channel
        finally:
            if not channel.is_closed:
                with contextlib.suppress(*LOST):
                    await channel.close()

    async def probe_queue(self, name: str) -> Queue.DeclareOk:
        try:
            async with self.scratch_channel() as channel:
                return await channel.queue_declare(name, passive=True)
        except ChannelNotFoundEntity:
            raise ConfigurationError(f"queue {name!r} does not exist") from None

    # -- consumers ---------------------------------------------------------------------------

    def adopt(self, consumer: AmqpConsumer) -> None:
        """Verify ``consumer`` after every loss from now on, until it is cancelled."""
        self._consumers.add(consumer)
        consumer.watch()

    def consumers_of(self, queue: str) -> list[AmqpConsumer]:
        return [c for c in self._consumers if c.queue == queue]

    def consumer_cancelled(self, consumer: AmqpConsumer) -> None:
        self._consumers.discard(consumer)

    def consumer_trouble(self, *_: Any) -> None:
        self._start_watchdog()

    # -- recovery ----------------------------------------------------------------------------

    def _on_connection_lost(self, _: AbstractConnection | None, exc: BaseException | None) -> None:
        now = asyncio.get_running_loop().time()
        self.lost_at = now
        if self.connection is None:
            return
        if self._outage is None:  # one line per outage, not per failed attempt or channel
            error = self.errors.scrub(describe(exc) if exc is not None else "closed")
            self._outage = _Outage(started=now, error=error)
            log.warning("broker_connection_lost", node=self.node, connection=self.role, error=error)
        self._start_watchdog()

    def _on_attempt_failed(self, exc: BaseException) -> None:
        outage = self._outage
        if outage is None or self.connection is None:
            return
        outage.failed_attempts += 1
        outage.last_error = exc
        denied = self.errors.access_denied(exc)
        if denied is not None and denied.cause not in outage.denied:
            # Not silent: retrying cannot help until the broker's users or our URL change.
            outage.denied.add(denied.cause)
            log.error(
                "broker_access_denied",
                node=self.node,
                connection=self.role,
                cause=denied.cause,
                user=denied.user,
                vhost=denied.vhost,
                error=str(denied),
            )

    def _on_reconnected(self, _: Any) -> None:
        log.debug("broker_connection_reopened", node=self.node, connection=self.role)
        self._start_watchdog()
        self._watch_flow()
        if self._blocked:  # a new connection starts unblocked; a lasting alarm blocks it again
            self._on_flow(False, None)

    def _start_watchdog(self) -> None:
        if self.connection is None or (self._failed is not None and self._failed.done()):
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
            self._give_up(limit)
            return
        self._recovered()

    def _recovered(self) -> None:
        outage, self._outage = self._outage, None
        consumers = len(self._consumers)
        if outage is None:  # a consumer the broker cancelled, on a connection never lost
            log.info("consumers_verified", url=self.safe_url, count=consumers)
            return
        log.debug("consumers_verified", url=self.safe_url, count=consumers)
        connection = self.connection
        log.info(
            "broker_reconnected",
            node=self.node,
            connection=self.role,
            channels=connection.open_channels if connection is not None else 0,
            consumers=consumers,
            queues=sorted({c.queue for c in self._consumers}),
            outage=round(asyncio.get_running_loop().time() - outage.started, 3),
            attempts=outage.failed_attempts + 1,
        )

    def _give_up(self, limit: float) -> None:
        """Recovery took longer than ``limit``: log why and fail the transport."""
        outage = self._outage
        connection = self.connection
        error: BaseException
        if connection is not None and not connection.connected.is_set():
            last = outage.last_error if outage is not None else None
            denied = self.errors.access_denied(last) if last is not None else None
            if denied is not None:
                cause = str(denied)
            elif last is not None:
                cause = self.errors.scrub(describe(last))
            else:  # the one attempt still hangs (a blackholed node: until connect_timeout)
                cause = "no reconnect attempt has finished"
            log.error(
                "broker_connection_not_restored",
                node=self.node,
                connection=self.role,
                timeout=limit,
                attempts=outage.failed_attempts if outage is not None else 0,
                cause=cause,
                lost=outage.error if outage is not None else None,
            )
            error = denied or self.errors.unreachable(
                f"no connection within {limit:g}s of its loss; last attempt: {cause}"
            )
        else:
            queues = sorted({c.queue for c in self._consumers})
            log.error("consumers_not_restored", url=self.safe_url, queues=queues, timeout=limit)
            error = self.errors.unreachable(f"consumers of {queues} not restored within {limit:g}s")
        if self._failed is not None and not self._failed.done():
            self._failed.set_result(error)

    async def _consumers_back(self) -> bool:
        connection = self.connection
        if connection is None or not connection.connected.is_set():
            return False
        try:
            for consumer in list(self._consumers):
                if not await consumer.ensure_consuming():  # re-issues a lost basic.consume
                    return False
            for queue in {c.queue for c in self._consumers if not c.cancelled}:
                if not (await self.probe_queue(queue)).consumer_count:
                    return False
        except (ConfigurationError, *LOST):
            return False
        return True

    # -- flow control (resource alarms), for circuit breakers --------------------------------

    def add_flow_listener(self, listener: FlowListener) -> None:
        self._flow_listeners.append(listener)

    def _watch_flow(self) -> None:
        """Hear connection.blocked / unblocked on the current aiormq connection (again after each
        reconnect: see ``_aiormq_flow``)."""
        connection = self.connection
        underlay = connection.transport if connection is not None else None
        raw = underlay.connection if underlay is not None else None
        if raw is None or raw is self._flow_raw:
            return
        self._flow_raw = raw
        missing = hear_flow(raw, self._on_flow)
        if missing is not None:
            log.warning("flow_control_unavailable", missing=missing)

    def _on_flow(self, blocked: bool, reason: str | None) -> None:
        self._blocked = blocked
        if blocked:
            log.warning("broker_blocked_connection", url=self.safe_url, reason=reason)
        else:
            log.info("broker_unblocked_connection", url=self.safe_url)
        for listener in list(self._flow_listeners):
            try:
                listener(blocked, reason)
            except Exception:
                log.exception("flow_listener_failed")
