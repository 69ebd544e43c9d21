"""The store port: saga instances, inbox, outbox and history, changed in one transaction.

Everything a handler's effect consists of is written in one ``StoreTx``: the inbox row that
marks the incoming message as processed, the saga state with its version check, a history row,
and the outgoing messages. Only after the transaction commits is the incoming message acked and
the outbox published. Three implementations pass one contract suite (``tests/store``):
``memory://`` (tests), ``sqlite:///path`` (the embedded default) and ``postgresql://...``.

Service tables: ``StoreTx.execute/fetchone/fetchall`` run SQL with ``?`` placeholders (the
PostgreSQL store rewrites them to ``$n``), so a service keeps its own tables in the same
transaction as its inbox and outbox rows. Their tables, like leveret's, are versioned steps
(``framework.store.migrations``) that ``Store.upgrade`` applies, as a deploy step
(``leveret db upgrade``); a worker only checks them with ``Store.pending_steps``.

The three stores also keep one secret for the sagas of every process that shares them
(``SecretKeeper``): the key of the ids and timeout tokens the saga runner derives
(``framework.saga.signing``) when the app configures none.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import msgspec

from framework.errors import ConfigurationError, LeveretError
from framework.urls import redact

if TYPE_CHECKING:
    from framework.store.migrations import Migrations, PendingStep

__all__ = [
    "ConcurrencyConflict",
    "HistoryRow",
    "OutboxRow",
    "SagaExists",
    "SagaRecord",
    "SagaStatus",
    "SecretKeeper",
    "Store",
    "StoreStats",
    "StoreTx",
    "StoreUnreachable",
    "store_from_url",
]

# How many steps leveret's own tables (the ``leveret`` component) have.
SCHEMA_VERSION = 2


class SagaStatus(enum.StrEnum):
    RUNNING = "running"
    COMPENSATING = "compensating"
    COMPLETED = "completed"
    COMPENSATED = "compensated"
    COMPENSATION_FAILED = "compensation_failed"
    # A step past the pivot exhausted its retries: the saga can neither finish nor compensate
    # on its own; an operator resumes or aborts it.
    FAILED = "failed"
    ABORTED = "aborted"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset(
    {
        SagaStatus.COMPLETED,
        SagaStatus.COMPENSATED,
        SagaStatus.COMPENSATION_FAILED,
        SagaStatus.FAILED,
        SagaStatus.ABORTED,
    }
)


class SagaRecord(msgspec.Struct, kw_only=True):
    """One persisted saga instance.

    ``state`` is the definition's state name; ``data`` the JSON of its state Struct; ``version``
    increments on every saved transition (optimistic concurrency).
    """

    saga_id: str
    saga: str
    correlation_id: str
    status: SagaStatus
    state: str
    data: bytes
    version: int
    created_at: float
    updated_at: float
    deadline_at: float | None = None
    reason: str | None = None


class OutboxRow(msgspec.Struct, kw_only=True):
    """A message to publish once its transaction has committed.

    ``position`` orders rows (assigned by the store); ``properties`` is the JSON of the
    OutgoingMessage minus its body. ``failed_at`` and ``error`` are set on a row that can never
    be published (``StoreTx.fail_outbox``), as ``Store.failed_outbox`` lists them.
    """

    message_id: str
    exchange: str
    routing_key: str
    body: bytes
    properties: bytes
    mandatory: bool = True
    destination: str = ""
    saga_id: str | None = None
    created_at: float = 0.0
    position: int = 0
    attempts: int = 0
    failed_at: float | None = None
    error: str | None = None


class HistoryRow(msgspec.Struct, kw_only=True):
    """One step of a saga's timeline: a message in, a transition, messages out."""

    saga_id: str
    version: int
    at: float
    message_id: str
    message_type: str
    from_state: str
    to_state: str
    status: SagaStatus
    emitted: list[str] = msgspec.field(default_factory=list)
    note: str | None = None


class StoreStats(msgspec.Struct, kw_only=True, frozen=True):
    """What the metrics sampler reads from a store (``leveret run --metrics-port``).

    Args:
        outbox_pending: outbox rows not yet published.
        oldest_pending_at: ``created_at`` of the oldest of them, None when there is none.
        inbox_rows: message ids recorded in the inbox (every consumer's).
        outbox_failed: outbox rows that can never be published (``StoreTx.fail_outbox``).
    """

    outbox_pending: int
    oldest_pending_at: float | None
    inbox_rows: int
    outbox_failed: int = 0


class SagaExists(LeveretError):
    """A saga with this id was inserted by someone else (two starts raced)."""


class ConcurrencyConflict(LeveretError):
    """The saga's version changed since it was loaded; retry in a fresh transaction."""


