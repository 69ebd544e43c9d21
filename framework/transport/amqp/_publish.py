"""Publishing with confirms: one properties object per message, one shared confirm deadline.

The publish channel confirms, and a return (of a ``mandatory`` publish nobody could route) fails
the publish. Where aiormq supports it (``_frames.supports_fast_path``), frames are written
straight to the connection's frame writer and every pending confirm is watched by one timer
(``_frames.ConfirmDeadlines``) instead of one ``asyncio.timeout`` per publish; otherwise aiormq's
``basic_publish`` does the work.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import aiormq.abc
import msgspec
import structlog
from aiormq.exceptions import ChannelNotFoundEntity
from pamqp.commands import Basic

from framework.errors import LeveretError, PublishFailed, PublishNacked, PublishTimeout
from framework.transport.amqp import _frames
from framework.transport.amqp._connection import AmqpConnection
from framework.transport.amqp._errors import LOST, UNENCODABLE, not_encodable
from framework.transport.base import DIRECT_REPLY_TO, OutgoingMessage

__all__ = ["Publisher"]

log = structlog.get_logger("framework.transport.amqp")

# For this long after a connection loss a nack is taken for a quorum queue electing a new leader
# (under a second on the cluster here) and the publish is tried again, after a short pause.
_FAILOVER_WINDOW = 15.0
NACK_PAUSE = 0.25
# Otherwise a nacked publish is tried again for this long (pauses of 0.25, 0.5, 0.75 s...): a
# quorum queue whose leader's node another client saw die, or a full queue's reject-publish
# (back-pressure, RabbitMQ's advice is to publish again later). Then it is a PublishNacked.
NACK_PATIENCE = 2.0

_PLAIN = (str, int, bool, float, type(None))
_P = TypeVar("_P")


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


def _encode_properties(
    build: Callable[..., _P], message: OutgoingMessage, reply_to: str | None, timestamp: Any
) -> _P:
    """How an ``OutgoingMessage`` becomes AMQP basic properties: the one mapping of both publish
    paths, handed to ``build`` (``timestamp`` as ``build`` takes it)."""
    headers = message.headers
    expiration = message.expiration_ms
    return build(
        content_type=message.content_type,
        headers={k: _to_wire(v) for k, v in headers.items()} if headers else None,
        delivery_mode=2 if message.persistent else 1,
        correlation_id=message.correlation_id,
        reply_to=reply_to,
        expiration=None if expiration is None else str(expiration),
        message_id=message.message_id,
        timestamp=timestamp,
        message_type=message.type,
        user_id=message.user_id,
    )


def _properties(message: OutgoingMessage, reply_to: str | None) -> Basic.Properties:
    """The properties as aiormq's ``basic_publish`` takes them (pamqp wants a datetime)."""
    timestamp = message.timestamp
    when = None if timestamp is None else datetime.fromtimestamp(timestamp, UTC)
    return _encode_properties(Basic.Properties, message, reply_to, when)


def _wire_properties(message: OutgoingMessage, reply_to: str | None) -> bytes:
    """The properties encoded for the fast publish path (the timestamp in whole seconds)."""
    return _encode_properties(_frames.encode_properties, message, reply_to, message.timestamp)


class _Attempt:
    """One publish's deadline, and whether its message was written to a channel yet."""

    __slots__ = ("confirm_wait", "deadline", "limit", "written")

    def __init__(self, deadline: float, limit: float, confirm_wait: float) -> None:
        self.deadline = deadline
        self.limit = limit
        self.confirm_wait = confirm_wait
        self.written = False

    def timed_out(
        self, exchange: str, routing_key: str, exc: BaseException | None = None
    ) -> PublishTimeout:
        """The error of a publish whose deadline passed (``exc``: the last try's failure)."""
        if not self.written:
            return PublishTimeout(
                f"not sent: no connection to the broker within {self.limit:g}s, so nothing was "
                "delivered; send it again",
                may_be_delivered=False,
                exchange=exchange,
                routing_key=routing_key,
            )
        if exc is None or isinstance(exc, TimeoutError):
            why = "no confirm"
        else:
            why = f"connection lost before the confirm ({exc!r}), not back"
        return PublishTimeout(
            f"{why} within {self.limit:g}s: the message may have been delivered; send it again "
            "with the same message id",
            exchange=exchange,
            routing_key=routing_key,
        )


