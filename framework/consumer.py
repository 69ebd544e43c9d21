"""The consume pipeline of one handler queue: decode, run, then ack, retry or dead-letter.

Order of operations for every delivery:

1. No ``message_id``, or the body cannot be decoded into a registered contract: publish a copy to
   the queue's DLQ with a ``leveret-dead-reason`` header, then ack. The handler never runs.
2. Run middleware and the handler under the handler deadline.
3. Success: (queries) reply, then ack. Failure: the retry policy, driven by the attempt count in
   the ``leveret-attempt`` header, republishes the message to its queue at once, via a TTL delay
   queue, or to the DLQ with the exception in headers; only then is the original acked. If that
   publish fails, the original is nacked back to its queue: nothing is lost.
4. Cancelled (shutdown): nack with requeue, never ack.

Two kinds of input leave by the broker's own dead-lettering (nack without requeue: the queue's
dead-letter exchange moves the message to the DLQ unchanged, with an ``x-death`` of reason
``rejected``) instead of a copy: a body over ``max_body_size`` (copying it would hold it in the
worker twice), and a message whose retry or DLQ copy cannot be encoded (a header value AMQP
cannot carry: publishing it again would fail the same way, and a requeue would loop hot).
A query whose ``reply_to`` is not a direct reply-to address (nor on the app's allowlist) is
dead-lettered unanswered: a reply must never go to a queue the caller merely named.
5. A publish refused for lack of permission (``AccessRefused``: by the handler, for a retry or
   dead letter, or for a query's reply) is a configuration error that no retry can fix: the app
   is told (``on_refused``, which stops its consumers), then the message is nacked back to its
   queue. It is neither retried nor dead-lettered, and waits there for the fixed deployment.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog

from framework import envelope
from framework.bus import Bus
from framework.codec import Codec
from framework.context import Context, MessageContext, QueryContext
from framework.errors import (
    AccessRefused,
    DecodeFailure,
    HandlerTimeout,
    LeveretError,
    NotEncodable,
    PublishFailed,
    TransportClosed,
)
from framework.handlers import HandlerSpec
from framework.logging import redact_text
from framework.messages import MessageKind
from framework.middleware import Incoming, Middleware, compose
from framework.observe import Handling, Observer, Outcome
from framework.retry import DeadLetter, Delay, Redeliver, RetryPolicy
from framework.routing import Naming
from framework.transport.base import DIRECT_REPLY_TO, Delivery, OutgoingMessage

__all__ = ["HandlerPipeline", "RejectMessage"]

_log = structlog.get_logger("leveret.consumer")
_MAX_HEADER_TEXT = 1000
# Attempt counts past any retry policy read as this, so ``attempt + 1`` always fits the header.
_MAX_ATTEMPT = 1 << 30


class RejectMessage(LeveretError):
    """Raise from a handler to send the message straight to the DLQ, skipping retries.

    Args:
        message: why; the DLQ's reason header reads ``rejected: <message>``.
        reason: the reason header as it is instead, for a machine-readable ``kind: detail``
            such as the saga runner's ``unknown_saga: ...``.
    """

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason if reason is not None else f"rejected: {message}"


class HandlerPipeline:
    """Delivery callback for one handler's queue.

    Args:
        spec: the handler.
        queue: the queue it consumes.
        retry: the effective retry policy.
        timeout: the handler deadline in seconds.
        on_refused: called (and awaited) with the first ``AccessRefused`` of a delivery before
            the delivery is nacked; it must stop the consuming, or the broker hands the message
            straight back.
        observer: told about every delivery and what became of it (``framework.observe``);
            None costs nothing per message.
        reply_queues: (queries) queue names a ``reply_to`` may name besides a direct reply-to
            address.
    """

    def __init__(
        self,
        spec: HandlerSpec,
        *,
        queue: str,
        codec: Codec,
        bus: Bus,
        naming: Naming,
        retry: RetryPolicy,
        timeout: float,
        on_refused: Callable[[AccessRefused], Awaitable[None]],
        middleware: Sequence[Middleware] = (),
        observer: Observer | None = None,
        reply_queues: frozenset[str] = frozenset(),
    ) -> None:
        self.spec = spec
        self.queue = queue
        self._codec = codec
        self._bus = bus
        self._naming = naming
        self._retry = retry
        self._timeout = timeout
        self._on_refused = on_refused
        self._is_query = spec.kind is MessageKind.QUERY
        self._chain = compose(middleware, self._invoke)
        self.observer = observer
        self._reply_queues = reply_queues
        self.in_flight: set[asyncio.Task[Any]] = set()

    async def __call__(self, delivery: Delivery) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.in_flight.add(task)
        try:
            if self.observer is None:
                await self._handle(delivery, None)
            else:
                await self._observed(delivery, self.observer)
        finally:
            self.in_flight.discard(task)

    async def _observed(self, delivery: Delivery, observer: Observer) -> None:
        report = Handling(self.spec, delivery)
        observer.handling_started(report)
        try:
            await self._handle(delivery, report)
        finally:
            observer.handling_finished(report)

    async def _invoke(self, msg: Incoming) -> Any:
        if self.spec.takes_context:
            return await self.spec.func(msg.message, msg.context)
        return await self.spec.func(msg.message)

    async def _handle(self, delivery: Delivery, report: Handling | None) -> None:
        """Decode, run, then ack, retry or dead-letter; ``report`` (when observed) records
        what happened."""
        reply_to = delivery.reply_to
        if (
            self._is_query
            and reply_to
            and not reply_to.startswith(DIRECT_REPLY_TO)
            and reply_to not in self._reply_queues
        ):
            reason = (
                f"forbidden_reply_to: {reply_to[:200]!r} is not a direct reply-to address "
                "(amq.rabbitmq.reply-to) nor on the app's reply_queues"
            )
            # Dead-lettered unanswered: answering would publish to the queue it names.
            await self._dead_letter(delivery, reason, None, _attempt(delivery.headers), report)
            return
        message_id = delivery.message_id
        if not message_id:
            await self._reject_input(
                delivery, "missing_message_id: set the AMQP message_id", report
            )
            return
        try:
            message = self._codec.decode(
                delivery.body,
                wire_name=delivery.type,
                version=delivery.headers.get(envelope.VERSION),
                content_type=delivery.content_type,
                into=self.spec.message_type,
            )
        except DecodeFailure as exc:
            if exc.reason.startswith("body_too_large"):
                await self._reject_unread(delivery, exc.reason, report)
                if self._is_query and delivery.reply_to:
                    await self._reply_error(delivery, exc, settled=True)
                return
            await self._reject_input(delivery, exc.reason, report)
            return
        if type(message) is not self.spec.message_type:
            await self._reject_input(
                delivery,
                f"wrong_queue: {delivery.type!r} arrived on {self.queue!r}, which handles "
                f"{self.spec.message_type.__wire_name__!r}",
                report,
            )
            return
        attempt = _attempt(delivery.headers)
        fields: dict[str, Any] = {
            "message_id": message_id,
            "correlation_id": delivery.correlation_id,
            "headers": delivery.headers,
            "redelivered": delivery.redelivered,
            "attempt": attempt,
            "handler": self.spec.name,
        }
        ctx: MessageContext = (
            QueryContext(**fields) if self._is_query else Context(self._bus, **fields)
        )
        started = 0.0 if report is None else time.perf_counter()
        try:
            async with asyncio.timeout(self._timeout) as deadline:
                result = await self._chain(Incoming(message, ctx, delivery, self.spec))
        except asyncio.CancelledError:
            await delivery.nack(requeue=True)
            raise
        except AccessRefused as exc:
            if report is not None:
                report.duration, report.error = time.perf_counter() - started, exc
            await self._refused(delivery, exc)
            return
        except RejectMessage as exc:
            if report is not None:
                report.duration, report.error = time.perf_counter() - started, exc
            await self._dead_letter(delivery, exc.reason, exc, attempt + 1, report)
            return
        except Exception as exc:
            failure: Exception = exc
            if deadline.expired():
                failure = HandlerTimeout(
                    f"{self.spec.name} ran past its {self._timeout:g}s deadline"
                )
            if report is not None:
                report.duration, report.error = time.perf_counter() - started, failure
            await self._failed(delivery, failure, attempt, report)
            return
        if report is not None:
            report.duration = time.perf_counter() - started
        if self._is_query and delivery.reply_to:
            try:
                await self._bus.reply(
                    delivery.reply_to,
                    delivery.correlation_id,
                    result,
                    cache_ttl=self.spec.cache_ttl,
                )
            except AccessRefused as exc:
                await self._refused(delivery, exc)
                return
            except (PublishFailed, TransportClosed) as exc:
                self._reply_lost(delivery, exc)
        await delivery.ack()
        if report is not None:
            report.outcome = Outcome.ACKED

    async def _refused(
        self, delivery: Delivery, exc: AccessRefused, *, settled: bool = False
    ) -> None:
        """A publish was refused for lack of permission: tell the app, then requeue."""
        await self._on_refused(exc)
        if not settled:
            await delivery.nack(requeue=True)

    async def _reply_error(self, delivery: Delivery, exc: Exception, *, settled: bool) -> bool:
        """Send ``exc`` to a query's caller; False when the reply was refused (see _refused)."""
        try:
            await self._bus.reply_error(delivery.reply_to or "", delivery.correlation_id, exc)
        except AccessRefused as refused:
            await self._refused(delivery, refused, settled=settled)
            return False
        except (PublishFailed, TransportClosed) as lost:
            self._reply_lost(delivery, lost)
        return True

    def _reply_lost(self, delivery: Delivery, exc: Exception) -> None:
        # A reply is sent once: a query changes nothing, so it is acked all the same (a caller
        # whose connection, or node, is gone could not receive it; see transport.amqp._replies).
        _log.warning(
            "query_reply_failed",
            handler=self.spec.name,
            message_id=delivery.message_id,
            error=str(exc)[:_MAX_HEADER_TEXT],
        )

    async def _failed(
        self, delivery: Delivery, exc: Exception, attempt: int, report: Handling | None
    ) -> None:
        if self._is_query:
            _log.warning(
                "query_handler_failed",
                handler=self.spec.name,
                message_id=delivery.message_id,
                exc_info=exc,
            )
            if delivery.reply_to and not await self._reply_error(delivery, exc, settled=False):
                return
            await delivery.ack()
            if report is not None:
                report.outcome = Outcome.ACKED
            return
        step = self._retry.after_failure(attempt)
        _log.warning(
            "handler_failed",
            handler=self.spec.name,
            message_id=delivery.message_id,
            correlation_id=delivery.correlation_id,
            attempt=attempt + 1,
            next=type(step).__name__.lower(),
            exc_info=exc,
        )
        if isinstance(step, DeadLetter):
            await self._dead_letter(
                delivery, f"handler_failed: {type(exc).__name__}", exc, attempt + 1, report
            )
            return
        headers = dict(delivery.headers)
        headers[envelope.ATTEMPT] = attempt + 1
        headers.setdefault(envelope.FIRST_FAILED_AT, envelope.utc_stamp())
        if isinstance(step, Redeliver):
            copy, exchange = delivery.to_outgoing(headers=headers), self._naming.retry
        else:
            assert isinstance(step, Delay)
            copy = delivery.to_outgoing(headers=headers, expiration_ms=step.ms)
            exchange = self._naming.delay(step.ms)
        moved = await self._move(delivery, copy, exchange, "retry_publish_failed", report)
        if moved and report is not None:
            report.outcome = Outcome.RETRIED

    async def _reject_input(self, delivery: Delivery, reason: str, report: Handling | None) -> None:
        await self._dead_letter(delivery, reason, None, _attempt(delivery.headers), report)
        if self._is_query and delivery.reply_to:
            await self._reply_error(delivery, DecodeFailure(reason), settled=True)

    async def _reject_unread(
        self, delivery: Delivery, reason: str, report: Handling | None
    ) -> None:
        """Reject without requeue: the queue's dead-letter exchange moves it to the DLQ as it
        is, without a copy through the worker (and without leveret's reason headers)."""
        _log.warning(
            "message_rejected_to_dlq",
            queue=self.queue,
            message_id=delivery.message_id,
            reason=reason[:_MAX_HEADER_TEXT],
        )
        await delivery.nack(requeue=False)
        if report is not None:
            report.outcome, report.reason = Outcome.DEAD_LETTERED, reason

    async def _dead_letter(
        self,
        delivery: Delivery,
        reason: str,
        exc: BaseException | None,
        attempts: int,
        report: Handling | None,
    ) -> None:
        headers = dict(delivery.headers)
        headers[envelope.DEAD_REASON] = reason[:_MAX_HEADER_TEXT]
        headers[envelope.ORIGINAL_QUEUE] = self.queue
        headers[envelope.ATTEMPT] = attempts
        headers[envelope.LAST_FAILED_AT] = now = envelope.utc_stamp()
        headers.setdefault(envelope.FIRST_FAILED_AT, now)
        if exc is not None:
            headers[envelope.EXCEPTION_TYPE] = type(exc).__qualname__
            # Headers outlive logs and anyone who may read the DLQ sees them: no passwords.
            headers[envelope.EXCEPTION_MESSAGE] = redact_text(str(exc))[:_MAX_HEADER_TEXT]
        _log.warning(
            "message_dead_lettered",
            queue=self.queue,
            message_id=delivery.message_id,
            correlation_id=delivery.correlation_id,
            reason=headers[envelope.DEAD_REASON],
        )
        moved = await self._move(
            delivery,
            delivery.to_outgoing(headers=headers),
            self._naming.dlx,
            "dead_letter_publish_failed",
            report,
        )
        if moved and report is not None:
            report.outcome, report.reason = Outcome.DEAD_LETTERED, headers[envelope.DEAD_REASON]

    async def _move(
        self,
        delivery: Delivery,
        copy: OutgoingMessage,
        exchange: str,
        failure_event: str,
        report: Handling | None,
    ) -> bool:
        """Publish ``copy`` routed back to this queue's name, then ack the original; if the
        publish fails, nack the original back to its queue instead: nothing is lost (a refused
        publish also stops the app, see ``_refused``).

        Returns whether the copy was published (and the original acked)."""
        observer = None if report is None else self.observer
        state = None if observer is None else observer.publish_started(exchange, copy.headers)
        try:
            await self._bus.transport.publish(copy, exchange=exchange, routing_key=self.queue)
        except AccessRefused as refused:
            if observer is not None:
                observer.publish_finished(state, exchange, refused)
            await self._refused(delivery, refused)
            return False
        except NotEncodable as unencodable:
            # The same copy would fail again: a requeue would loop. The broker dead-letters
            # the original instead, unchanged.
            if observer is not None:
                observer.publish_finished(state, exchange, unencodable)
            _log.error(
                "message_copy_not_encodable",
                queue=self.queue,
                message_id=delivery.message_id,
                error=str(unencodable)[:_MAX_HEADER_TEXT],
            )
            await delivery.nack(requeue=False)
            if report is not None:
                report.outcome = Outcome.DEAD_LETTERED
                report.reason = f"not_encodable: {unencodable}"[:_MAX_HEADER_TEXT]
            return False
        except Exception as publish_exc:
            if observer is not None:
                observer.publish_finished(state, exchange, publish_exc)
            _log.error(
                failure_event,
                queue=self.queue,
                message_id=delivery.message_id,
                exc_info=publish_exc,
            )
            await delivery.nack(requeue=True)
            return False
        if observer is not None:
            observer.publish_finished(state, exchange, None)
        await delivery.ack()
        return True


def _attempt(headers: Any) -> int:
    value = headers.get(envelope.ATTEMPT, 0)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return min(value, _MAX_ATTEMPT)
    return 0
