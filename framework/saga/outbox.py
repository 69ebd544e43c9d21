"""The outbox: messages written in a handler's transaction, published only after it commits.

``OutboxWriter`` turns outgoing contracts into rows with deterministic message ids;
``OutboxRelay`` publishes rows with confirms and marks them sent — right after each commit, and
from a sweeper for rows a crashed process left behind. A row published twice (a crash between
the publish and ``mark_sent``) carries the same message id both times, so the consumer's inbox
drops the second copy.

A row the broker refuses for lack of permission (``AccessRefused``) stops the relay: retrying
cannot help until the deployment changes, and every retry would cost a channel. The row, and
every row after it, stays pending; the relay logs ``outbox_relay_stopped`` once and calls
``on_refused`` (the app fails with that error). A relay started afresh publishes them.

A row AMQP cannot carry (``NotEncodable``: the writer refuses such messages, so only a row
written by an older leveret or by hand) can never be published, whatever the deployment: it
leaves the pending rows for good (``StoreTx.fail_outbox``), its saga becomes ``failed`` with the
reason, and the relay logs ``outbox_row_failed`` once, at ERROR. Any other failure
(``Unroutable`` while the receiving service is not deployed yet, a lost connection, a timeout)
can pass, so the row stays pending and the sweeper tries it again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec
import structlog

from framework import envelope
from framework.codec import Codec
from framework.errors import AccessRefused, BreakerOpen, NotEncodable
from framework.messages import Message, MessageKind
from framework.observe import Observer
from framework.routing import Naming
from framework.store.base import HistoryRow, OutboxRow, SagaStatus, Store, StoreTx
from framework.transport.base import (
    OutgoingMessage,
    Transport,
)
from framework.transport.wire import check_encodable

if TYPE_CHECKING:
    from framework.resilience.registry import Breakers

__all__ = ["OutboxRelay", "OutboxWriter"]

_log = structlog.get_logger("leveret.outbox")


class _Properties(msgspec.Struct, kw_only=True, omit_defaults=True):
    type: str | None = None
    correlation_id: str | None = None
    content_type: str | None = None
    headers: dict[str, Any] = msgspec.field(default_factory=dict)
    persistent: bool = True
    expiration_ms: int | None = None
    timestamp: int | None = None


_encode_props = msgspec.json.Encoder().encode
_decode_props = msgspec.json.Decoder(_Properties).decode


class OutboxWriter:
    """Builds outbox rows for contracts (and delayed messages) without touching the broker."""

    def __init__(self, codec: Codec, naming: Naming, *, clock: Callable[[], float] = time.time):
        self._codec = codec
        self._naming = naming
        self._clock = clock
        # Adds the trace context of the moment a row is written (``framework.observe``).
        self.observer: Observer | None = None
        self._exchanges = {
            MessageKind.COMMAND: naming.commands,
            MessageKind.EVENT: naming.events,
            MessageKind.QUERY: naming.queries,
        }

    def row(
        self,
        message: Message,
        *,
        message_id: str,
        correlation_id: str | None,
        causation_id: str | None,
        saga_id: str | None = None,
        delay_ms: int | None = None,
        queue: str | None = None,
    ) -> OutboxRow:
        """A row for ``message``; with ``delay_ms`` it goes through the delay queue to ``queue``.

        Raises:
            NotEncodable: AMQP cannot carry the message (``framework.transport.wire``): it
                could never be published, so it is refused before it is written.
        """
        cls = type(message)
        wire = envelope.build(
            message,
            self._codec.encode(message),
            message_id=message_id,
            correlation_id=correlation_id,
            causation_id=causation_id,
            saga_id=saga_id,
        )
        if self.observer is not None:
            self.observer.message_stored(wire.headers)
        if delay_ms is not None:
            assert queue is not None
            exchange, routing_key, mandatory = self._naming.delay(delay_ms), queue, True
        else:
            kind = cls.__kind__
            exchange, routing_key = self._exchanges[kind], cls.__wire_name__
            mandatory = kind is MessageKind.COMMAND
        # Refused here, in the transaction that writes it, rather than by the relay forever after.
        check_encodable(
            wire if delay_ms is None else msgspec.structs.replace(wire, expiration_ms=delay_ms),
            exchange=exchange,
            routing_key=routing_key,
        )
        props = _Properties(
            type=wire.type,
            correlation_id=wire.correlation_id,
            content_type=wire.content_type,
            headers=wire.headers,
            persistent=wire.persistent,
            expiration_ms=delay_ms,
            timestamp=wire.timestamp,
        )
        return OutboxRow(
            message_id=message_id,
            exchange=exchange,
            routing_key=routing_key,
            body=wire.body,
            properties=_encode_props(props),
            mandatory=mandatory,
            destination=routing_key,
            saga_id=saga_id,
            created_at=self._clock(),
        )


class OutboxRelay:
    """Publishes committed outbox rows with confirms and marks them sent.

    With circuit breakers (``use_breakers``), every row goes through its destination's breaker.
    A refused row stays pending and its destination is *parked*: later rows for it are not
    tried, and a waiter releases them oldest first — one at a time, each a probe — once the
    breaker lets calls through again. Nothing is dropped.

    A publish refused for lack of permission stops the relay for good (see the module's
    docstring): ``refused`` holds that error from then on.

    Args:
        sweep_interval: seconds between sweeps for rows left unsent (crash, broker trouble).
        sweep_grace: rows younger than this are left to the process that wrote them.
        on_refused: awaited once with the ``AccessRefused`` that stopped the relay.
    """

    def __init__(
        self,
        store: Store,
        transport: Transport,
        naming: Naming,
        *,
        sweep_interval: float = 1.0,
        sweep_grace: float = 5.0,
        clock: Callable[[], float] = time.time,
        on_refused: Callable[[AccessRefused], Awaitable[None]] | None = None,
    ) -> None:
        self._store = store
        self._transport = transport
        self._naming = naming
        self._interval = sweep_interval
        self._grace = sweep_grace
        self._clock = clock
        self._delays: set[str] = set()
        self._delay_lock = asyncio.Lock()
        self._breakers: Breakers | None = None
        self._parked: dict[str, asyncio.Task[None]] = {}
        # Told about every row published (``framework.observe``); rows keep their headers.
        self.observer: Observer | None = None
        self._on_refused = on_refused
        self.refused: AccessRefused | None = None
        self._marker = _SentMarker(self)

    @property
    def store(self) -> Store:
        """The store whose outbox this relay publishes."""
        return self._store

    def use_transport(self, transport: Transport) -> None:
        self._transport = transport

    def use_store(self, store: Store) -> None:
        self._store = store

    def use_breakers(self, breakers: Breakers) -> None:
        """Gate every row through its destination's breaker, parking refused destinations."""
        self._breakers = breakers

    @property
    def parked(self) -> frozenset[str]:
        """Names of the breakers whose rows are parked right now."""
        return frozenset(self._parked)

    def _breaker_of(self, row: OutboxRow) -> str | None:
        if self._breakers is None:
            return None
        breaker = self._breakers.breaker_for(
            row.routing_key, is_event=row.exchange == self._naming.events
        )
        return None if breaker is None else breaker.name

    async def publish(self, rows: Sequence[OutboxRow]) -> bool:
        """Publish ``rows`` (concurrently, each with its confirm) and mark the sent ones.

        Returns whether all were sent; unsent rows stay pending for the sweeper. A stopped
        relay (``refused``) publishes nothing.
        """
        if not rows:
            return True
        if self.refused is not None:
            return False
        if self._parked:
            rows = [r for r in rows if self._breaker_of(r) not in self._parked]
        results = await asyncio.gather(*(self._publish_one(r) for r in rows))
        sent = [r.message_id for r, ok in zip(rows, results, strict=True) if ok]
        if sent:
            await self._marker.mark(sent)
        return len(sent) == len(rows)

    async def _publish_one(self, row: OutboxRow) -> bool:
        if self.refused is not None:  # rows of a batch started before the refusal came back
            return False
        props = _decode_props(row.properties)
        message = OutgoingMessage(
            body=row.body,
            message_id=row.message_id,
            type=props.type,
            correlation_id=props.correlation_id,
            content_type=props.content_type,
            headers=props.headers,
            persistent=props.persistent,
            expiration_ms=props.expiration_ms,
            timestamp=props.timestamp,
        )
        observer = self.observer
        state = None if observer is None else observer.publish_started(row.destination, None)
        try:
            # Before the breaker: a row that can never be published says nothing about its
            # destination, and must not be tried again (see ``_fail``).
            check_encodable(message, exchange=row.exchange, routing_key=row.routing_key)
            if props.expiration_ms is not None:
                await self._ensure_delay(props.expiration_ms)
            if self._breakers is None:
                await self._transport.publish(
                    message,
                    exchange=row.exchange,
                    routing_key=row.routing_key,
                    mandatory=row.mandatory,
                )
            else:
                await self._breakers.publish_guarded(
                    self._transport,
                    message,
                    exchange=row.exchange,
                    routing_key=row.routing_key,
                    mandatory=row.mandatory,
                )
        except BreakerOpen as exc:
            if observer is not None:
                observer.publish_finished(state, row.destination, exc)
            self._park(exc)
            return False
        except AccessRefused as exc:
            if observer is not None:
                observer.publish_finished(state, row.destination, exc)
            await self._stop(exc, row)
            return False
        except NotEncodable as exc:
            if observer is not None:
                observer.publish_finished(state, row.destination, exc)
            await self._fail(row, exc)
            return False
        except Exception as exc:
            if observer is not None:
                observer.publish_finished(state, row.destination, exc)
            _log.warning(
                "outbox_publish_failed",
                message_id=row.message_id,
                exchange=row.exchange,
                routing_key=row.routing_key,
                error=f"{type(exc).__name__}: {exc}",
            )
            return False
        if observer is not None:
            observer.publish_finished(state, row.destination, None)
        return True

    async def _fail(self, row: OutboxRow, exc: NotEncodable) -> None:
        """Take a row that can never be published out of the outbox's pending rows, and fail
        its saga, in one transaction; log it once, at ERROR.

        The saga (unless it ended already) becomes ``failed`` (``compensation_failed`` while
        compensating) with the reason, and its timeline says which message: it waits for an
        operator (``leveret sagas resume`` or ``abort``), as after a step past the pivot failed.
        The row stays in the store (``Store.failed_outbox``; ``StoreStats.outbox_failed``).
        """
        error = f"{type(exc).__name__}: {exc}"
        now = self._clock()
        status: SagaStatus | None = None
        async with self._store.transaction() as tx:
            if not await tx.fail_outbox(row.message_id, error, at=now):
                return  # another sweep or worker failed it first, or it was sent meanwhile
            if row.saga_id is not None:
                status = await _fail_saga(tx, row, error, now)
        _log.error(
            "outbox_row_failed",
            message_id=row.message_id,
            saga_id=row.saga_id,
            saga_status=None if status is None else str(status),
            exchange=row.exchange,
            routing_key=row.routing_key,
            error=error,
        )

    async def _stop(self, refusal: AccessRefused, row: OutboxRow) -> None:
        """Stop publishing for good: the deployment must change before any retry can work."""
        if self.refused is not None:
            return
        self.refused = refusal
        _log.error(
            "outbox_relay_stopped",
            message_id=row.message_id,
            exchange=refusal.exchange,
            routing_key=refusal.routing_key,
            user=refusal.user,
            error=str(refusal),
        )
        if self._on_refused is not None:
            await self._on_refused(refusal)

    async def _ensure_delay(self, ms: int) -> None:
        """Declare the delay tier for ``ms`` the first time it is used."""
        name = self._naming.delay(ms)
        if name in self._delays:
            return
        async with self._delay_lock:
            if name in self._delays:
                return
            await self._transport.declare(self._naming.delay_topology(ms))
            self._delays.add(name)

    def _park(self, refusal: BreakerOpen) -> None:
        name = refusal.breaker
        if name in self._parked:
            return
        _log.warning(
            "outbox_parked", breaker=name, state=refusal.state, retry_after=refusal.retry_after
        )
        self._parked[name] = asyncio.create_task(
            self._release_when_permitted(name), name=f"leveret-outbox-parked-{name}"
        )

    async def _release_when_permitted(self, name: str) -> None:
        """Wait for breaker ``name`` to permit calls, then publish its rows in order."""
        assert self._breakers is not None
        try:
            while True:
                if not await self._breakers.wait_permitted(name, timeout=self._interval * 5):
                    continue
                pending = [
                    r for r in await self._store.pending_outbox() if self._breaker_of(r) == name
                ]
                for row in pending:  # one at a time: in half-open each publish is a probe
                    if not await self._publish_one(row):
                        break
                    await self._store.mark_sent([row.message_id])
                else:
                    _log.info("outbox_released", breaker=name, rows=len(pending))
                    return
                if self.refused is not None:
                    return  # stopped: the rows stay pending
                # A refusal or failure: stay parked and wait for the breaker again.
        finally:
            self._parked.pop(name, None)

    async def close(self) -> None:
        """Stop the waiters of parked destinations (their rows stay pending in the store)."""
        tasks = list(self._parked.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def sweep(self) -> int:
        """Publish rows older than the grace period; returns how many were sent."""
        if self.refused is not None:
            return 0
        cutoff = self._clock() - self._grace
        rows = [r for r in await self._store.pending_outbox() if r.created_at <= cutoff]
        if not rows:
            return 0
        await self.publish(rows)
        return len(rows)

    async def run(self) -> None:
        """Sweep until cancelled, or until a refused publish stops the relay.

        Each round also asks the store to prune its inbox and its sent outbox rows
        (``Store.prune_inbox``, ``Store.prune_outbox``: each due at most once a minute), so rows
        past their retention go without a task of their own and without any work on the
        handlers' or the publishers' path.
        """
        while self.refused is None:
            try:
                sent = await self.sweep()
                if sent:
                    _log.info("outbox_swept", rows=sent)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is None or task.cancelling():
                    raise
                # A cancellation that escaped from a library, not a stop of this sweeper: if it
                # ended the loop, unsent rows would wait for the next process.
                _log.warning("outbox_sweep_failed", error="CancelledError from a publish")
            except Exception as exc:
                _log.warning("outbox_sweep_failed", error=f"{type(exc).__name__}: {exc}")
            await _prune(self._store.prune_inbox, "inbox_pruned", "inbox_prune_failed")
            await _prune(self._store.prune_outbox, "outbox_pruned", "outbox_prune_failed")
            await asyncio.sleep(self._interval)


async def _fail_saga(tx: StoreTx, row: OutboxRow, error: str, now: float) -> SagaStatus | None:
    """Mark the saga of a row that can never be published as failed, with a timeline row;
    returns its status after (None when there is no such saga)."""
    assert row.saga_id is not None
    record = await tx.load(row.saga_id)
    if record is None:
        return None
    note = (
        f"outbox: {row.routing_key} message {row.message_id} can never be published ({error}); "
        "resume or abort the saga"
    )
    status, version = record.status, record.version
    if not status.terminal:
        status = (
            SagaStatus.COMPENSATION_FAILED
            if status is SagaStatus.COMPENSATING
            else SagaStatus.FAILED
        )
        version += 1
        failed = msgspec.structs.replace(
            record, status=status, version=version, updated_at=now, deadline_at=None, reason=note
        )
        await tx.update(failed, expected_version=record.version)
    # On a saga that ended already, the timeline alone says it.
    await tx.add_history(
        HistoryRow(
            saga_id=record.saga_id,
            version=version,
            at=now,
            message_id=row.message_id,
            message_type="outbox.failed",
            from_state=record.state,
            to_state=record.state,
            status=status,
            note=note,
        )
    )
    return status


async def _prune(prune: Callable[[], Awaitable[int]], pruned_event: str, failed_event: str) -> None:
    """Run one of the store's prunes; a failure is logged, and the next round tries again."""
    try:
        pruned = await prune()
    except Exception as exc:
        _log.warning(failed_event, error=f"{type(exc).__name__}: {exc}")
        return
    if pruned:
        _log.info(pruned_event, rows=pruned)


class _SentMarker:
    """Marks published rows as sent, many publishes' rows in one ``mark_sent`` call.

    Rows handed in while a ``mark_sent`` runs wait for the next one, which takes all of them:
    under load one statement (and, in PostgreSQL, one commit) marks the rows of many handlers
    instead of one each. ``mark`` returns when its rows are marked, and raises what
    ``mark_sent`` raised, as the relay's own call did.
    """

    def __init__(self, relay: OutboxRelay) -> None:
        self._relay = relay
        self._ids: list[str] = []
        self._next: asyncio.Future[None] | None = None
        self._flusher: asyncio.Task[None] | None = None

    async def mark(self, message_ids: list[str]) -> None:
        self._ids.extend(message_ids)
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
        batch = self._next
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush(), name="leveret-outbox-mark-sent")
        # Shielded: one caller's cancellation must not cancel the others' batch.
        await asyncio.shield(batch)

    async def _flush(self) -> None:
        try:
            while self._ids:
                ids, self._ids = self._ids, []
                batch, self._next = self._next, None
                assert batch is not None
                try:
                    await self._relay.store.mark_sent(ids)
                except Exception as exc:
                    if not batch.done():
                        batch.set_exception(exc)
                        batch.exception()  # retrieved: its callers may be gone
                except BaseException:
                    batch.cancel()
                    raise
                else:
                    if not batch.done():
                        batch.set_result(None)
        except BaseException:
            # Cancelled (shutdown): the rows still waiting stay pending; the sweeper sends them
            # again, under the same message ids.
            if self._next is not None:
                self._next.cancel()
            self._ids, self._next = [], None
            raise
        finally:
            self._flusher = None
