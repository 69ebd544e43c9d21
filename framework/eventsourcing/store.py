"""The event store port: append-only streams with version checks and one global order.

An event store keeps, for every stream (one aggregate), its events numbered 1, 2, 3... and gives
every event a global ``position`` as well. It works inside a ``StoreTx`` of the app's store, so an
append commits or rolls back together with the handler's inbox row, its outbox rows and its own
tables. Three implementations pass one contract suite
(``tests/store/test_event_store_contract.py``): ``MemoryEventStore`` on ``memory://`` and
``SqlEventStore`` on SQLite and PostgreSQL (the same tables, which a service creates with
``Service(schema=EVENT_STORE_SCHEMA)``); ``event_store(tx)`` picks the one for a transaction.

Events are kept as they travel on the wire: the JSON body, the wire name and the wire version.
Reading an old version into the current class goes through the app's upcasters
(``framework.eventsourcing.EventDecoder``), so stored history never has to be rewritten.

Global order: positions are handed out under one lock held until commit (a counter row), so an
event with a higher position never commits before one with a lower position and a reader that
remembers the last position it saw misses nothing. Appends to several streams in one transaction
go through one ``append_many`` call, which locks the streams in name order and the counter last:
two transactions never wait for each other in a cycle.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import msgspec

from framework.errors import ConfigurationError, LeveretError
from framework.store.base import ConcurrencyConflict, Store, StoreTx

__all__ = [
    "EVENT_STORE_SCHEMA",
    "EventStore",
    "EventStoreError",
    "NewEvent",
    "Snapshot",
    "StoredEvent",
    "StreamAppend",
    "StreamConflict",
    "event_store",
    "read_all",
    "read_stream",
]

# Portable DDL (SQLite and PostgreSQL): bodies are JSON text, positions are assigned explicitly.
EVENT_STORE_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS leveret_events (
        position BIGINT PRIMARY KEY,
        stream TEXT NOT NULL,
        version BIGINT NOT NULL,
        event_id TEXT NOT NULL UNIQUE,
        wire_name TEXT NOT NULL,
        wire_version INTEGER NOT NULL,
        body TEXT NOT NULL,
        recorded_at DOUBLE PRECISION NOT NULL,
        correlation_id TEXT,
        causation_id TEXT,
        UNIQUE (stream, version)
    )""",
    """CREATE TABLE IF NOT EXISTS leveret_streams (
        stream TEXT PRIMARY KEY,
        version BIGINT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS leveret_event_sequence (
        id INTEGER PRIMARY KEY,
        position BIGINT NOT NULL
    )""",
    "INSERT INTO leveret_event_sequence (id, position) VALUES (1, 0) ON CONFLICT (id) DO NOTHING",
    """CREATE TABLE IF NOT EXISTS leveret_snapshots (
        stream TEXT PRIMARY KEY,
        version BIGINT NOT NULL,
        kind TEXT NOT NULL,
        schema_version INTEGER NOT NULL,
        state TEXT NOT NULL,
        recorded_at DOUBLE PRECISION NOT NULL
    )""",
)


class EventStoreError(LeveretError):
    """A stored event or snapshot cannot be read back: its type or version is unknown here,
    or its body no longer validates. Not transient: the message goes to its DLQ after retries."""


class StreamConflict(ConcurrencyConflict):
    """The stream's version was not the expected one: someone else appended first.

    A ``ConcurrencyConflict``, so a ``transactional=True`` handler runs again in a fresh
    transaction (up to five times), then follows its retry policy.

    Attributes:
        stream: the stream appended to.
        expected: the version the caller expected (0: a new stream).
        actual: the version the stream has.
    """

    def __init__(self, stream: str, expected: int, actual: int) -> None:
        super().__init__(
            f"stream {stream!r} is at version {actual}, not the expected {expected}: another "
            "writer appended first; load it again and retry"
        )
        self.stream = stream
        self.expected = expected
        self.actual = actual


class NewEvent(msgspec.Struct, frozen=True, kw_only=True):
    """An event to append: its id and its wire form.

    ``event_id`` is the id of the message that publishes it (deterministic), so consumers and
    projections dedupe the stored event and the published one alike.
    """

    event_id: str
    wire_name: str
    wire_version: int
    body: bytes
    correlation_id: str | None = None
    causation_id: str | None = None


class StoredEvent(msgspec.Struct, frozen=True, kw_only=True):
    """An event as the store keeps it: its stream version and its global position."""

    position: int
    stream: str
    version: int
    event_id: str
    wire_name: str
    wire_version: int
    body: bytes
    recorded_at: float
    correlation_id: str | None = None
    causation_id: str | None = None


class StreamAppend(msgspec.Struct, frozen=True, kw_only=True):
    """Events for one stream whose version must still be ``expected_version``."""

    stream: str
    expected_version: int
    events: Sequence[NewEvent]


class Snapshot(msgspec.Struct, frozen=True, kw_only=True):
    """An aggregate's state as of ``version`` of its stream; ``kind`` and ``schema_version``
    say which state class wrote it, so a changed class ignores old snapshots."""

    stream: str
    version: int
    kind: str
    schema_version: int
    state: bytes
    recorded_at: float = 0.0


