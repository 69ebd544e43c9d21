"""Reading, replaying and purging a dead-letter queue without losing or reordering messages.

Every operation is one *scan*: count the ready messages (passive declare), consume that many
with manual acks, and decide per delivery. A message to keep is held unacked until the scan
ends and then nacked back with requeue, newest first, so RabbitMQ (and the memory broker) puts
each back where it was: the DLQ's order is unchanged. A message leaves the DLQ only by an ack,
and ``replay`` acks only after the broker confirmed the republished copy. Whatever the scan holds
when it is interrupted (an error, Ctrl-C, a killed process, a lost connection) goes back to the
DLQ with the channel: nothing is lost. A replay interrupted between a confirm and its ack leaves
the message in both queues, with the same message id, which the handler's inbox (transactional
handlers and sagas) drops as a duplicate.

Messages published to the DLQ after the count are not part of the scan. One scan sees at most
``MAX_SCAN`` messages (AMQP's largest prefetch): ``show`` and ``list`` say so when there are more.

A scan never reads a message twice and never passes off a partial read as a whole one. When the
channel is lost mid-scan (a dropped connection: RabbitMQ requeues everything the scan held, and
the robust connection consumes again, so the same messages come once more) the scan stops at the
first delivery of the new channel; when the counted messages do not all arrive, it stops after
``idle``. Either way it raises ``ScanIncomplete`` with what it did read (``replay`` reports it in
its result instead). A delivery whose headers the client could not decode (the transport's
``UNDECODABLE_HEADERS`` marker) is read like any other and described as undecodable, with the
transport's reason; ``replay`` leaves it in the DLQ and says so, since its headers are lost.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from framework import envelope
from framework.errors import ConfigurationError, LeveretError, NotEncodable, PublishFailed
from framework.transport.amqp import _pamqp
from framework.transport.base import Delivery, OutgoingMessage, Transport

__all__ = [
    "MAX_SCAN",
    "DeadLetterInfo",
    "ReplayResult",
    "ScanIncomplete",
    "Selection",
    "count_reasons",
    "describe",
    "original_queue",
    "peek",
    "purge",
    "replay",
    "replay_copy",
    "undecodable_reason",
]

MAX_SCAN = 65535
DLQ_SUFFIX = ".dlq"
# Headers that describe the last death; a replayed message starts without them.
_DEATH_HEADERS = (
    envelope.DEAD_REASON,
    envelope.EXCEPTION_TYPE,
    envelope.EXCEPTION_MESSAGE,
    envelope.LAST_FAILED_AT,
    envelope.ORIGINAL_QUEUE,
    "x-death",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-last-death-exchange",
    "x-last-death-queue",
    "x-last-death-reason",
    "x-delivery-count",
)


class ScanIncomplete(LeveretError):
    """A scan of a DLQ could not read every message it counted; nothing was read twice.

    Args:
        dlq: the queue scanned.
        read: messages read before it stopped.
        expected: messages counted at the start (at most ``MAX_SCAN``, or the limit).
        reason: why it stopped.
        partial: what the operation had gathered from the messages it read.
    """

    def __init__(
        self, dlq: str, *, read: int, expected: int, reason: str, partial: Any = None
    ) -> None:
        super().__init__(
            f"read {read} of the {expected} message(s) of {dlq}: {reason}; the messages not "
            "read are still in the DLQ, run the command again"
        )
        self.dlq = dlq
        self.read = read
        self.expected = expected
        self.reason = reason
        self.partial = partial


class DeadLetterInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One dead-lettered message as an operator reads it (``leveret dlq show``)."""

    queue: str
    position: int
    message_id: str | None
    correlation_id: str | None
    causation_id: str | None
    saga_id: str | None
    type: str | None
    version: int | None
    reason: str
    exception_type: str | None
    exception_message: str | None
    attempts: int | None
    first_failed_at: str | None
    last_failed_at: str | None
    original_queue: str | None
    replayed: int
    content_type: str | None
    body: str
    body_is_json: bool
    undecodable: str | None = None


