"""The breakers' control plane: a fanout exchange per group of sibling workers.

Each worker binds a private auto-delete queue to ``<prefix>.breakers.<group>``. On it:

* **transitions** (with ``Breakers(shared=True)``): a worker that opens, closes, forces open or
  disables a breaker on its own tells its siblings, which make the same transition (marked
  ``reason=remote`` with the origin worker). Half-open is not shared — each worker probes after
  its wait, which the opening worker's note sets for everyone — and neither are transitions
  caused by a blocked connection (every worker hears its own). Counting stays local: nothing
  crosses the network per call.
* **status requests** from ``leveret breakers``: every worker answers with its metrics, to a
  direct reply-to address or to the requester's status inbox (``<exchange>.status.<12 hex>``)
  and to no other queue, so a request cannot aim the answers of every worker at someone else.

Anyone with write permission on the exchange can publish to it, so a control message is obeyed
only when ``ControlSeal`` says the workers sent it:

* its AMQP ``user_id`` is the receiver's own broker user: RabbitMQ refuses a publish whose
  ``user_id`` is not the connection's user (unless that user has the ``impersonator`` tag), so
  only holders of the workers' credentials can send one;
* with a secret (the app's, or ``LEVERET_SECRET``), its ``leveret-signature`` header is an
  HMAC-SHA256 of the exchange name and the body under a key derived from the secret, and it was
  sent within ``MAX_AGE`` seconds of the receiver's wall clock: this covers brokers where other
  services log in as the workers' user, and a captured note cannot be replayed later.

Anything else is acked and dropped (a control queue has no DLQ) with a ``breaker_note_refused``
warning, at most one per reason and ``REFUSAL_LOG_INTERVAL`` (the line counts the ones left
out). A sibling's ``open`` note cannot keep a breaker open longer than the receiver's own config
could (``BreakerConfig.longest_open_wait``).

Control messages are small JSON documents, not persistent, and expire after ``NOTE_TTL_MS``: a
note that cannot be delivered in time is stale and better dropped.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import os
import time
from typing import TYPE_CHECKING, Any

import msgspec
import structlog

from framework import envelope
from framework.resilience.breaker import CircuitBreaker, Clock
from framework.resilience.config import BreakerConfig
from framework.resilience.events import State, StateTransition, TransitionReason
from framework.transport.base import (
    DIRECT_REPLY_TO,
    BindingSpec,
    Delivery,
    ExchangeSpec,
    ExchangeType,
    OutgoingMessage,
    QueueSpec,
    Topology,
    Transport,
)

if TYPE_CHECKING:
    from framework.resilience.registry import Breakers

__all__ = [
    "MAX_AGE",
    "SIGNATURE",
    "BreakerControl",
    "BreakerStatus",
    "ControlSeal",
    "StatusReply",
    "StatusRequest",
    "TransitionNote",
    "control_exchange",
    "decode_reply",
    "encode",
    "follow",
    "remote_wait",
    "status_inbox",
]

_log = structlog.get_logger("leveret.breakers")

CONTROL_TYPE = "leveret.breakers.control"
NOTE_TTL_MS = 10_000
SIGNATURE = "leveret-signature"  # header: hex HMAC-SHA256 of a signed control message
MAX_AGE = 30.0  # seconds a signed message may be old (or early: clocks of two hosts differ)
MAX_BODY = 64 * 1024  # control messages are a few hundred bytes; larger ones are not read
REFUSAL_LOG_INTERVAL = 10.0  # seconds between two breaker_note_refused lines of one reason
_KEY_PURPOSE = b"leveret.breakers.control"  # the control key is derived, never the secret itself
_SHARED_STATES = frozenset({State.OPEN, State.CLOSED, State.FORCED_OPEN, State.DISABLED})
_LOCAL_REASONS = frozenset(
    {TransitionReason.CONNECTION_BLOCKED, TransitionReason.CONNECTION_UNBLOCKED}
)


class TransitionNote(msgspec.Struct, tag="transition", frozen=True, kw_only=True):
    """A worker's breaker changed state on its own."""

    worker: str
    breaker: str
    state: str
    reason: str
    wait: float | None = None  # seconds it stays open; siblings use the same, within bounds
    sent_at: float | None = None  # the sender's wall clock (epoch seconds)


