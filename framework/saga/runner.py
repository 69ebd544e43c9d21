"""The saga runner: correlate, dedupe, transition, save and emit — in one transaction.

For every message a saga consumes, ``SagaRunner.handle`` (registered as the handler of that
message type) does, in one store transaction:

1. record the message id in the inbox — a duplicate stops here and is acked;
2. find the instance, creating it for the start message — the insert is unique per saga id, so
   of two racing starts one wins and the other is retried against the winner's instance (a key
   whose saga id would pass ``MAX_SAGA_ID_BYTES`` is dead-lettered before, as
   ``saga_key_too_long``, and so is a transition that would emit a message AMQP cannot carry,
   as ``not_encodable``);
3. apply the pure transition;
4. save state (version-checked), a history row and the emitted messages as outbox rows with
   ids ``<saga id>/<version>/<n>/<tag>``, deterministic for the framework and unguessable to
   anyone else (``framework.saga.signing``), so no one can pre-empt them in an inbox.

What it trusts (DESIGN.md, "Trust boundaries"): the instance is the one the body's business key
names (the saga's ``key`` field), and a ``leveret-saga-id`` header naming another instance of
this saga is refused (``saga_key_mismatch``); the header correlates only messages whose body has
no key. A timeout correlates by its own ``saga_id`` field and is applied only if its token is
the one the runner armed it with (else ``forged_timeout``). Both are refused before the
transaction: dead-lettered, with no inbox row and nothing changed.

After the commit it publishes those rows (the consume pipeline acks only when ``handle`` has
returned). A version conflict retries the message in a fresh transaction, a bounded number of
times; then the handler fails and the retry policy takes over.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any, Final, Literal

import msgspec
import structlog

from framework import envelope
from framework.consumer import RejectMessage
from framework.context import Context
from framework.errors import LeveretError, NotEncodable
from framework.messages import Message
from framework.observe import Observer, SagaStep
from framework.saga.definition import Instance, Saga, SagaDefinitionError, SagaTimeout, Transition
from framework.saga.outbox import OutboxRelay, OutboxWriter
from framework.saga.signing import SagaKeys, Signer
from framework.store.base import (
    ConcurrencyConflict,
    HistoryRow,
    OutboxRow,
    SagaExists,
    SagaRecord,
    SagaStatus,
    Store,
    StoreTx,
)
from framework.transport.wire import MAX_SHORT_STRING_BYTES

__all__ = ["MAX_SAGA_ID_BYTES", "SagaActionRefused", "SagaConflict", "SagaRunner"]

_log = structlog.get_logger("leveret.saga")

#: A saga id (``<saga name>-<key>``) is at most this many bytes of UTF-8: an AMQP short string,
#: since it is the correlation id of the saga's messages when its start message has none; and
#: what an operator types in ``leveret sagas show``. A longer key is refused at the start.
MAX_SAGA_ID_BYTES: Final = MAX_SHORT_STRING_BYTES


class SagaConflict(LeveretError):
    """Concurrent updates kept conflicting; the message is retried by the retry policy."""


class SagaActionRefused(LeveretError):
    """An operator's resume or abort does not apply to the saga as it is; nothing was changed.

    Args:
        saga_id: the saga.
        action: ``resume`` or ``abort``.
        message: why, and what to do instead.
    """

    def __init__(self, saga_id: str, action: str, message: str) -> None:
        super().__init__(message)
        self.saga_id = saga_id
        self.action = action


# Ended for good: a resume would restart a finished story, an abort would rewrite its outcome.
# FAILED and COMPENSATION_FAILED are terminal too, but they wait for exactly these actions.
_SETTLED = frozenset({SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.ABORTED})


class SagaRunner:
    """Runs one saga definition against a store.

    Args:
        saga: the built definition.
        consumer: inbox namespace (the service name plus saga name).
        timeout_queue: the queue the saga's timeout messages are delivered to.
        unknown: what to do with a reply for an instance that does not exist: ``dead_letter``
            (default; it reaches the DLQ with a reason) or ``discard``.
        conflict_retries: fresh transactions to try before failing the message.
        keys: the secret its derived ids and timeout tokens are keyed with (the app's, shared
            by its runners); by default the store's (``Store.shared_secret``).
    """

    def __init__(
        self,
        saga: Saga[Any],
        *,
        store: Store,
        writer: OutboxWriter,
        relay: OutboxRelay,
        consumer: str,
        timeout_queue: str,
        unknown: Literal["dead_letter", "discard"] = "dead_letter",
        conflict_retries: int = 5,
        clock: Callable[[], float] = time.time,
        keys: SagaKeys | None = None,
    ) -> None:
        self.saga = saga
        self._store = store
        self._writer = writer
        self._relay = relay
        self._consumer = consumer
        self._timeout_queue = timeout_queue
        self._unknown = unknown
        self._retries = conflict_retries
        # Transactions of this runner that lost a race with a concurrent update of the same
        # instance and were tried again (what partitioning by saga id would save).
        self.conflicts = 0
        self._clock = clock
        self._keys = keys or SagaKeys()
        self._prefix = f"{saga.name}-"
        # Told about every committed transition (``framework.observe``); None is free.
        self.observer: Observer | None = None
        persisted = msgspec.defstruct(
            f"{saga.name}_persisted",
            [("data", saga.state), ("completed", list[str], []), ("attempt", int, 0)],
            kw_only=True,
        )
        self._persisted = persisted
        self._encode = msgspec.json.Encoder().encode
        self._decode = msgspec.json.Decoder(persisted).decode

    def use_store(self, store: Store) -> None:
        """Run against another store from now on (``App.use_store``)."""
        self._store = store

    async def handle(self, message: Message, ctx: Context) -> None:
        """The handler registered for every message type the saga consumes.

        Raises:
            RejectMessage: the message is uncorrelated, its saga id header disagrees with its
                body's key, it is a timeout with a forged token, or it replies to an unknown
                instance; it goes to the DLQ with that reason and nothing changes.
        """
        signer = await self._keys.signer(self._store)
        saga_id = self.saga_id_for(message, ctx.saga_id)
        if isinstance(message, SagaTimeout):
            self._check_token(signer, message)
        for _ in range(self._retries):
            try:
                rows = await self._apply_once(message, ctx, saga_id, signer)
            except NotEncodable as exc:
                # A message the transition emits could never be published: nothing is written
                # (the transaction rolled back), and trying again would end the same way.
                reason = f"not_encodable: saga {_shown(saga_id)} would emit {exc}"
                raise RejectMessage(reason, reason=reason) from exc
            except (ConcurrencyConflict, SagaExists):
                self.conflicts += 1
                if self.observer is not None:
                    self.observer.saga_conflicted(self.saga.name)
                continue
            await self._relay.publish(rows)
            return
        raise SagaConflict(
            f"saga {self.saga.name!r}: {ctx.message_id} kept conflicting with concurrent "
            f"updates after {self._retries} attempts"
        )

    async def resume(self, saga_id: str) -> SagaRecord:
        """Resend where a stuck or failed saga stopped (``leveret sagas resume``).

        Raises:
            LookupError: no such saga.
            SagaActionRefused: the saga is completed, compensated or aborted, or its state has
                no way to resume.
        """
        return await self._operate(saga_id, "resume", lambda inst: self.saga.resume(inst))

    async def abort(self, saga_id: str, reason: str = "aborted by an operator") -> SagaRecord:
        """End a saga as ``aborted`` without emitting anything (``leveret sagas abort``).

        Raises:
            LookupError: no such saga.
            SagaActionRefused: the saga is completed, compensated or aborted already.
        """
        return await self._operate(
            saga_id, "abort", lambda inst: inst.finish(SagaStatus.ABORTED, reason=reason)
        )

    async def _operate(
        self, saga_id: str, action: str, decide: Callable[[Instance[Any]], Transition[Any]]
    ) -> SagaRecord:
        operation = f"operator:{action}:{uuid.uuid4().hex}"
        signer = await self._keys.signer(self._store)
        async with self._store.transaction() as tx:
            record = await tx.load(saga_id)
            if record is None or record.saga != self.saga.name:
                what = "" if record is None else f" (it is a {record.saga!r} saga)"
                raise LookupError(f"no {self.saga.name!r} saga {saga_id!r}{what}")
            if record.status in _SETTLED:
                raise SagaActionRefused(
                    saga_id,
                    action,
                    f"saga {saga_id!r} is {record.status} already: there is nothing to {action}",
                )
            try:
                transition = decide(self.instance(record))
            except SagaDefinitionError as exc:
                raise SagaActionRefused(saga_id, action, str(exc)) from None
            version = record.version + 1
            rows = self._rows(
                signer, saga_id, version, transition, operation, record.correlation_id
            )
            new = self._record(record, saga_id, record.correlation_id, version, transition)
            await tx.save_step(
                new,
                expected_version=record.version,
                history=self._history(
                    saga_id, version, operation, f"operator.{action}", record, transition, rows
                ),
                outbox=rows,
            )
        _log.info(
            "saga_operator_action", saga_id=saga_id, action=action, status=str(transition.status)
        )
        if self.observer is not None:
            self._report(self.observer, saga_id, f"operator.{action}", record, transition)
        await self._relay.publish(rows)
        return new

    def saga_id_for(self, message: Message, header: str | None) -> str:
        """Which instance a message belongs to: a timeout's own ``saga_id``, else the one its
        body's key names, else (a body without the key) the one its saga id header names.

        A header naming an instance of another saga is not about this one and is ignored.

        Raises:
            RejectMessage: ``saga_key_mismatch`` — the header names another instance of this
                saga than the body's key; ``uncorrelated`` — neither says which instance;
                ``saga_key_too_long`` — the key makes a saga id over ``MAX_SAGA_ID_BYTES``.
        """
        if isinstance(message, SagaTimeout):
            return message.saga_id
        prefix = self._prefix
        key = self.saga.key_of(message)
        if key is not None:
            saga_id = prefix + key
            if not (saga_id.isascii() and len(saga_id) <= MAX_SAGA_ID_BYTES):
                self._check_length(message, saga_id)
            if header is not None and header != saga_id and header.startswith(prefix):
                reason = (
                    f"saga_key_mismatch: the {envelope.SAGA_ID} header names {_shown(header)} "
                    f"but the {self.saga.key!r} of {type(message).__qualname__} names "
                    f"{_shown(saga_id)}"
                )
                raise RejectMessage(reason, reason=reason)
            return saga_id
        if header is not None and header.startswith(prefix):
            return header
        # Rejected before any transaction, so no inbox row: a corrected copy still runs.
        reason = (
            f"uncorrelated: {type(message).__qualname__} carries neither a saga id "
            f"header nor a {self.saga.key!r} field"
        )
        raise RejectMessage(reason, reason=reason)

    def _check_length(self, message: Message, saga_id: str) -> None:
        """Refuse a key whose saga id AMQP could not carry as a correlation id.

        Raises:
            RejectMessage: ``saga_key_too_long``, or ``saga_key_invalid`` for text UTF-8 cannot
                hold (a lone surrogate).
        """
        what = f"the {self.saga.key!r} of {type(message).__qualname__}"
        try:
            size = len(saga_id.encode())
        except UnicodeEncodeError:
            reason = f"saga_key_invalid: {what} is not valid text (it holds a lone surrogate)"
            raise RejectMessage(reason, reason=reason) from None
        if size <= MAX_SAGA_ID_BYTES:
            return
        room = MAX_SAGA_ID_BYTES - len(self._prefix.encode())
        reason = (
            f"saga_key_too_long: {what} makes the saga id {_shown(saga_id)} of {size} bytes; "
            f"saga ids ({self._prefix}<{self.saga.key}>) hold at most {MAX_SAGA_ID_BYTES} bytes "
            f"of UTF-8, so the key at most {room}: use a shorter key (a hash of a long one)"
        )
        raise RejectMessage(reason, reason=reason)

    def _check_token(self, signer: Signer, timeout: SagaTimeout) -> None:
        """Refuse a timeout the runner did not arm (see ``SagaTimeout.token``).

        Raises:
            RejectMessage: ``forged_timeout``.
        """
        if signer.timeout_valid(
            self.saga.name, timeout.saga_id, timeout.state, timeout.armed_version, timeout.token
        ):
            return
        what = "no token" if not timeout.token else "a token the framework did not make"
        reason = (
            f"forged_timeout: {type(timeout).__wire_name__} for {_shown(timeout.saga_id)} "
            f"(state {_shown(timeout.state)}, v{timeout.armed_version}) carries {what}"
        )
        raise RejectMessage(reason, reason=reason)

    async def _apply_once(
        self, message: Message, ctx: Context, saga_id: str, signer: Signer
    ) -> list[OutboxRow]:
        saga = self.saga
        async with self._store.transaction() as tx:
            fresh, record = await tx.inbox_add_and_load(self._consumer, ctx.message_id, saga_id)
            if not fresh:
                return []
            transition: Transition[Any] | None
            if record is None:
                if type(message) is not saga.start:
                    return await self._unknown_instance(tx, saga_id, message)
                transition = saga.begin(saga_id, message)
                version = 1
            else:
                ignored = self._ignore_reason(record, message)
                instance = None if ignored else self.instance(record)
                transition = None if instance is None else saga.apply(instance, message)
                if transition is None:
                    await self._note(
                        tx,
                        record,
                        ctx,
                        message,
                        ignored
                        or f"ignored: no transition for {type(message).__name__} "
                        f"in state {record.state!r}",
                    )
                    return []
                version = record.version + 1
            rows = self._rows(
                signer, saga_id, version, transition, ctx.message_id, ctx.correlation_id or saga_id
            )
            new = self._record(record, saga_id, ctx.correlation_id or saga_id, version, transition)
            await tx.save_step(
                new,
                expected_version=None if record is None else record.version,
                history=self._history(
                    saga_id,
                    version,
                    ctx.message_id,
                    type(message).__wire_name__,
                    record,
                    transition,
                    rows,
                ),
                outbox=rows,
            )
        if self.observer is not None:
            self._report(self.observer, saga_id, type(message).__wire_name__, record, transition)
        if transition.finished:
            _log.info(
                "saga_finished",
                saga=saga.name,
                saga_id=saga_id,
                status=str(transition.status),
                reason=transition.reason,
            )
        return rows

    def _report(
        self,
        observer: Observer,
        saga_id: str,
        message_type: str,
        old: SagaRecord | None,
        transition: Transition[Any],
    ) -> None:
        observer.saga_transitioned(
            SagaStep(
                saga=self.saga.name,
                saga_id=saga_id,
                message_type=message_type,
                from_state=old.state if old else "start",
                to_state=transition.state,
                status=str(transition.status),
                started=old is None,
                finished=transition.finished,
                seconds_in_state=None if old is None else max(0.0, self._clock() - old.updated_at),
            )
        )

    def _record(
        self,
        old: SagaRecord | None,
        saga_id: str,
        correlation_id: str,
        version: int,
        transition: Transition[Any],
    ) -> SagaRecord:
        now = self._clock()
        return SagaRecord(
            saga_id=saga_id,
            saga=self.saga.name,
            correlation_id=correlation_id,
            status=transition.status,
            state=transition.state,
            data=self._encode(
                self._persisted(
                    data=transition.data,
                    completed=list(transition.completed),
                    attempt=transition.attempt,
                )
            ),
            version=version,
            created_at=old.created_at if old else now,
            updated_at=now,
            deadline_at=None if transition.timeout is None else now + transition.timeout,
            reason=transition.reason,
        )

    def _history(
        self,
        saga_id: str,
        version: int,
        message_id: str,
        message_type: str,
        old: SagaRecord | None,
        transition: Transition[Any],
        rows: list[OutboxRow],
    ) -> HistoryRow:
        return HistoryRow(
            saga_id=saga_id,
            version=version,
            at=self._clock(),
            message_id=message_id,
            message_type=message_type,
            from_state=old.state if old else "start",
            to_state=transition.state,
            status=transition.status,
            emitted=[r.message_id for r in rows],
        )

    def _ignore_reason(self, record: SagaRecord, message: Message) -> str | None:
        if record.status.terminal:
            return f"ignored: saga already {record.status}"
        if isinstance(message, SagaTimeout) and (
            message.armed_version != record.version or message.state != record.state
        ):
            return f"ignored: stale timeout for {message.state!r} (v{message.armed_version})"
        return None

    def instance(self, record: SagaRecord) -> Instance[Any]:
        """What the saga's transitions see of ``record``: its state decoded, its steps done."""
        persisted: Any = self._decode(record.data)
        return Instance(
            saga_id=record.saga_id,
            state=record.state,
            data=persisted.data,
            completed=tuple(persisted.completed),
            attempt=persisted.attempt,
            reason=record.reason,
        )

    def _rows(
        self,
        signer: Signer,
        saga_id: str,
        version: int,
        transition: Transition[Any],
        cause: str,
        correlation_id: str,
    ) -> list[OutboxRow]:
        rows = [
            self._writer.row(
                msg,
                message_id=signer.message_id(saga_id, version, n),
                correlation_id=correlation_id,
                causation_id=cause,
                saga_id=saga_id,
            )
            for n, msg in enumerate(transition.emit)
        ]
        if transition.timeout is not None and not transition.finished:
            state = transition.state
            timeout = self.saga.timeout_type(
                saga_id=saga_id,
                state=state,
                armed_version=version,
                token=signer.timeout_token(self.saga.name, saga_id, state, version),
            )
            rows.append(
                self._writer.row(
                    timeout,
                    message_id=signer.message_id(saga_id, version, "timeout"),
                    correlation_id=correlation_id,
                    causation_id=cause,
                    saga_id=saga_id,
                    delay_ms=max(1, round(transition.timeout * 1000)),
                    queue=self._timeout_queue,
                )
            )
        return rows

    async def _note(
        self, tx: StoreTx, record: SagaRecord, ctx: Context, message: Message, note: str
    ) -> None:
        """Record a message that changed nothing (late reply, stale timeout, duplicate start)."""
        await tx.add_history(
            HistoryRow(
                saga_id=record.saga_id,
                version=record.version,
                at=self._clock(),
                message_id=ctx.message_id,
                message_type=type(message).__wire_name__,
                from_state=record.state,
                to_state=record.state,
                status=record.status,
                note=note,
            )
        )

    async def _unknown_instance(
        self, tx: StoreTx, saga_id: str, message: Message
    ) -> list[OutboxRow]:
        if self._unknown == "discard":
            _log.info("saga_reply_discarded", saga_id=saga_id, message=type(message).__name__)
            return []
        reason = f"unknown_saga: no {self.saga.name} instance {_shown(saga_id)}"
        raise RejectMessage(reason, reason=reason)


def _shown(value: str, limit: int = 120) -> str:
    """``value`` quoted for a reason header, cut short: it may come from anyone."""
    return repr(value) if len(value) <= limit else repr(value[:limit]) + "…"
