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
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from framework import envelope
from framework.errors import ConfigurationError, PublishFailed
from framework.transport.base import Delivery, OutgoingMessage, Transport

__all__ = [
    "MAX_SCAN",
    "DeadLetterInfo",
    "ReplayResult",
    "Selection",
    "count_reasons",
    "describe",
    "original_queue",
    "peek",
    "purge",
    "replay",
    "replay_copy",
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
    """What a replay did: ids republished (confirmed, then acked), and why it stopped early."""

    replayed: tuple[str, ...]
    scanned: int
    error: str | None = None


def reason_of(headers: Any) -> str:
    """The dead-letter reason: leveret's header, else the broker's own (``x-death``)."""
    reason = headers.get(envelope.DEAD_REASON)
    if isinstance(reason, str) and reason:
        return reason
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        return f"broker: {deaths[0].get('reason', 'unknown')}"
    return "unknown"


def original_queue(dlq: str, headers: Any) -> str:
    """The queue a dead letter came from: its header, else the DLQ's name without ``.dlq``.

    Raises:
        ConfigurationError: neither tells.
    """
    queue = headers.get(envelope.ORIGINAL_QUEUE)
    if isinstance(queue, str) and queue:
        return queue
    if dlq.endswith(DLQ_SUFFIX) and len(dlq) > len(DLQ_SUFFIX):
        return dlq[: -len(DLQ_SUFFIX)]
    raise ConfigurationError(
        f"cannot tell where the messages of {dlq!r} came from: it is not named <queue>.dlq and "
        f"the message has no {envelope.ORIGINAL_QUEUE} header"
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
    )


# The visitor settles what it takes (ack) and returns True for a message to put back.
_Visit = Callable[[Delivery], Awaitable[bool]]


async def _scan(
    transport: Transport, dlq: str, visit: _Visit, *, limit: int | None, idle: float
) -> int:
    """Visit the first ``limit`` (default: all) messages of ``dlq``; return how many were seen.

    ``idle`` bounds the wait for each next delivery: a message counted at the start may have
    been taken by someone else meanwhile.
    """
    ready = (await transport.queue_info(dlq)).messages
    total = min(ready, MAX_SCAN) if limit is None else min(ready, limit, MAX_SCAN)
    if total <= 0:
        return 0
    arrived: asyncio.Queue[Delivery] = asyncio.Queue()
    finished = False

    async def on_delivery(delivery: Delivery) -> None:
        if finished:  # a late delivery after the cancel: straight back
            await delivery.nack(requeue=True)
        else:
            arrived.put_nowait(delivery)  # settled by the scan, in delivery order

    held: list[Delivery] = []
    seen = 0
    consumer = await transport.consume(dlq, on_delivery, prefetch=total)
    try:
        while seen < total:
            try:
                async with asyncio.timeout(idle):
                    delivery = await arrived.get()
            except TimeoutError:
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
    return seen


async def peek(
    transport: Transport, dlq: str, *, limit: int | None = None, idle: float = 5.0
) -> list[DeadLetterInfo]:
    """The first ``limit`` messages of ``dlq`` (all by default), left in place and in order."""
    found: list[DeadLetterInfo] = []

    async def keep(delivery: Delivery) -> bool:
        found.append(describe(delivery, queue=dlq, position=len(found) + 1))
        return True

    await _scan(transport, dlq, keep, limit=limit, idle=idle)
    return found


async def count_reasons(transport: Transport, dlq: str, *, idle: float = 5.0) -> Counter[str]:
    """How many messages of ``dlq`` carry each dead-letter reason (messages stay in place)."""
    reasons: Counter[str] = Counter()

    async def keep(delivery: Delivery) -> bool:
        reasons[reason_of(delivery.headers)] += 1
        return True

    await _scan(transport, dlq, keep, limit=None, idle=idle)
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
    """Republish the selected messages of ``dlq`` to the queues they came from, in DLQ order.

    Each copy goes through the default exchange straight to its original queue (an event is not
    fanned out to every subscriber again), ``mandatory`` and confirmed; only then is the DLQ's
    copy acked. The first publish that fails stops the replay; that message and every other not
    yet replayed stay in the DLQ, in order.
    """
    replayed: list[str] = []
    error: str | None = None

    async def republish(delivery: Delivery) -> bool:
        nonlocal error
        if error is not None or not selection.matches(delivery):
            return True
        try:
            target = original_queue(dlq, delivery.headers)
            await transport.publish(
                replay_copy(delivery), exchange="", routing_key=target, mandatory=True
            )
        except (PublishFailed, ConfigurationError) as exc:
            error = f"{delivery.message_id}: {exc}"
            return True
        await delivery.ack()
        replayed.append(delivery.message_id or "")
        if on_replayed is not None:
            on_replayed(delivery.message_id or "", target)
        return False

    scanned = await _scan(transport, dlq, republish, limit=None, idle=idle)
    return ReplayResult(tuple(replayed), scanned, error)


async def purge(
    transport: Transport, dlq: str, selection: Selection, *, idle: float = 5.0
) -> Sequence[str]:
    """Delete the selected messages of ``dlq`` for good (those present when it starts)."""
    deleted: list[str] = []

    async def drop(delivery: Delivery) -> bool:
        if not selection.matches(delivery):
            return True
        await delivery.ack()
        deleted.append(delivery.message_id or "")
        return False

    await _scan(transport, dlq, drop, limit=None, idle=idle)
    return deleted