class StatusRequest(msgspec.Struct, tag="status_request", frozen=True, kw_only=True):
    """``leveret breakers`` asks every worker for its metrics."""

    reply_to: str
    request_id: str
    sent_at: float | None = None  # the sender's wall clock (epoch seconds)


class BreakerStatus(msgspec.Struct, frozen=True, kw_only=True):
    """One breaker's metrics as a worker reports them."""

    name: str
    state: str
    failure_rate: float | None
    slow_call_rate: float | None
    buffered: int
    failed: int
    slow: int
    not_permitted: int
    window: str
    retry_after: float | None
    reason: str | None


class StatusReply(msgspec.Struct, tag="status", frozen=True, kw_only=True):
    """A worker's answer to a ``StatusRequest``."""

    request_id: str
    worker: str
    pid: int
    group: str
    blocked: str | None
    breakers: list[BreakerStatus]


_decoder = msgspec.json.Decoder(TransitionNote | StatusRequest)
_reply_decoder = msgspec.json.Decoder(StatusReply)
_encoder = msgspec.json.Encoder()


def encode(message: TransitionNote | StatusRequest | StatusReply) -> bytes:
    """The JSON body of a control message."""
    return _encoder.encode(message)


def decode_reply(body: bytes) -> StatusReply:
    """A status reply from its body.

    Raises:
        msgspec.DecodeError: not a status reply.
    """
    return _reply_decoder.decode(body)


def control_exchange(prefix: str, group: str) -> str:
    """The fanout exchange of a group of sibling workers."""
    return f"{prefix}.breakers.{group}"


def status_inbox(exchange: str, request_id: str) -> str:
    """The queue ``leveret breakers`` collects answers in: the only kind of queue, besides a
    direct reply-to address, that workers answer to."""
    return f"{exchange}.status.{request_id[:12]}"


def control_message(
    body: bytes,
    *,
    expiration_ms: int | None = NOTE_TTL_MS,
    user_id: str | None = None,
    signature: str | None = None,
) -> OutgoingMessage:
    """A control message ready to publish."""
    return OutgoingMessage(
        body=body,
        message_id=envelope.new_message_id(),
        type=CONTROL_TYPE,
        headers={SIGNATURE: signature} if signature is not None else {},
        persistent=False,
        expiration_ms=expiration_ms,
        user_id=user_id,
    )


class ControlSeal:
    """What proves a control message is the workers' own: their broker user, and a signature
    when there is a secret.

    Args:
        exchange: the control exchange; a signature is bound to it, so a message signed for one
            group of workers is refused by another.
        user: the broker user the workers connect as (``Transport.user``); None when the
            transport cannot tell, and then every message is refused.
        secret: the app's secret, or None to rely on ``user_id`` alone.
        wall_clock: epoch seconds, for ``sent_at`` and its check (a fake one in tests).
    """

    def __init__(
        self,
        exchange: str,
        *,
        user: str | None,
        secret: str | None = None,
        wall_clock: Clock = time.time,
    ) -> None:
        self.exchange = exchange
        self.user = user
        self._wall = wall_clock
        self._key = (
            hmac.new(secret.encode(), _KEY_PURPOSE, hashlib.sha256).digest() if secret else None
        )
        self._context = exchange.encode() + b"\n"

    def now(self) -> float:
        """The ``sent_at`` of a message sent now."""
        return self._wall()

    def seal(self, body: bytes, *, expiration_ms: int | None = NOTE_TTL_MS) -> OutgoingMessage:
        """A control message carrying ``body``, the workers' ``user_id`` and its signature."""
        return control_message(
            body,
            expiration_ms=expiration_ms,
            user_id=self.user,
            signature=self._sign(body) if self._key is not None else None,
        )

    def refusal(self, delivery: Delivery) -> str | None:
        """Why ``delivery`` cannot be the workers' own (a reason word), or None when it is.

        Cheap checks first: the broker-verified user before any work proportional to the body.
        """
        if self.user is None or delivery.user_id != self.user:
            return "foreign_user"
        body = delivery.body
        if len(body) > MAX_BODY:
            return "too_large"
        if self._key is not None:
            signature = delivery.headers.get(SIGNATURE)
            if not (
                isinstance(signature, str)
                and signature.isascii()  # compare_digest refuses other str
                and hmac.compare_digest(signature, self._sign(body))
            ):
                return "bad_signature"
        return None

    def stale(self, sent_at: float | None) -> bool:
        """Whether a signed message sent at ``sent_at`` is too old (or too early) to obey."""
        if self._key is None:
            return False  # without a secret a replay needs the workers' credentials anyway
        return sent_at is None or not abs(self._wall() - sent_at) <= MAX_AGE

    def replyable(self, reply_to: str) -> bool:
        """Whether workers may answer a status request to ``reply_to``."""
        if reply_to.startswith(DIRECT_REPLY_TO):
            return True
        prefix = self.exchange + ".status."
        token = reply_to[len(prefix) :]
        return (
            reply_to.startswith(prefix)
            and len(token) == 12
            and all(c in "0123456789abcdef" for c in token)
        )

    def _sign(self, body: bytes) -> str:
        assert self._key is not None
        return hmac.new(self._key, self._context + body, hashlib.sha256).hexdigest()