class EventStore(abc.ABC):
    """Streams of events in the app's store; every method runs in the caller's transaction."""

    async def append(
        self, tx: StoreTx, stream: str, events: Sequence[NewEvent], *, expected_version: int
    ) -> list[StoredEvent]:
        """Append ``events`` to ``stream`` if its version is still ``expected_version``.

        Raises:
            StreamConflict: the stream's version differs (0 for a stream with no events).
        """
        return await self.append_many(
            tx, [StreamAppend(stream=stream, expected_version=expected_version, events=events)]
        )

    @abc.abstractmethod
    async def append_many(self, tx: StoreTx, appends: Sequence[StreamAppend]) -> list[StoredEvent]:
        """Append to several streams at once, each with its own version check; returns the
        stored events in the order given.

        Raises:
            StreamConflict: a stream's version differs (nothing is appended: the caller's
                transaction must roll back, which leaving the handler with the error does).
            ConfigurationError: a stream appears twice, or an expected version is negative.
        """

    @abc.abstractmethod
    async def stream_version(self, tx: StoreTx, stream: str, *, lock: bool = False) -> int:
        """The stream's version (0 when it has no events).

        ``lock=True`` holds the stream until the transaction ends, so that concurrent writers of
        it queue instead of conflicting (PostgreSQL; SQLite and memory run one writer at a time).
        """

    @abc.abstractmethod
    async def read_stream(
        self, tx: StoreTx, stream: str, *, from_version: int = 1
    ) -> list[StoredEvent]:
        """The stream's events with version ``>= from_version``, in version order."""

    @abc.abstractmethod
    async def read_all(
        self, tx: StoreTx, *, from_position: int = 0, limit: int = 1000
    ) -> list[StoredEvent]:
        """Up to ``limit`` events of every stream with position ``> from_position``, in order."""

    @abc.abstractmethod
    async def save_snapshot(self, tx: StoreTx, snapshot: Snapshot) -> None:
        """Keep ``snapshot`` as the stream's latest (replacing an older one)."""

    @abc.abstractmethod
    async def load_snapshot(self, tx: StoreTx, stream: str) -> Snapshot | None:
        """The stream's latest snapshot, if any."""


def check_appends(appends: Sequence[StreamAppend]) -> None:
    """Refuse a stream named twice or a negative expected version.

    Raises:
        ConfigurationError: one of them.
    """
    seen: set[str] = set()
    for item in appends:
        if item.stream in seen:
            raise ConfigurationError(
                f"stream {item.stream!r} appears twice in one append: give its events in one "
                "StreamAppend"
            )
        if item.expected_version < 0:
            raise ConfigurationError(
                f"stream {item.stream!r}: expected_version must be >= 0, got "
                f"{item.expected_version}"
            )
        seen.add(item.stream)


def number_events(
    appends: Sequence[StreamAppend], after_position: int, recorded_at: float
) -> list[StoredEvent]:
    """The appended events as stored: global positions from ``after_position + 1``, and each
    stream's versions from its expected version + 1, in the order given."""
    stored: list[StoredEvent] = []
    position = after_position
    for item in appends:
        version = item.expected_version
        for new in item.events:
            position += 1
            version += 1
            stored.append(
                StoredEvent(
                    position=position,
                    stream=item.stream,
                    version=version,
                    event_id=new.event_id,
                    wire_name=new.wire_name,
                    wire_version=new.wire_version,
                    body=new.body,
                    recorded_at=recorded_at,
                    correlation_id=new.correlation_id,
                    causation_id=new.causation_id,
                )
            )
    return stored


def event_store(tx: StoreTx) -> EventStore:
    """The event store for a transaction of a memory, SQLite or PostgreSQL store.

    Raises:
        ConfigurationError: the transaction belongs to another kind of store.
    """
    found = _BY_DIALECT.get(tx.dialect)
    if found is not None:
        return found
    # Imported on first use: the implementations import this module.
    if tx.dialect == "memory":
        from framework.eventsourcing.memory import MEMORY_EVENT_STORE

        found = MEMORY_EVENT_STORE
    elif tx.dialect in ("sqlite", "postgresql"):
        from framework.eventsourcing.sql import SQL_EVENT_STORES

        found = SQL_EVENT_STORES[tx.dialect]
    else:
        raise ConfigurationError(
            f"{type(tx).__name__} has no event store: use a memory://, sqlite:// or "
            "postgresql:// store"
        )
    _BY_DIALECT[tx.dialect] = found
    return found


# The event stores hold no state of their own (it is all in the stores): one per dialect.
_BY_DIALECT: dict[str, EventStore] = {}


async def read_all(store: Store, *, from_position: int = 0, limit: int = 1000) -> list[StoredEvent]:
    """``EventStore.read_all`` in a transaction of its own (for readers outside handlers)."""
    async with store.transaction() as tx:
        return await event_store(tx).read_all(tx, from_position=from_position, limit=limit)


async def read_stream(store: Store, stream: str, *, from_version: int = 1) -> list[StoredEvent]:
    """``EventStore.read_stream`` in a transaction of its own (for readers outside handlers)."""
    async with store.transaction() as tx:
        return await event_store(tx).read_stream(tx, stream, from_version=from_version)
