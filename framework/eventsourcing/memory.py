"""The event store on ``memory://``: streams in the memory store, committed with its transaction.

The memory store runs one transaction at a time, so a version check against what is committed
plus what this transaction appended is exact. Appends wait in the transaction's scratch space and
join the store's tables in the commit, next to the inbox and outbox rows; a rollback drops them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import msgspec

from framework.eventsourcing.store import (
    EventStore,
    Snapshot,
    StoredEvent,
    StreamAppend,
    StreamConflict,
    check_appends,
    number_events,
)
from framework.store.base import StoreTx

__all__ = ["MEMORY_EVENT_STORE", "MemoryEventStore"]

_KEY = "leveret.eventsourcing"


class _HasExtensions(Protocol):
    extensions: dict[str, Any]


class _MemoryTx(Protocol):
    scratch: dict[str, Any]
    on_commit: list[Callable[[], None]]

    @property
    def store(self) -> _HasExtensions: ...


@dataclass
class _Tables:
    events: list[StoredEvent] = field(default_factory=list)  # events[i].position == i + 1
    streams: dict[str, list[StoredEvent]] = field(default_factory=dict)
    snapshots: dict[str, Snapshot] = field(default_factory=dict)

    def add(self, events: Sequence[StoredEvent]) -> None:
        self.events.extend(events)
        for event in events:
            self.streams.setdefault(event.stream, []).append(event)

    def merge(self, other: _Tables) -> None:
        self.add(other.events)
        self.snapshots.update(other.snapshots)


class MemoryEventStore(EventStore):
    """Streams kept in the ``MemoryStore`` the transaction belongs to."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock

    def _tables(self, tx: StoreTx) -> tuple[_Tables, _Tables]:
        """The committed tables and this transaction's pending ones."""
        mtx = cast(_MemoryTx, tx)
        committed: _Tables = mtx.store.extensions.setdefault(_KEY, _Tables())
        pending: _Tables | None = mtx.scratch.get(_KEY)
        if pending is None:
            pending = mtx.scratch[_KEY] = _Tables()
            mtx.on_commit.append(lambda: committed.merge(pending))
        return committed, pending

    def _version(self, committed: _Tables, pending: _Tables, stream: str) -> int:
        events = pending.streams.get(stream) or committed.streams.get(stream)
        return events[-1].version if events else 0

    async def append_many(self, tx: StoreTx, appends: Sequence[StreamAppend]) -> list[StoredEvent]:
        check_appends(appends)
        committed, pending = self._tables(tx)
        for item in appends:  # every check before any change: a conflict appends nothing
            actual = self._version(committed, pending, item.stream)
            if actual != item.expected_version:
                raise StreamConflict(item.stream, item.expected_version, actual)
        position = len(committed.events) + len(pending.events)
        stored = number_events(appends, position, self._clock())
        pending.add(stored)
        return stored

    async def stream_version(self, tx: StoreTx, stream: str, *, lock: bool = False) -> int:
        committed, pending = self._tables(tx)
        return self._version(committed, pending, stream)

    async def read_stream(
        self, tx: StoreTx, stream: str, *, from_version: int = 1
    ) -> list[StoredEvent]:
        committed, pending = self._tables(tx)
        events = (*committed.streams.get(stream, ()), *pending.streams.get(stream, ()))
        return list(events[max(from_version, 1) - 1 :])

    async def read_all(
        self, tx: StoreTx, *, from_position: int = 0, limit: int = 1000
    ) -> list[StoredEvent]:
        committed, pending = self._tables(tx)
        start, limit = max(from_position, 0), max(limit, 0)
        done = len(committed.events)
        found = committed.events[start : start + limit]
        rest = max(start - done, 0)
        return found + pending.events[rest : rest + limit - len(found)]

    async def save_snapshot(self, tx: StoreTx, snapshot: Snapshot) -> None:
        _, pending = self._tables(tx)
        current = await self.load_snapshot(tx, snapshot.stream)
        if current is None or current.version < snapshot.version:
            if not snapshot.recorded_at:
                snapshot = msgspec.structs.replace(snapshot, recorded_at=self._clock())
            pending.snapshots[snapshot.stream] = snapshot

    async def load_snapshot(self, tx: StoreTx, stream: str) -> Snapshot | None:
        committed, pending = self._tables(tx)
        return pending.snapshots.get(stream) or committed.snapshots.get(stream)


MEMORY_EVENT_STORE = MemoryEventStore()
"""The event store of every memory store (its tables live in the store; this holds none)."""