def remote_wait(config: BreakerConfig, wait: float | None) -> float | None:
    """The wait a sibling's ``open`` note may set on a breaker of ``config``.

    Clamped to ``[0, config.longest_open_wait]``; None (the breaker's own wait) when the note
    has none, it is not a number, or the config's bound is unknown (a ``wait_in_open``
    function other than ``Backoff``).
    """
    bound = config.longest_open_wait
    if wait is None or bound is None or math.isnan(wait):
        return None
    return min(max(wait, 0.0), bound)


def follow(breaker: CircuitBreaker, note: TransitionNote) -> None:
    """Apply to ``breaker`` the transition a sibling's note reports, its wait clamped."""
    try:
        target = State(note.state)
    except ValueError:
        return  # a newer version's state: not ours to follow
    state = breaker.state
    origin = note.worker
    reason = TransitionReason.REMOTE
    if target is State.OPEN:
        if state in (State.CLOSED, State.HALF_OPEN):
            wait = remote_wait(breaker.config, note.wait)
            breaker.transition_to_open(reason, wait=wait, origin=origin)
    elif target is not state:
        if target is State.CLOSED:
            breaker.transition_to_closed(reason, origin=origin)
        elif target is State.FORCED_OPEN:
            breaker.transition_to_forced_open(reason, origin=origin)
        elif target is State.DISABLED:
            breaker.transition_to_disabled(reason, origin=origin)


class _RefusalLog:
    """One ``breaker_note_refused`` line per reason and interval; the rest are counted."""

    def __init__(self, clock: Clock, interval: float = REFUSAL_LOG_INTERVAL) -> None:
        self._clock = clock
        self._interval = interval
        self._quiet_until: dict[str, float] = {}  # reasons are a closed set of words
        self._left_out: dict[str, int] = {}
        self.count = 0

    def refused(self, reason: str, delivery: Delivery) -> None:
        self.count += 1
        now = self._clock()
        if now < self._quiet_until.get(reason, -math.inf):
            self._left_out[reason] = self._left_out.get(reason, 0) + 1
            return
        self._quiet_until[reason] = now + self._interval
        _log.warning(
            "breaker_note_refused",
            reason=reason,
            user_id=delivery.user_id,
            message_id=delivery.message_id,
            left_out=self._left_out.pop(reason, 0),
        )