@dataclass(frozen=True, slots=True)
class Selection:
    """Which messages an operation takes: by message id, by reason (prefix), or all."""

    ids: frozenset[str] = frozenset()
    reason: str | None = None
    everything: bool = False

    def __post_init__(self) -> None:
        chosen = sum((bool(self.ids), self.reason is not None, self.everything))
        if chosen != 1:
            raise ConfigurationError("choose exactly one of --id, --reason and --all")

    def matches(self, delivery: Delivery) -> bool:
        if self.everything:
            return True
        if self.ids:
            return delivery.message_id in self.ids
        assert self.reason is not None
        return reason_of(delivery.headers).startswith(self.reason)


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """What a replay did.

    Args:
        replayed: ids republished (confirmed, then acked).
        scanned: messages of the DLQ read.
        error: why it stopped early (a publish failed).
        skipped: ``(message, why)`` of selected messages left in the DLQ because they cannot be
            replayed (headers that were not decoded, or cannot be encoded again).
        notes: ``(message, what)`` worth telling the operator (a sender-set
            ``leveret-original-queue`` naming another queue, ignored).
        incomplete: why the scan could not read every message (see ``ScanIncomplete``).
    """

    replayed: tuple[str, ...]
    scanned: int
    error: str | None = None
    skipped: tuple[tuple[str, str], ...] = ()
    notes: tuple[tuple[str, str], ...] = ()
    incomplete: str | None = None


def undecodable_reason(headers: Any) -> str | None:
    """Why the client could not decode a delivery's headers (or properties), or None."""
    if _pamqp.UNDECODABLE_HEADERS not in headers:
        return None
    reason = headers.get(_pamqp.UNDECODABLE_REASON)
    if isinstance(reason, str) and reason:
        return _shown(reason)
    return "the header table cannot be decoded"


def reason_of(headers: Any) -> str:
    """The dead-letter reason: leveret's header, else the broker's own (``x-death``); for a
    delivery whose headers could not be decoded, ``undecodable: <why>``."""
    undecodable = undecodable_reason(headers)
    if undecodable is not None:
        return f"undecodable: {undecodable}"
    reason = headers.get(envelope.DEAD_REASON)
    if isinstance(reason, str) and reason:
        return reason
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        return f"broker: {deaths[0].get('reason', 'unknown')}"
    return "unknown"


def original_queue(dlq: str) -> str:
    """The queue ``dlq`` belongs to: its name without ``.dlq``, the only queue a replay targets.

    A message's ``leveret-original-queue`` header is not trusted for this: anyone who can
    publish to the DLQ (or to the queue's dead-letter exchange) sets it.

    Raises:
        ConfigurationError: ``dlq`` is not named ``<queue>.dlq``.
    """
    if dlq.endswith(DLQ_SUFFIX) and len(dlq) > len(DLQ_SUFFIX):
        return dlq[: -len(DLQ_SUFFIX)]
    raise ConfigurationError(
        f"{dlq!r} is not named <queue>.dlq: a replay goes only to the queue a DLQ belongs to, "
        "and this name does not tell which"
    )


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return _shown(value) if isinstance(value, str) else None


def _shown(value: str | None) -> str | None:
    """A property as text that prints and encodes: bytes that were not UTF-8 (kept by the
    transport as lone surrogates) are shown as ``\\xff`` escapes."""
    if value is None or value.isascii():
        return value
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def describe(delivery: Delivery, *, queue: str, position: int) -> DeadLetterInfo:
    """An operator's view of a dead-lettered delivery; the body pretty-printed when it is JSON."""
    headers = delivery.headers
    try:
        body, is_json = msgspec.json.format(delivery.body, indent=2).decode(), True
        msgspec.json.decode(delivery.body)  # format() passes some invalid documents through
    except (msgspec.DecodeError, UnicodeDecodeError):
        body, is_json = repr(delivery.body[:2000]), False
    return DeadLetterInfo(
        queue=queue,
        position=position,
        message_id=_shown(delivery.message_id),
        correlation_id=_shown(delivery.correlation_id),
        causation_id=_str(headers.get(envelope.CAUSATION_ID)),
        saga_id=_str(headers.get(envelope.SAGA_ID)),
        type=_shown(delivery.type),
        version=_int(headers.get(envelope.VERSION)),
        reason=reason_of(headers),
        exception_type=_str(headers.get(envelope.EXCEPTION_TYPE)),
        exception_message=_str(headers.get(envelope.EXCEPTION_MESSAGE)),
        attempts=_int(headers.get(envelope.ATTEMPT)),
        first_failed_at=_str(headers.get(envelope.FIRST_FAILED_AT)),
        last_failed_at=_str(headers.get(envelope.LAST_FAILED_AT)),
        original_queue=_str(headers.get(envelope.ORIGINAL_QUEUE)),
        replayed=_int(headers.get(envelope.REPLAYED)) or 0,
        content_type=_shown(delivery.content_type),
        body=body,
        body_is_json=is_json,
        undecodable=undecodable_reason(headers),
    )


