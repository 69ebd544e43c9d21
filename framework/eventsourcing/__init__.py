"""Event sourcing: an event store port (memory, SQLite, PostgreSQL) and aggregates on top of it.

Events are appended in the handler's store transaction, next to its inbox and outbox rows, and
released through the outbox as the events they are. See docs/event-sourcing.md.
"""

from framework.eventsourcing.aggregate import Aggregate, EventDecoder, applies, save
from framework.eventsourcing.store import (
    EVENT_STORE_SCHEMA,
    EventStore,
    EventStoreError,
    NewEvent,
    Snapshot,
    StoredEvent,
    StreamAppend,
    StreamConflict,
    event_store,
    read_all,
    read_stream,
)

__all__ = [
    "EVENT_STORE_SCHEMA",
    "Aggregate",
    "EventDecoder",
    "EventStore",
    "EventStoreError",
    "NewEvent",
    "Snapshot",
    "StoredEvent",
    "StreamAppend",
    "StreamConflict",
    "applies",
    "event_store",
    "read_all",
    "read_stream",
    "save",
]
