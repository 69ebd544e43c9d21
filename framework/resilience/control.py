"""The breakers' control plane: a fanout exchange per group of sibling workers.

Each worker binds a private auto-delete queue to ``<prefix>.breakers.<group>``. On it:

* **transitions** (with ``Breakers(shared=True)``): a worker that opens, closes, forces open or
  disables a breaker on its own tells its siblings, which make the same transition (marked
  ``reason=remote`` with the origin worker). Half-open is not shared — each worker probes after
  its wait, which the opening worker's note sets for everyone — and neither are transitions
  caused by a blocked connection (every worker hears its own). Counting stays local: nothing
  crosses the network per call.
* **status requests** from ``leveret breakers``: every worker answers with its metrics to the
  queue named in the request.

Control messages are small JSON documents, not persistent, and expire after ``NOTE_TTL_MS``: a
note that cannot be delivered in time is stale and better dropped.
"""

from __future__ import annotations

import asyncio
import math
import os
from typing import TYPE_CHECKING, Any

import msgspec
import structlog

from framework import envelope
from framework.resilience.events import State, StateTransition, TransitionReason
from framework.transport.base import (
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
    "BreakerControl",
    "BreakerStatus",
    "StatusReply",
    "StatusRequest",
    "TransitionNote",
    "control_exchange",
    "decode_reply",
    "encode",
]

_log = structlog.get_logger("leveret.breakers")

CONTROL_TYPE = "leveret.breakers.control"
NOTE_TTL_MS = 10_000
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
    wait: float | None = None  # seconds it stays open; siblings use the same


class StatusRequest(msgspec.Struct, tag="status_request", frozen=True, kw_only=True):
    """``leveret breakers`` asks every worker for its metrics."""

    reply_to: str
    request_id: str


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


def control_message(body: bytes, *, expiration_ms: int | None = NOTE_TTL_MS) -> OutgoingMessage:
    """A control message ready to publish."""
    return OutgoingMessage(
        body=body,
        message_id=envelope.new_message_id(),
        type=CONTROL_TYPE,
        persistent=False,
        expiration_ms=expiration_ms,
    )


class BreakerControl:
    """One worker's end of the control exchange.

    Args:
        breakers: the worker's breakers.
        transport: the app's connected transport.
        prefix: the app's name prefix.
        group: the sibling group.
        share: publish and apply transitions (else only answer status requests).
    """

    def __init__(
        self, breakers: Breakers, transport: Transport, prefix: str, group: str, *, share: bool
    ) -> None:
        self._breakers = breakers
        self._transport = transport
        self._share = share
        self.exchange = control_exchange(prefix, group)
        self.queue = f"{self.exchange}.{breakers.worker_id.rsplit(':', 1)[-1]}"
        self._consumer: Any = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Declare the exchange and this worker's queue, and consume it."""
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
        )
        self._spawn(self._publish(self.exchange, "", encode(note), NOTE_TTL_MS))

    async def _publish(self, exchange: str, key: str, body: bytes, ttl: int | None) -> None:
        try:
            await self._transport.publish(
                control_message(body, expiration_ms=ttl),
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
        try:
            message = _decoder.decode(delivery.body)
        # msgspec refuses JSON nested past the recursion limit with RecursionError.
        except (msgspec.DecodeError, RecursionError) as exc:
            _log.warning("breaker_control_message_invalid", error=str(exc))
            await delivery.ack()
            return
        if isinstance(message, StatusRequest):
            await self._answer(message)
        elif self._share and message.worker != self._breakers.worker_id:
            self._apply(message)
        await delivery.ack()

    def _apply(self, note: TransitionNote) -> None:
        try:
            breaker = self._breakers[note.breaker]
            target = State(note.state)
        except (KeyError, ValueError):
            return  # a sibling with other breakers (or a newer version): not ours to follow
        state = breaker.state
        origin = note.worker
        reason = TransitionReason.REMOTE
        if target is State.OPEN:
            if state in (State.CLOSED, State.HALF_OPEN):
                breaker.transition_to_open(reason, wait=note.wait, origin=origin)
        elif target is not state:
            if target is State.CLOSED:
                breaker.transition_to_closed(reason, origin=origin)
            elif target is State.FORCED_OPEN:
                breaker.transition_to_forced_open(reason, origin=origin)
            elif target is State.DISABLED:
                breaker.transition_to_disabled(reason, origin=origin)

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
