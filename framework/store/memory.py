"""In-memory store: the reference implementation of the port, for tests and the harness.

Transactions run one at a time (like SQLite's single writer); their changes are buffered and
applied on commit, dropped on rollback. Ports built on the store (the event store) keep their
tables in ``MemoryStore.extensions`` and their buffered changes in ``tx.scratch``, and apply them
from ``tx.on_commit`` callbacks, so they commit and roll back with the rest.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import msgspec

from framework.store import _retention
from framework.store.base import (
    ConcurrencyConflict,
    HistoryRow,
    OutboxRow,
    SagaExists,
    SagaRecord,
    SagaStatus,
    Store,
    StoreStats,
    StoreTx,
)
from framework.store.migrations import Migrations, PendingStep

__all__ = ["MemoryStore"]


class _MemoryTx(StoreTx):
    dialect = "memory"

    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self.inbox: dict[tuple[str, str], float] = {}
        self.sagas: dict[str, SagaRecord] = {}
        self.history: list[HistoryRow] = []
        self.outbox: list[OutboxRow] = []
        self.failed: dict[str, OutboxRow] = {}
        self.scratch: dict[str, Any] = {}
        self.on_commit: list[Callable[[], None]] = []

    @property
    def store(self) -> MemoryStore:
        """The store this transaction commits into."""
        return self._store

    async def inbox_add(self, consumer: str, message_id: str) -> bool:
        key = (consumer, message_id)
        if key in self._store._inbox or key in self.inbox:
            return False
        self.inbox[key] = self._store._clock()
        return True

    async def load(self, saga_id: str) -> SagaRecord | None:
        record = self.sagas.get(saga_id) or self._store._sagas.get(saga_id)
        return msgspec.structs.replace(record) if record is not None else None

    async def insert(self, record: SagaRecord) -> None:
        if record.saga_id in self._store._sagas or record.saga_id in self.sagas:
            raise SagaExists(record.saga_id)
        self.sagas[record.saga_id] = msgspec.structs.replace(record)

    async def update(self, record: SagaRecord, *, expected_version: int) -> None:
        current = self.sagas.get(record.saga_id) or self._store._sagas.get(record.saga_id)
        if current is None or current.version != expected_version:
            raise ConcurrencyConflict(record.saga_id)
        self.sagas[record.saga_id] = msgspec.structs.replace(record)

    async def add_history(self, row: HistoryRow) -> None:
        self.history.append(row)

    async def add_outbox(self, rows: Sequence[OutboxRow]) -> None:
        self.outbox.extend(rows)

    async def fail_outbox(self, message_id: str, error: str, *, at: float) -> bool:
        row = self._store._outbox.get(message_id)
        if row is None or message_id in self.failed:
            return False
        self.failed[message_id] = msgspec.structs.replace(row, failed_at=at, error=error)
        return True


class MemoryStore(Store):
    """Keeps everything in dicts; one transaction at a time.

    Args:
        inbox_retention: seconds an inbox row is kept (default 7 days); None keeps them forever.
        clock: the time source for inbox timestamps and their retention.

    Raises:
        ConfigurationError: ``inbox_retention`` is 0, negative or not finite.
    """

    def __init__(
        self,
        *,
        inbox_retention: float | None = _retention.INBOX_RETENTION,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = "memory://"
        self._clock = clock
        self._inbox_pruner = _retention.Pruner(
            _retention.check_inbox_retention(inbox_retention, "MemoryStore"), clock
        )
        self._lock = asyncio.Lock()
        self._inbox: dict[tuple[str, str], float] = {}
        self._sagas: dict[str, SagaRecord] = {}
        self._history: dict[str, list[HistoryRow]] = {}
        self._outbox: dict[str, OutboxRow] = {}
        self._failed: dict[str, OutboxRow] = {}
        self._positions = itertools.count(1)
        self._secret: str | None = None
        self.extensions: dict[str, Any] = {}

    async def setup(self, ddl: Sequence[str] = ()) -> None:
        return None

    async def upgrade(self, migrations: Sequence[Migrations] = ()) -> list[PendingStep]:
        return []  # no tables: nothing is ever behind

    async def pending_steps(self, migrations: Sequence[Migrations] = ()) -> list[PendingStep]:
        return []

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[StoreTx]:
        async with self._lock:
            tx = _MemoryTx(self)
            yield tx
            self._inbox.update(tx.inbox)
            self._sagas.update(tx.sagas)
            for row in tx.history:
                self._history.setdefault(row.saga_id, []).append(row)
            for out in tx.outbox:
                self._outbox[out.message_id] = msgspec.structs.replace(
                    out, position=next(self._positions)
                )
            for message_id, failed in tx.failed.items():
                if self._outbox.pop(message_id, None) is not None:
                    self._failed.setdefault(message_id, failed)  # the first failure stays
            for apply in tx.on_commit:
                apply()

    async def shared_secret(self, candidate: str) -> str:
        """This store object's secret: ``candidate`` the first time, the same one after."""
        if self._secret is None:
            self._secret = candidate
        return self._secret

    async def pending_outbox(self, limit: int = 500) -> list[OutboxRow]:
        rows = sorted(self._outbox.values(), key=lambda r: r.position)
        return rows[:limit]

    async def stats(self) -> StoreStats:
        pending = self._outbox.values()
        return StoreStats(
            outbox_pending=len(pending),
            oldest_pending_at=min((r.created_at for r in pending), default=None),
            inbox_rows=len(self._inbox),
            outbox_failed=len(self._failed),
        )

    async def failed_outbox(
        self, limit: int = 100, *, saga_id: str | None = None
    ) -> list[OutboxRow]:
        rows = [r for r in self._failed.values() if saga_id is None or r.saga_id == saga_id]
        rows.sort(key=lambda r: (r.failed_at, r.position), reverse=True)
        return rows[:limit]

    async def mark_sent(self, message_ids: Sequence[str]) -> None:
        for message_id in message_ids:
            self._outbox.pop(message_id, None)

    async def prune_inbox(self) -> int:
        """Forget inbox rows older than the retention, if due (at most once a minute)."""
        cutoff = self._inbox_pruner.cutoff(self._inbox_pruner.now())
        if cutoff is None:
            return 0
        old = [key for key, at in self._inbox.items() if at < cutoff]
        for key in old:
            del self._inbox[key]
        return len(old)

    async def get_saga(self, saga_id: str) -> SagaRecord | None:
        return self._sagas.get(saga_id)

    async def list_sagas(
        self, *, status: SagaStatus | None = None, saga: str | None = None, limit: int = 1000
    ) -> list[SagaRecord]:
        found = [
            r
            for r in self._sagas.values()
            if (status is None or r.status == status) and (saga is None or r.saga == saga)
        ]
        found.sort(key=lambda r: r.created_at, reverse=True)
        return found[:limit]

    async def history(self, saga_id: str) -> list[HistoryRow]:
        return list(self._history.get(saga_id, ()))

    async def close(self) -> None:
        return None
