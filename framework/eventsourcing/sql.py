"""The event store on SQLite and PostgreSQL: the tables of ``EVENT_STORE_SCHEMA``, through the
transaction's own ``execute``/``fetchone``/``fetchall`` (``?`` placeholders on both).

An append moves the stream's row in ``leveret_streams`` from the expected version to the new one
with a guarded ``UPDATE`` (or creates it with ``INSERT ... ON CONFLICT DO NOTHING``): on
PostgreSQL a concurrent writer of the same stream waits for the first to commit and then finds
the version moved, which is the conflict. Positions come from the single row of
``leveret_event_sequence``, taken after every stream row: its lock is held to the commit, so
positions commit in order. SQLite runs one writer at a time, so the same statements are exact
there without locks.

The events of an append go in with one statement whatever their number: on PostgreSQL one
``INSERT ... SELECT FROM unnest(...)`` of one array per column (one round trip), on SQLite one
``executemany`` of the prepared insert. Their positions and versions are computed before (from
the counter row and the expected versions), so the rows' insert order does not matter.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

from framework.errors import ConfigurationError
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

__all__ = ["SQL_EVENT_STORES", "SqlEventStore"]

_COLUMNS = (
    "position, stream, version, event_id, wire_name, wire_version, body, recorded_at, "
    "correlation_id, causation_id"
)
# SQLite: one executemany of the plain insert.
_INSERT = f"INSERT INTO leveret_events ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
# PostgreSQL: one statement for the whole batch, an array per column in ``_COLUMNS`` order.
_INSERT_ARRAYS = (
    f"INSERT INTO leveret_events ({_COLUMNS}) SELECT * FROM unnest(?::bigint[], ?::text[],"
    " ?::bigint[], ?::text[], ?::text[], ?::int[], ?::text[], ?::float8[], ?::text[], ?::text[])"
)
_CREATE_STREAM = (
    "INSERT INTO leveret_streams (stream, version) VALUES (?, ?) ON CONFLICT (stream) DO NOTHING "
    "RETURNING version"
)
_MOVE_STREAM = (
    "UPDATE leveret_streams SET version = ? WHERE stream = ? AND version = ? RETURNING version"
)
_VERSION = "SELECT version FROM leveret_streams WHERE stream = ?"
_NEXT_POSITIONS = (
    "UPDATE leveret_event_sequence SET position = position + ? WHERE id = 1 RETURNING position"
)
_READ_STREAM = (
    f"SELECT {_COLUMNS} FROM leveret_events WHERE stream = ? AND version >= ? ORDER BY version"
)
_READ_ALL = f"SELECT {_COLUMNS} FROM leveret_events WHERE position > ? ORDER BY position LIMIT ?"
_SAVE_SNAPSHOT = (
    "INSERT INTO leveret_snapshots (stream, version, kind, schema_version, state, recorded_at) "
    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (stream) DO UPDATE SET version = excluded.version, "
    "kind = excluded.kind, schema_version = excluded.schema_version, state = excluded.state, "
    "recorded_at = excluded.recorded_at WHERE leveret_snapshots.version < excluded.version"
)
_LOAD_SNAPSHOT = (
    "SELECT stream, version, kind, schema_version, state, recorded_at FROM leveret_snapshots "
    "WHERE stream = ?"
)


class SqlEventStore(EventStore):
    """The event store in the tables of ``EVENT_STORE_SCHEMA``.

    Args:
        dialect: the store's SQL. ``"postgresql"`` takes ``SELECT ... FOR UPDATE`` and array
            parameters (a batch of events is one ``unnest`` insert); ``"sqlite"`` neither (it
            needs no locks, and a batch is one ``executemany``).
        clock: the time source of ``recorded_at``.

    Raises:
        ConfigurationError: another dialect.
    """

    def __init__(
        self,
        *,
        dialect: Literal["sqlite", "postgresql"],
        clock: Callable[[], float] = time.time,
    ) -> None:
        if dialect not in ("sqlite", "postgresql"):
            raise ConfigurationError(
                f"SqlEventStore: dialect={dialect!r} must be 'sqlite' or 'postgresql'"
            )
        self._arrays = dialect == "postgresql"
        self._lock_suffix = " FOR UPDATE" if dialect == "postgresql" else ""
        self._clock = clock

    async def append_many(self, tx: StoreTx, appends: Sequence[StreamAppend]) -> list[StoredEvent]:
        check_appends(appends)
        appends = [a for a in appends if a.events]
        if not appends:
            return []
        # Streams in name order, then the sequence row: no two appends wait in a cycle.
        for item in sorted(appends, key=lambda a: a.stream):
            new_version = item.expected_version + len(item.events)
            if item.expected_version == 0:
                moved = await tx.fetchone(_CREATE_STREAM, item.stream, new_version)
            else:
                moved = await tx.fetchone(
                    _MOVE_STREAM, new_version, item.stream, item.expected_version
                )
            if moved is None:
                raise StreamConflict(
                    item.stream, item.expected_version, await self._version(tx, item.stream)
                )
        count = sum(len(a.events) for a in appends)
        row = await tx.fetchone(_NEXT_POSITIONS, count)
        if row is None:  # the DDL seeds the row; a store set up without it has none
            raise ConfigurationError(
                "leveret_event_sequence has no row: create the event store tables with "
                "Service(schema=EVENT_STORE_SCHEMA)"
            )
        stored = number_events(appends, int(row[0]) - count, self._clock())
        rows = [_row(event) for event in stored]
        if self._arrays:
            await tx.execute(_INSERT_ARRAYS, *zip(*rows, strict=True))
        else:
            await tx.executemany(_INSERT, rows)
        return stored

    async def _version(self, tx: StoreTx, stream: str, suffix: str = "") -> int:
        row = await tx.fetchone(_VERSION + suffix, stream)
        return int(row[0]) if row is not None else 0

    async def stream_version(self, tx: StoreTx, stream: str, *, lock: bool = False) -> int:
        return await self._version(tx, stream, self._lock_suffix if lock else "")

    async def read_stream(
        self, tx: StoreTx, stream: str, *, from_version: int = 1
    ) -> list[StoredEvent]:
        return [_event(row) for row in await tx.fetchall(_READ_STREAM, stream, from_version)]

    async def read_all(
        self, tx: StoreTx, *, from_position: int = 0, limit: int = 1000
    ) -> list[StoredEvent]:
        return [_event(row) for row in await tx.fetchall(_READ_ALL, from_position, limit)]

    async def save_snapshot(self, tx: StoreTx, snapshot: Snapshot) -> None:
        await tx.execute(
            _SAVE_SNAPSHOT,
            snapshot.stream,
            snapshot.version,
            snapshot.kind,
            snapshot.schema_version,
            snapshot.state.decode(),
            snapshot.recorded_at or self._clock(),
        )

    async def load_snapshot(self, tx: StoreTx, stream: str) -> Snapshot | None:
        row = await tx.fetchone(_LOAD_SNAPSHOT, stream)
        if row is None:
            return None
        return Snapshot(
            stream=row[0],
            version=int(row[1]),
            kind=row[2],
            schema_version=int(row[3]),
            state=_bytes(row[4]),
            recorded_at=float(row[5]),
        )


def _row(event: StoredEvent) -> tuple[Any, ...]:
    """An event's values in ``_COLUMNS`` order."""
    return (
        event.position,
        event.stream,
        event.version,
        event.event_id,
        event.wire_name,
        event.wire_version,
        event.body.decode(),
        event.recorded_at,
        event.correlation_id,
        event.causation_id,
    )


def _bytes(value: Any) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


def _event(row: tuple[Any, ...]) -> StoredEvent:
    return StoredEvent(
        position=int(row[0]),
        stream=row[1],
        version=int(row[2]),
        event_id=row[3],
        wire_name=row[4],
        wire_version=int(row[5]),
        body=_bytes(row[6]),
        recorded_at=float(row[7]),
        correlation_id=row[8],
        causation_id=row[9],
    )


SQL_EVENT_STORES: dict[str, EventStore] = {
    "sqlite": SqlEventStore(dialect="sqlite"),
    "postgresql": SqlEventStore(dialect="postgresql"),
}
"""The event store for each SQL dialect (stateless, shared)."""