class StoreUnreachable(LeveretError):
    """The database server could not be reached in time. ``url`` has its password redacted."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach the store at {url}: {reason}")
        self.url = url
        self.reason = reason


class StoreTx(abc.ABC):
    """One database transaction. Commits when its ``async with`` block exits normally."""

    #: The SQL the transaction speaks (``"sqlite"``, ``"postgresql"``), or ``"memory"`` for none;
    #: ports built on the store (the event store) pick their statements by it.
    dialect: ClassVar[str] = ""

    @abc.abstractmethod
    async def inbox_add(self, consumer: str, message_id: str) -> bool:
        """Record ``message_id`` as processed by ``consumer``; False if it was already."""

    @abc.abstractmethod
    async def load(self, saga_id: str) -> SagaRecord | None:
        """The saga instance, read for update."""

    @abc.abstractmethod
    async def insert(self, record: SagaRecord) -> None:
        """Create a saga instance.

        Raises:
            SagaExists: an instance with this id exists already.
        """

    @abc.abstractmethod
    async def update(self, record: SagaRecord, *, expected_version: int) -> None:
        """Save a saga instance whose stored version must still be ``expected_version``.

        Raises:
            ConcurrencyConflict: the stored version differs.
        """

    @abc.abstractmethod
    async def add_history(self, row: HistoryRow) -> None:
        """Append a row to a saga's timeline."""

    @abc.abstractmethod
    async def add_outbox(self, rows: Sequence[OutboxRow]) -> None:
        """Queue messages for publication after commit (positions are assigned in order)."""

    @abc.abstractmethod
    async def fail_outbox(self, message_id: str, error: str, *, at: float) -> bool:
        """Take an unsent outbox row out of the pending ones for good: it can never be
        published (``NotEncodable``), so no sweep tries it again. It stays, with ``error`` and
        ``at``, for ``Store.failed_outbox`` and an operator.

        Returns False when the row is not pending (sent, failed already, or unknown).
        """

    async def inbox_add_and_load(
        self, consumer: str, message_id: str, saga_id: str
    ) -> tuple[bool, SagaRecord | None]:
        """``inbox_add`` then, for a new message, ``load``: a saga step's reads.

        Returns ``(False, None)`` for a duplicate. A store that can do both in one round trip
        (PostgreSQL) overrides it; the result is the same.
        """
        if not await self.inbox_add(consumer, message_id):
            return False, None
        return True, await self.load(saga_id)

    async def save_step(
        self,
        record: SagaRecord,
        *,
        expected_version: int | None,
        history: HistoryRow,
        outbox: Sequence[OutboxRow],
    ) -> None:
        """A saga step's writes: ``insert`` (``expected_version`` None) or ``update``, then
        ``add_history`` and ``add_outbox``.

        A store that can do all of them in one round trip (PostgreSQL) overrides it; the result
        is the same: on ``SagaExists`` or ``ConcurrencyConflict`` nothing of the step is written
        and the transaction goes on.

        Raises:
            SagaExists: inserting, and an instance with this id exists already.
            ConcurrencyConflict: updating, and the stored version differs.
        """
        if expected_version is None:
            await self.insert(record)
        else:
            await self.update(record, expected_version=expected_version)
        await self.add_history(history)
        await self.add_outbox(outbox)

    async def execute(self, sql: str, *args: Any) -> None:
        """Run a statement on a service table (``?`` placeholders)."""
        raise ConfigurationError(f"{type(self).__name__} has no SQL tables: use sqlite or postgres")

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run a statement on a service table once for each row of arguments (``?``
        placeholders), in one call: SQLite steps one prepared statement, PostgreSQL pipelines
        the rows in one round trip."""
        raise ConfigurationError(f"{type(self).__name__} has no SQL tables: use sqlite or postgres")

    async def fetchone(self, sql: str, *args: Any) -> tuple[Any, ...] | None:
        """First row of a query on a service table, or None."""
        raise ConfigurationError(f"{type(self).__name__} has no SQL tables: use sqlite or postgres")

    async def fetchall(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """All rows of a query on a service table."""
        raise ConfigurationError(f"{type(self).__name__} has no SQL tables: use sqlite or postgres")


class Store(abc.ABC):
    """The persistence port. Create with ``store_from_url``; ``upgrade()`` its schema before
    use."""

    url: str

    @abc.abstractmethod
    async def setup(self, ddl: Sequence[str] = ()) -> None:
        """``upgrade()`` leveret's tables, then run ``ddl``: for tests and scripts.

        ``ddl`` statements must be idempotent (``CREATE TABLE IF NOT EXISTS ...``); they run
        on every call, unversioned. An app's workers never call it: they check the schema
        (``pending_steps``) or, when told to, ``upgrade`` it.
        """

    @abc.abstractmethod
    async def upgrade(self, migrations: Sequence[Migrations] = ()) -> list[PendingStep]:
        """Apply the steps of leveret's tables and of ``migrations`` the database lacks, under
        a lock (two runners never race; each step runs once); returns those it applied.

        Reads the versions first: on a current schema it takes no lock and runs no DDL.

        Raises:
            ConfigurationError: leveret's tables are newer than this leveret.
            StoreUnreachable: the database server could not be reached.
        """

    @abc.abstractmethod
    async def pending_steps(self, migrations: Sequence[Migrations] = ()) -> list[PendingStep]:
        """The steps ``upgrade`` would apply; reads only (no lock, no DDL).

        Raises:
            ConfigurationError: leveret's tables are newer than this leveret.
            StoreUnreachable: the database server could not be reached.
        """

    @abc.abstractmethod
    def transaction(self) -> AbstractAsyncContextManager[StoreTx]:
        """A transaction: commits on normal exit, rolls back on an exception."""

    @abc.abstractmethod
    async def pending_outbox(self, limit: int = 500) -> list[OutboxRow]:
        """Unsent outbox rows, oldest first."""

    @abc.abstractmethod
    async def failed_outbox(
        self, limit: int = 100, *, saga_id: str | None = None
    ) -> list[OutboxRow]:
        """Outbox rows that can never be published (``StoreTx.fail_outbox``), newest first,
        with ``failed_at`` and ``error``; only one saga's with ``saga_id``."""

    @abc.abstractmethod
    async def stats(self) -> StoreStats:
        """Outbox depth, the oldest unsent row's age and the inbox size, read outside any
        transaction (a sampler calls it every few seconds, not per message)."""

    @abc.abstractmethod
    async def mark_sent(self, message_ids: Sequence[str]) -> None:
        """Mark outbox rows as published (a store keeps them for its outbox retention, for
        ``prune_outbox`` to delete later; with a retention of 0 they go at once)."""

    async def prune_inbox(self) -> int:
        """Delete inbox rows older than the store's inbox retention, if a prune is due.

        A prune is due at most once a minute, so callers (the outbox sweeper, every second)
        may call it often: one that is not due costs a clock reading. Returns how many rows
        went. A store without a retention (this default) deletes nothing.
        """
        return 0

    async def prune_outbox(self) -> int:
        """Delete sent outbox rows older than the store's outbox retention, if a prune is due.

        Like ``prune_inbox``: due at most once a minute, called by the outbox sweeper, off the
        publish path (``mark_sent`` only marks rows, or deletes them with a retention of 0).
        Pending rows stay, however old. Returns how many rows went. A store that keeps no sent
        rows (this default, the memory store) deletes nothing.
        """
        return 0

    @abc.abstractmethod
    async def get_saga(self, saga_id: str) -> SagaRecord | None:
        """One saga instance (no lock)."""

    @abc.abstractmethod
    async def list_sagas(
        self, *, status: SagaStatus | None = None, saga: str | None = None, limit: int = 1000
    ) -> list[SagaRecord]:
        """Saga instances, newest first, optionally filtered."""

    @abc.abstractmethod
    async def history(self, saga_id: str) -> list[HistoryRow]:
        """A saga's timeline, oldest first."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections."""