# The visitor settles what it takes (ack) and returns True for a message to put back.
_Visit = Callable[[Delivery], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class _Scanned:
    seen: int
    expected: int
    incomplete: str | None = None


async def _scan(
    transport: Transport, dlq: str, visit: _Visit, *, limit: int | None, idle: float
) -> _Scanned:
    """Visit the first ``limit`` (default: all) messages of ``dlq``, each once.

    ``idle`` bounds the wait for each next delivery: a message counted at the start may have
    been taken by someone else meanwhile (then the DLQ has no ready message left, and the scan
    is complete). The result says why the scan stopped short, if it did.
    """
    ready = (await transport.queue_info(dlq)).messages
    total = min(ready, MAX_SCAN) if limit is None else min(ready, limit, MAX_SCAN)
    if total <= 0:
        return _Scanned(0, 0)
    arrived: asyncio.Queue[Delivery] = asyncio.Queue()
    finished = False

    async def on_delivery(delivery: Delivery) -> None:
        if finished:  # a late delivery after the cancel: straight back
            await delivery.nack(requeue=True)
        else:
            arrived.put_nowait(delivery)  # settled by the scan, in delivery order

    held: list[Delivery] = []
    seen = 0
    incomplete: str | None = None
    first_session: object | None = None
    consumer = await transport.consume(dlq, on_delivery, prefetch=total)
    try:
        while seen < total:
            try:
                async with asyncio.timeout(idle):
                    delivery = await arrived.get()
            except TimeoutError:
                incomplete = await _short_read(transport, dlq, seen, idle)
                break
            # A delivery tag means something on its own channel only: after the channel is lost
            # and reopened, the broker delivers every unacked message again, with new tags.
            session = delivery.session
            if seen == 0:
                first_session = session
            elif session is not first_session:
                # The channel was lost: what the scan held went back to the DLQ, and comes again.
                held.append(delivery)
                incomplete = "the connection to the broker was lost during the scan"
                break
            seen += 1
            held.append(delivery)
            if not await visit(delivery):
                held.pop()
    finally:
        await consumer.cancel()
        finished = True
        while not arrived.empty():
            held.append(arrived.get_nowait())
        # Newest first: each goes back to the head, so the oldest ends up first again.
        for delivery in reversed(held):
            await delivery.nack(requeue=True)
    return _Scanned(seen, total, incomplete)


async def _short_read(transport: Transport, dlq: str, seen: int, idle: float) -> str | None:
    """Why a scan that waited ``idle`` in vain is incomplete; None when nothing was left."""
    try:
        left = (await transport.queue_info(dlq)).messages
    except LeveretError as exc:
        return f"no message for {idle:g}s, and the DLQ could not be checked again ({exc})"
    if left <= 0:
        return None  # someone else took the rest
    return f"no message for {idle:g}s while {left} more are ready in the DLQ"


def _raise_incomplete(dlq: str, scanned: _Scanned, partial: Any) -> None:
    if scanned.incomplete is not None:
        raise ScanIncomplete(
            dlq,
            read=scanned.seen,
            expected=scanned.expected,
            reason=scanned.incomplete,
            partial=partial,
        )


async def peek(
    transport: Transport, dlq: str, *, limit: int | None = None, idle: float = 5.0
) -> list[DeadLetterInfo]:
    """The first ``limit`` messages of ``dlq`` (all by default), left in place and in order.

    Raises:
        ScanIncomplete: not all could be read; ``partial`` holds those that were.
    """
    found: list[DeadLetterInfo] = []

    async def keep(delivery: Delivery) -> bool:
        found.append(describe(delivery, queue=dlq, position=len(found) + 1))
        return True

    _raise_incomplete(dlq, await _scan(transport, dlq, keep, limit=limit, idle=idle), found)
    return found


async def count_reasons(transport: Transport, dlq: str, *, idle: float = 5.0) -> Counter[str]:
    """How many messages of ``dlq`` carry each dead-letter reason (messages stay in place).

    Raises:
        ScanIncomplete: not all could be read; ``partial`` holds the counts of those that were.
    """
    reasons: Counter[str] = Counter()

    async def keep(delivery: Delivery) -> bool:
        reasons[reason_of(delivery.headers)] += 1
        return True

    _raise_incomplete(dlq, await _scan(transport, dlq, keep, limit=None, idle=idle), reasons)
    return reasons


def replay_copy(delivery: Delivery) -> OutgoingMessage:
    """The message to republish: same id, properties and body; attempts counted afresh, the
    last death's headers dropped, ``leveret-replayed`` incremented and stamped."""
    headers = {k: v for k, v in delivery.headers.items() if k not in _DEATH_HEADERS}
    headers[envelope.ATTEMPT] = 0
    headers[envelope.REPLAYED] = (_int(delivery.headers.get(envelope.REPLAYED)) or 0) + 1
    headers[envelope.REPLAYED_AT] = envelope.utc_stamp()
    return delivery.to_outgoing(headers=headers)


async def replay(
    transport: Transport,
    dlq: str,
    selection: Selection,
    *,
    idle: float = 5.0,
    on_replayed: Callable[[str, str], None] | None = None,
) -> ReplayResult:
    """Republish the selected messages of ``dlq`` to the queue it belongs to, in DLQ order.

    Each copy goes through the default exchange straight to ``<queue>`` for ``<queue>.dlq`` (an
    event is not fanned out to every subscriber again; a ``leveret-original-queue`` header naming
    another queue is ignored and noted), ``mandatory`` and confirmed; only then is the DLQ's copy
    acked. A message that cannot be replayed (headers the client could not decode, a value that
    cannot be encoded again) is skipped and stays in the DLQ. The first publish that fails
    otherwise stops the replay; that message and every other not yet replayed stay in the DLQ,
    in order.

    Raises:
        ConfigurationError: ``dlq`` is not named ``<queue>.dlq``.
    """
    target = original_queue(dlq)
    replayed: list[str] = []
    skipped: list[tuple[str, str]] = []
    notes: list[tuple[str, str]] = []
    error: str | None = None
    position = 0

    async def republish(delivery: Delivery) -> bool:
        nonlocal error, position
        position += 1
        if error is not None or not selection.matches(delivery):
            return True
        label = _label(delivery, position)
        undecodable = undecodable_reason(delivery.headers)
        if undecodable is not None:
            skipped.append((label, f"its headers could not be decoded ({undecodable})"))
            return True
        claimed = _str(delivery.headers.get(envelope.ORIGINAL_QUEUE))
        if claimed is not None and claimed != target:
            notes.append(
                (
                    label,
                    f"its {envelope.ORIGINAL_QUEUE} header names {claimed!r}, ignored: a replay "
                    f"goes only to {target!r}, the queue of {dlq}",
                )
            )
        try:
            await transport.publish(
                replay_copy(delivery), exchange="", routing_key=target, mandatory=True
            )
        except NotEncodable as exc:  # a PublishFailed too: a replay skips it and goes on
            skipped.append((label, f"it cannot be encoded again: {exc}"))
            return True
        except PublishFailed as exc:
            error = f"{label}: {exc}"
            return True
        await delivery.ack()
        replayed.append(delivery.message_id or "")
        if on_replayed is not None:
            on_replayed(label, target)
        return False

    scanned = await _scan(transport, dlq, republish, limit=None, idle=idle)
    return ReplayResult(
        tuple(replayed),
        scanned.seen,
        error,
        skipped=tuple(skipped),
        notes=tuple(notes),
        incomplete=None
        if scanned.incomplete is None
        else f"read {scanned.seen} of {scanned.expected} message(s): {scanned.incomplete}",
    )


def _label(delivery: Delivery, position: int) -> str:
    """How to name a message to the operator: its id, else its position in the DLQ."""
    message_id = _shown(delivery.message_id)
    return message_id if message_id else f"#{position} (no message id)"


async def purge(
    transport: Transport, dlq: str, selection: Selection, *, idle: float = 5.0
) -> Sequence[str]:
    """Delete the selected messages of ``dlq`` for good (those present when it starts).

    Raises:
        ScanIncomplete: not all could be read; ``partial`` holds the ids deleted.
    """
    deleted: list[str] = []

    async def drop(delivery: Delivery) -> bool:
        if not selection.matches(delivery):
            return True
        await delivery.ack()
        deleted.append(delivery.message_id or "")
        return False

    _raise_incomplete(dlq, await _scan(transport, dlq, drop, limit=None, idle=idle), deleted)
    return deleted