class BreakerControl:
    """One worker's end of the control exchange.

    Args:
        breakers: the worker's breakers.
        transport: the app's connected transport.
        prefix: the app's name prefix.
        group: the sibling group.
        share: publish and apply transitions (else only answer status requests).
        secret: sign control messages and require signatures (see the module docstring).
        wall_clock: epoch seconds for ``sent_at`` (a fake one in tests).
    """

    def __init__(
        self,
        breakers: Breakers,
        transport: Transport,
        prefix: str,
        group: str,
        *,
        share: bool,
        secret: str | None = None,
        wall_clock: Clock = time.time,
    ) -> None:
        self._breakers = breakers
        self._transport = transport
        self._share = share
        self.exchange = control_exchange(prefix, group)
        self.queue = f"{self.exchange}.{breakers.worker_id.rsplit(':', 1)[-1]}"
        self.seal = ControlSeal(
            self.exchange, user=transport.user, secret=secret, wall_clock=wall_clock
        )
        self.refusals = _RefusalLog(breakers.clock)
        self._consumer: Any = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Declare the exchange and this worker's queue, and consume it."""
        if self.seal.user is None and self._share:
            _log.warning(
                "breaker_control_unauthenticated",
                exchange=self.exchange,
                detail="the transport cannot tell its broker user: every control message "
                "will be refused",
            )
        await self._transport.declare(
            Topology(
                exchanges=(ExchangeSpec(self.exchange, ExchangeType.FANOUT),),
                queues=(QueueSpec(self.queue, durable=False, auto_delete=True),),
                bindings=(BindingSpec(self.queue, self.exchange, ""),),
            )
        )
        self._consumer = await self._transport.consume(self.queue, self._on_message, prefetch=10)

    async def stop(self) -> None:
        """Stop consuming; wait briefly for notes still being published."""
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            try:
                await consumer.cancel()
            except Exception as exc:
                _log.warning("breaker_control_cancel_failed", error=repr(exc))
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=2.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    # -- outgoing ----------------------------------------------------------------------------

    def transitioned(self, event: StateTransition) -> None:
        """A local transition happened: tell the siblings (from a breaker listener, so sync)."""
        if not self._share or event.to_state not in _SHARED_STATES:
            return
        if event.reason in _LOCAL_REASONS:
            return
        wait = event.wait if event.wait is not None and math.isfinite(event.wait) else None
        note = TransitionNote(
            worker=self._breakers.worker_id,
            breaker=event.breaker,
            state=event.to_state.value,
            reason=event.reason.value,
            wait=wait,
            sent_at=self.seal.now(),
        )
        self._spawn(self._publish(self.exchange, "", encode(note), NOTE_TTL_MS))

    async def _publish(self, exchange: str, key: str, body: bytes, ttl: int | None) -> None:
        try:
            await self._transport.publish(
                self.seal.seal(body, expiration_ms=ttl),
                exchange=exchange,
                routing_key=key,
                mandatory=False,
            )
        except Exception as exc:
            # Siblings then open on their own counts, a little later: nothing is lost.
            _log.warning("breaker_note_not_published", exchange=exchange, error=repr(exc))

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- incoming ----------------------------------------------------------------------------

    async def _on_message(self, delivery: Delivery) -> None:
        # Judged before the first await: deliveries are judged in the order they arrive.
        message = self._admit(delivery)
        await delivery.ack()
        if message is None:
            return
        if isinstance(message, StatusRequest):
            await self._answer(message)
        elif self._share and message.worker != self._breakers.worker_id:
            self._apply(message)

    def _admit(self, delivery: Delivery) -> TransitionNote | StatusRequest | None:
        """The message when the workers sent it and it may be obeyed; else None, logged."""
        seal = self.seal
        reason = seal.refusal(delivery)
        message: TransitionNote | StatusRequest | None = None
        if reason is None:
            try:
                message = _decoder.decode(delivery.body)
            # msgspec refuses JSON nested past the recursion limit with RecursionError.
            except (msgspec.DecodeError, RecursionError):
                reason = "undecodable"
        if message is not None:
            if seal.stale(message.sent_at):
                reason = "stale"
            elif isinstance(message, StatusRequest) and not seal.replyable(message.reply_to):
                reason = "reply_to_not_allowed"
        if reason is not None:
            self.refusals.refused(reason, delivery)
            return None
        return message

    def _apply(self, note: TransitionNote) -> None:
        try:
            breaker = self._breakers[note.breaker]
        except KeyError:
            return  # a sibling with other breakers (or a newer version): not ours to follow
        follow(breaker, note)

    async def _answer(self, request: StatusRequest) -> None:
        statuses = []
        for breaker in self._breakers:
            m = breaker.metrics()
            reason = breaker.open_reason
            statuses.append(
                BreakerStatus(
                    name=m.name,
                    state=m.state.value,
                    failure_rate=m.failure_rate,
                    slow_call_rate=m.slow_call_rate,
                    buffered=m.buffered,
                    failed=m.failed,
                    slow=m.slow,
                    not_permitted=m.not_permitted,
                    window=m.window,
                    retry_after=m.retry_after,
                    reason=reason.value if reason is not None else None,
                )
            )
        reply = StatusReply(
            request_id=request.request_id,
            worker=self._breakers.worker_id,
            pid=os.getpid(),
            group=self._breakers.group,
            blocked=self._breakers.blocked,
            breakers=statuses,
        )
        await self._publish("", request.reply_to, encode(reply), None)