@runtime_checkable
class SecretKeeper(Protocol):
    """A store that keeps one secret for every process sharing it (the three stores do).

    Not part of ``Store``'s abstract methods, so that a wrapper delegating to another store
    (``__getattr__``) passes the inner store's method on instead of inheriting a default.
    """

    async def shared_secret(self, candidate: str) -> str:
        """The store's secret: ``candidate`` if the store had none yet (the first writer wins,
        in its own committed transaction), else the one kept. Never logged."""
        ...


def store_from_url(url: str) -> Store:
    """``memory://``, ``sqlite:///relative.db``, ``sqlite:////abs/path.db``, ``sqlite://:memory:``
    or ``postgresql://user@host/db``.

    Raises:
        ConfigurationError: an unsupported scheme, or the PostgreSQL extra is not installed.
    """
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme == "memory":
        from framework.store.memory import MemoryStore

        return MemoryStore()
    if scheme == "sqlite":
        from framework.store.sqlite import SqliteStore

        return SqliteStore(url)
    if scheme in ("postgres", "postgresql"):
        try:
            from framework.store.postgres import PostgresStore
        except ImportError as exc:  # asyncpg is the `postgres` extra
            raise ConfigurationError(
                "the PostgreSQL store needs asyncpg: pip install 'leveret[postgres]'"
            ) from exc
        return PostgresStore(url)
    raise ConfigurationError(
        f"unsupported store URL {redact(url)!r}: use memory://, sqlite:///file.db or "
        "postgresql://user:pass@host/db"
    )