class Publisher:
    """Publishes on the connection's publish channel (and, for requests, on any channel).

    Args:
        link: the connection.
        exchanges: names of exchanges known to exist, shared with the topology (which adds
            what it declares); others are checked before the first publish to them.
    """

    def __init__(self, link: AmqpConnection, *, exchanges: set[str]) -> None:
        self._link = link
        self._exchanges = exchanges
        self._raw: aiormq.abc.AbstractChannel | None = None
        # The aiormq channel under aio-pika's publish channel; ``_raw`` differs from it after a
        # renewal (``_taken_elsewhere``), until the next reconnect.
        self._pika_raw: aiormq.abc.AbstractChannel | None = None
        self._deadlines: _frames.ConfirmDeadlines | None = None
        # For ``stalled_for``: publishes waiting now, since when some have been, the latest
        # confirm, and the first and latest failure since it (None: none since).
        self._waiting = 0
        self._busy_since = 0.0
        self._confirmed_at = 0.0
        self._failing_since: float | None = None
        self._failed_at = 0.0

    def start(self) -> None:
        """Start watching confirm deadlines (the connection is open)."""
        self._deadlines = _frames.ConfirmDeadlines(self._link.config.publish_timeout)

    def close(self) -> None:
        if self._deadlines is not None:
            self._deadlines.close()
        self._raw = None

    async def publish(
        self,
        message: OutgoingMessage,
        *,
        exchange: str,
        routing_key: str,
        mandatory: bool,
        resend: bool = True,
        timeout: float | None = None,
    ) -> None:
        """Publish ``message`` and wait for its confirm (see ``AmqpTransport.publish``).

        A publish whose connection (or channel) is lost before the confirm has an unknown
        outcome: it is sent again, with the same message id, on the connection that replaces it
        (another node of a cluster), as long as its deadline (``timeout``, ``publish_timeout``
        by default) has not passed since the first try; a consumer's inbox drops the copy if
        both arrived. A confirm that does not come within ``publish_timeout`` is sent again
        too while the deadline leaves time. Past the deadline (or at once with
        ``resend=False``) it is a ``PublishTimeout`` that says whether the message may have
        been delivered (``may_be_delivered``). A nacked publish is tried again
        on a fresh channel at once (``_taken_elsewhere``), then on the publish channel after
        short pauses, for ``NACK_PATIENCE`` (until the deadline after a connection loss),
        before it is a ``PublishNacked``.
        """
        if exchange not in self._exchanges:
            await self.check_exchange(exchange, routing_key)
        if mandatory and not exchange and routing_key.startswith(DIRECT_REPLY_TO):
            mandatory = False  # RabbitMQ returns every mandatory reply, delivered or not
        if not message.message_id:
            # Set here, so that a copy sent again after a lost connection carries the same one
            # (aiormq would set one too: a basic.return is matched to its publish by it).
            message = msgspec.structs.replace(message, message_id=uuid.uuid4().hex)
        loop = asyncio.get_running_loop()
        now = loop.time()
        if not self._waiting:
            self._busy_since = now
        self._waiting += 1
        limit = self._link.config.publish_timeout if timeout is None else timeout
        attempt = _Attempt(now + limit, limit, self._link.config.publish_timeout)
        try:
            if limit < self._link.config.publish_timeout:
                # Shorter than one confirm's wait (the shared timer's): bounded from outside.
                try:
                    async with asyncio.timeout_at(attempt.deadline):
                        await self._publish_until(
                            message, exchange, routing_key, mandatory, resend, attempt
                        )
                except TimeoutError:
                    raise attempt.timed_out(exchange, routing_key) from None
            else:
                await self._publish_until(
                    message, exchange, routing_key, mandatory, resend, attempt
                )
        except (PublishTimeout, PublishNacked):  # the broker's trouble, not the message's
            if self._failing_since is None:
                self._failing_since = loop.time()
            self._failed_at = loop.time()
            raise
        else:
            self._confirmed_at = loop.time()
            self._failing_since = None
        finally:
            self._waiting -= 1

    def stalled_for(self, now: float) -> float:
        """How long publishing has been stuck (``Transport.publishing_stalled_for``): the
        oldest wait with nothing confirmed since it began, or the time since the first failure
        after the latest confirm while failures keep coming (the latest within two
        ``publish_timeout``s)."""
        stalled = now - max(self._busy_since, self._confirmed_at) if self._waiting else 0.0
        failing = self._failing_since
        if failing is not None and now - self._failed_at < 2 * self._link.config.publish_timeout:
            stalled = max(stalled, now - failing)
        return stalled

    async def _publish_until(
        self,
        message: OutgoingMessage,
        exchange: str,
        routing_key: str,
        mandatory: bool,
        resend: bool,
        attempt: _Attempt,
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = attempt.deadline
        nacks, first_nack = 0, 0.0
        while True:
            try:
                await self._publish_once(message, exchange, routing_key, mandatory, attempt)
                return
            except (TimeoutError, *LOST) as exc:
                if isinstance(exc, TimeoutError) and loop.time() >= deadline:
                    raise attempt.timed_out(exchange, routing_key) from None
                error = self.error(exc, exchange, routing_key, message.user_id)
                if isinstance(error, PublishNacked) and resend:
                    stale = self._raw
                    with contextlib.suppress(TimeoutError, *LOST):  # judged by the nack
                        if await self._taken_elsewhere(
                            message, exchange, routing_key, mandatory, deadline, stale
                        ):
                            return
                # A lost connection, or no confirm within publish_timeout while the deadline
                # leaves time (the connection may be dead before its heartbeat says so).
                lost = isinstance(error, PublishTimeout)
                if isinstance(error, PublishNacked):
                    now = loop.time()
                    nacks += 1
                    first_nack = first_nack or now
                    if self.after_failover(now) or now - first_nack < NACK_PATIENCE:
                        # A quorum queue without a leader yet, or a full one: try again soon.
                        lost = True
                        pause = min(NACK_PAUSE * nacks, NACK_PATIENCE / 2)
                        await asyncio.sleep(min(pause, max(0.0, deadline - now)))
                if not (lost and resend) or self._link.closed or loop.time() >= deadline:
                    if isinstance(error, PublishTimeout):
                        raise attempt.timed_out(exchange, routing_key, exc) from None
                    raise error from None
                if not attempt.written:
                    continue  # nothing went out: wait for the channel again
                log.info(
                    "publish_resent",
                    message_id=message.message_id,
                    exchange=exchange,
                    reason=self._link.errors.scrub(repr(exc)),
                )

    async def _taken_elsewhere(
        self,
        message: OutgoingMessage,
        exchange: str,
        routing_key: str,
        mandatory: bool,
        deadline: float,
        stale: aiormq.abc.AbstractChannel | None,
    ) -> bool:
        """Publish a nacked ``message`` once more, on a fresh channel: whether it was taken.

        A RabbitMQ 3.10 channel whose first publish to a quorum queue finds the queue's leader
        gone (its node just died, the election not over) nacks every later publish to that
        queue, for good; a fresh channel is fine once a new leader is elected (RABBITMQ.md). A
        queue that refuses the message (``reject-publish`` when full) nacks it here too. When
        the fresh channel takes what ``stale`` refused, it becomes the publish channel (the
        stale one is left to settle what is in flight on it, then closed: closing it at once
        raced frames still being written to it).

        Raises:
            TimeoutError: no confirm by ``deadline``.
        """
        async with asyncio.timeout_at(deadline):
            raw = await self._link.raw_channel(confirms=True)
            try:
                await self.confirmed(
                    raw,
                    message,
                    exchange=exchange,
                    routing_key=routing_key,
                    mandatory=mandatory,
                    reply_to=message.reply_to,
                )
            except BaseException as exc:
                self._retire(raw, settled=True)
                if isinstance(exc, LOST) and isinstance(
                    self.error(exc, exchange, routing_key), PublishNacked
                ):
                    return False
                raise
        if stale is not None and stale is self._raw and not stale.is_closed:
            self._raw = raw
            log.warning(
                "publish_channel_renewed",
                node=self._link.node,
                reason="the broker nacked on this channel what it took on a fresh one",
            )
            if stale is not self._pika_raw:
                self._retire(stale)  # a channel of this publisher's own from an earlier renewal
        else:
            self._retire(raw, settled=True)
        return True

    def _retire(self, raw: aiormq.abc.AbstractChannel, *, settled: bool = False) -> None:
        """Close ``raw``: at once when its one publish is ``settled`` (a flood of nacks must not
        pile up channels), else once what others may have in flight on it is settled
        (``publish_timeout``)."""

        async def close_later() -> None:
            if not settled:
                await asyncio.sleep(self._link.config.publish_timeout + 1)
            if not raw.is_closed:
                with contextlib.suppress(*LOST):
                    await raw.close()

        self._link.spawn(close_later())

    def after_failover(self, now: float) -> bool:
        """Whether the connection was lost a moment ago (nacks may be a leader election)."""
        lost_at = self._link.lost_at
        return lost_at is not None and now - lost_at < _FAILOVER_WINDOW

    async def _publish_once(
        self,
        message: OutgoingMessage,
        exchange: str,
        routing_key: str,
        mandatory: bool,
        attempt: _Attempt,
    ) -> None:
        channel = self._raw
        if (
            self._link.fast
            and channel is not None
            and not channel.is_closed
            and not attempt.written
        ):
            # The shared confirm timer bounds the wait (publish_timeout from now, no later than
            # the deadline on a first try); a copy sent again takes the path below.
            attempt.written = True
            await self.confirmed(
                channel,
                message,
                exchange=exchange,
                routing_key=routing_key,
                mandatory=mandatory,
                reply_to=message.reply_to,
            )
            return
        if channel is None or channel.is_closed:
            # Reconnecting: wait for the channel until the deadline.
            self._link.require()
            assert self._link.publish_channel is not None
            async with asyncio.timeout_at(attempt.deadline):
                channel = await self._link.live_channel(self._link.publish_channel)
            self._raw = self._pika_raw = channel
        attempt.written = True
        # One confirm's wait at most (the rest of the deadline is for sending it again).
        loop = asyncio.get_running_loop()
        async with asyncio.timeout_at(min(attempt.deadline, loop.time() + attempt.confirm_wait)):
            await self.confirmed(
                channel,
                message,
                exchange=exchange,
                routing_key=routing_key,
                mandatory=mandatory,
                reply_to=message.reply_to,
            )

    def error(
        self, exc: BaseException, exchange: str, routing_key: str, user_id: str | None = None
    ) -> LeveretError:
        """The error of a publish that failed with ``exc`` (a vanished exchange is forgotten)."""
        if isinstance(exc, ChannelNotFoundEntity):
            self._exchanges.discard(exchange)
        connected = self._link.connection is not None
        return self._link.errors.publish_error(
            exc, exchange, routing_key, user_id, connected=connected
        )

    async def check_exchange(self, exchange: str, routing_key: str) -> None:
        """Passively declare ``exchange`` once, so a publish to a missing one says so.

        Raises:
            PublishFailed: the exchange does not exist.
        """
        try:
            async with asyncio.timeout(self._link.config.declare_timeout):
                async with self._link.scratch_channel() as channel:
                    await channel.exchange_declare(exchange, passive=True)
        except ChannelNotFoundEntity:
            raise PublishFailed(
                f"exchange {exchange!r} does not exist; declare it before publishing",
                exchange=exchange,
                routing_key=routing_key,
            ) from None
        except (TimeoutError, *LOST) as exc:
            raise self.error(exc, exchange, routing_key) from None
        self._exchanges.add(exchange)

    def knows(self, exchange: str) -> bool:
        return exchange in self._exchanges

    async def confirmed(
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
            NotEncodable: AMQP cannot carry the message.
        """
        deadlines = self._deadlines
        if not self._link.fast or deadlines is None:
            try:
                frames = Basic.Publish(exchange=exchange, routing_key=routing_key)
                properties = _properties(message, reply_to)
                properties.marshal()  # what basic_publish will do: fail here, not in aiormq
                frames.marshal()
            except UNENCODABLE as exc:
                raise not_encodable(exc, exchange, routing_key) from None
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
            confirmation = _frames.publish(
                self._link.frame_writer(channel),
                channel,
                exchange=exchange,
                routing_key=routing_key,
                mandatory=mandatory,
                properties=_wire_properties(message, reply_to),
                message_id=message_id,
                body=message.body,
            )
        except UNENCODABLE as exc:
            raise not_encodable(exc, exchange, routing_key) from None
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
