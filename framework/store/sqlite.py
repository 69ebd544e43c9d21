"""SQLite store: the embedded default.

One connection does everything, behind an ``asyncio.Lock``. Work that can block — opening the
file, ``BEGIN IMMEDIATE`` (which waits up to ``busy_timeout`` for another process's write lock),
``COMMIT`` (a WAL checkpoint may fsync) and reads outside a transaction — runs on the
connection's own thread. Statements inside a write transaction run directly on the event loop:
in WAL mode, once ``BEGIN IMMEDIATE`` holds the write lock they never wait for a lock, and they
take microseconds, far less than a hop to a thread and back.

**Group commit.** Transactions that queue up for the lock while one runs share its database
transaction: each runs in a savepoint of its own (an exception rolls back only its savepoint)
and, when it has released the savepoint, waits for the shared ``COMMIT``; ``async with
store.transaction()`` returns only once that commit is done, so nothing is acked or published
before its effects are durable. One commit (and one thread hop) then covers every transaction
that was waiting. Should the commit fail — or SQLite abandon the whole transaction after an error
— every transaction of the group raises. The read-only methods commit an open group first, so
they never see work that is not committed.

The file runs in WAL mode with ``synchronous=NORMAL``: a commit survives a crash of the process,
and a power loss may lose the last transactions but never corrupts the file. (Where WAL cannot
be enabled, statements of a transaction run on the connection's thread too.)
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, replace
from typing import Any, TypeVar
from urllib.parse import parse_qsl

from framework.errors import ConfigurationError, LeveretError
from framework.store import _retention, _sql
from framework.store.base import (
    SCHEMA_VERSION,
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
from framework.store.migrations import CORE, Migrations, PendingStep, Step, plan

__all__ = ["SqliteConfig", "SqliteStore"]

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS leveret_sagas ("
    " saga_id TEXT PRIMARY KEY, saga TEXT NOT NULL, correlation_id TEXT NOT NULL,"
    " status TEXT NOT NULL, state TEXT NOT NULL, data BLOB NOT NULL, version INTEGER NOT NULL,"
    " created_at REAL NOT NULL, updated_at REAL NOT NULL, deadline_at REAL, reason TEXT)",
    "CREATE INDEX IF NOT EXISTS leveret_sagas_status ON leveret_sagas (status, created_at)",
    "CREATE INDEX IF NOT EXISTS leveret_sagas_saga ON leveret_sagas (saga, created_at)",
    "CREATE INDEX IF NOT EXISTS leveret_sagas_created ON leveret_sagas (created_at)",
    "CREATE TABLE IF NOT EXISTS leveret_inbox ("
    " consumer TEXT NOT NULL, message_id TEXT NOT NULL, created_at REAL NOT NULL,"
    " PRIMARY KEY (consumer, message_id)) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS leveret_inbox_created ON leveret_inbox (created_at)",
    "CREATE TABLE IF NOT EXISTS leveret_outbox ("
    " position INTEGER PRIMARY KEY AUTOINCREMENT, message_id TEXT NOT NULL UNIQUE,"
    " exchange TEXT NOT NULL, routing_key TEXT NOT NULL, body BLOB NOT NULL,"
    " properties BLOB NOT NULL, mandatory INTEGER NOT NULL, destination TEXT NOT NULL,"
    " saga_id TEXT, created_at REAL NOT NULL, sent_at REAL, attempts INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS leveret_outbox_pending ON leveret_outbox (position)"
    " WHERE sent_at IS NULL",
    "CREATE INDEX IF NOT EXISTS leveret_outbox_sent ON leveret_outbox (sent_at)"
    " WHERE sent_at IS NOT NULL",
    "CREATE TABLE IF NOT EXISTS leveret_history ("
    " seq INTEGER PRIMARY KEY, saga_id TEXT NOT NULL, version INTEGER NOT NULL,"
    " at REAL NOT NULL, message_id TEXT NOT NULL, message_type TEXT NOT NULL,"
    " from_state TEXT NOT NULL, to_state TEXT NOT NULL, status TEXT NOT NULL,"
    " emitted TEXT NOT NULL, note TEXT)",
    "CREATE INDEX IF NOT EXISTS leveret_history_saga ON leveret_history (saga_id, seq)",
    "CREATE TABLE IF NOT EXISTS leveret_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    # The version table of leveret releases before leveret_schema, which refuse a newer value.
    "CREATE TABLE IF NOT EXISTS leveret_schema_version (version INTEGER NOT NULL)",
    "INSERT INTO leveret_schema_version (version)"
    " SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM leveret_schema_version)",
)
# Step 2: outbox rows that can never be published (``fail_outbox``) move here, with why; the
# outbox table and its pending reads stay as they were. Idempotent, as step 1 is: a database
# from before leveret_schema runs leveret's steps once more.
_FAILED_OUTBOX = (
    "CREATE TABLE IF NOT EXISTS leveret_outbox_failed ("
    " position INTEGER NOT NULL, message_id TEXT PRIMARY KEY, exchange TEXT NOT NULL,"
    " routing_key TEXT NOT NULL, body BLOB NOT NULL, properties BLOB NOT NULL,"
    " mandatory INTEGER NOT NULL, destination TEXT NOT NULL, saga_id TEXT,"
    " created_at REAL NOT NULL, attempts INTEGER NOT NULL, failed_at REAL NOT NULL,"
    " error TEXT NOT NULL)",
    "UPDATE leveret_schema_version SET version = 2",
)
# leveret's own tables, step by step; a later step also sets leveret_schema_version to its number.
CORE_MIGRATIONS = Migrations(CORE, (Step(sqlite=_SCHEMA), Step(sqlite=_FAILED_OUTBOX)))
assert len(CORE_MIGRATIONS.steps) == SCHEMA_VERSION
_VERSION_TABLE = (
    "CREATE TABLE IF NOT EXISTS leveret_schema ("
    " component TEXT PRIMARY KEY, version INTEGER NOT NULL, upgraded_at REAL NOT NULL)"
)
_VERSION_SET = (
    "INSERT INTO leveret_schema (component, version, upgraded_at) VALUES (?, ?, ?)"
    " ON CONFLICT (component) DO UPDATE SET version = excluded.version,"
    " upgraded_at = excluded.upgraded_at"
)
_VERSION_TABLES = (
    "SELECT name FROM sqlite_master WHERE type = 'table'"
    " AND name IN ('leveret_schema', 'leveret_schema_version')"
)

_INBOX_ADD = (
    "INSERT INTO leveret_inbox (consumer, message_id, created_at) VALUES (?, ?, ?)"
    " ON CONFLICT DO NOTHING"
)
_LOAD = f"SELECT {_sql.SAGA_COLUMNS} FROM leveret_sagas WHERE saga_id = ?"
_INSERT = (
    f"INSERT INTO leveret_sagas ({_sql.SAGA_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (saga_id) DO NOTHING"
)
_UPDATE = (
    "UPDATE leveret_sagas SET saga = ?, correlation_id = ?, status = ?, state = ?, data = ?,"
    " version = ?, created_at = ?, updated_at = ?, deadline_at = ?, reason = ?"
    " WHERE saga_id = ? AND version = ?"
)
_HISTORY_ADD = (
    f"INSERT INTO leveret_history ({_sql.HISTORY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# A message id queued twice is the same message (ids are deterministic): the first row stays.
_OUTBOX_ADD = (
    f"INSERT INTO leveret_outbox ({_sql.OUTBOX_COLUMNS}, sent_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL) ON CONFLICT (message_id) DO NOTHING"
)
_PENDING = (
    f"SELECT position, {_sql.OUTBOX_COLUMNS} FROM leveret_outbox"
    " WHERE sent_at IS NULL ORDER BY position LIMIT ?"
)
_FAIL_KEEP = (
    f"INSERT INTO leveret_outbox_failed (position, {_sql.OUTBOX_COLUMNS}, failed_at, error)"
    f" SELECT position, {_sql.OUTBOX_COLUMNS}, ?, ? FROM leveret_outbox"
    " WHERE message_id = ? AND sent_at IS NULL ON CONFLICT (message_id) DO NOTHING"
)
_FAIL_DROP = "DELETE FROM leveret_outbox WHERE message_id = ? AND sent_at IS NULL"
_FAILED = (
    f"SELECT position, {_sql.OUTBOX_COLUMNS}, failed_at, error FROM leveret_outbox_failed"
    " WHERE ? IS NULL OR saga_id = ? ORDER BY failed_at DESC, position DESC LIMIT ?"
)
_STATS = (
    "SELECT (SELECT count(*) FROM leveret_outbox WHERE sent_at IS NULL),"
    " (SELECT min(created_at) FROM leveret_outbox WHERE sent_at IS NULL),"
    " (SELECT count(*) FROM leveret_inbox),"
    " (SELECT count(*) FROM leveret_outbox_failed)"
)
_MARK_SENT = "UPDATE leveret_outbox SET sent_at = ? WHERE message_id = ? AND sent_at IS NULL"
_DELETE_SENT = "DELETE FROM leveret_outbox WHERE message_id = ?"
# One chunk of a prune: a bounded delete, so one prune never holds the write lock long.
_PRUNE_INBOX = (
    "DELETE FROM leveret_inbox WHERE (consumer, message_id) IN"
    " (SELECT consumer, message_id FROM leveret_inbox WHERE created_at < ? LIMIT ?)"
)
# Through the partial index on sent_at (``sent_at < ?`` implies ``sent_at IS NOT NULL``).
_PRUNE_OUTBOX = (
    "DELETE FROM leveret_outbox WHERE position IN"
    " (SELECT position FROM leveret_outbox WHERE sent_at < ? LIMIT ?)"
)
_HISTORY = f"SELECT {_sql.HISTORY_COLUMNS} FROM leveret_history WHERE saga_id = ? ORDER BY seq"
_META_ADD = "INSERT INTO leveret_meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING"
_META = "SELECT value FROM leveret_meta WHERE name = ?"


@dataclass(frozen=True, slots=True)
class SqliteConfig:
    """Settings of the SQLite store; each can also be given as a URL query parameter.

    Args:
        busy_timeout: seconds to wait for another process's write lock on the same file.
        outbox_retention: seconds a sent outbox row is kept; 0 deletes it when marked sent.
        inbox_retention: seconds an inbox row (a processed message id) is kept, so a duplicate
            is recognised; None keeps them forever. Default 7 days.

    Raises:
        ConfigurationError: ``inbox_retention`` is 0, negative or not finite.
    """

    busy_timeout: float = 5.0
    outbox_retention: float = 3600.0
    inbox_retention: float | None = _retention.INBOX_RETENTION

    def __post_init__(self) -> None:
        _retention.check_inbox_retention(self.inbox_retention, "SqliteConfig")


_T = TypeVar("_T")


class _Connection:
    """A ``sqlite3`` connection and the one thread that does its blocking work.

    ``execute``, ``execute_fetchall`` and ``executemany`` run on that thread; the ``tx_``
    variants are for statements inside a write transaction and run directly on the event loop
    when ``inline`` (WAL mode, or an in-memory database), where they never wait for a lock.
    """

    def __init__(self, raw: sqlite3.Connection, executor: ThreadPoolExecutor, inline: bool):
        self.raw = raw
        self.inline = inline
        self._executor = executor

    @classmethod
    async def open(cls, path: str, busy_timeout: float) -> _Connection:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="leveret-sqlite")
        loop = asyncio.get_running_loop()
        # isolation_level=None: no implicit BEGIN; the store issues BEGIN IMMEDIATE itself.
        # check_same_thread=False: the store's lock, not the thread, keeps one user at a time.
        connect = functools.partial(
            sqlite3.connect,
            path,
            isolation_level=None,
            timeout=busy_timeout,
            check_same_thread=False,
        )
        try:
            raw = await loop.run_in_executor(executor, connect)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(raw, executor, inline=False)

    async def _run(self, fn: Callable[..., _T], *args: Any) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        return await self._run(self.raw.execute, sql, params)

    async def execute_fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return await self._run(_fetchall, self.raw, sql, params)

    async def executemany(self, sql: str, params: Iterable[Sequence[Any]]) -> None:
        await self._run(self.raw.executemany, sql, params)

    async def tx_execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        if self.inline:
            return self.raw.execute(sql, params)
        return await self.execute(sql, params)

    async def tx_fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        if self.inline:
            return self.raw.execute(sql, params).fetchall()
        return await self.execute_fetchall(sql, params)

    async def tx_fetchone(self, sql: str, params: Sequence[Any] = ()) -> Any:
        if self.inline:
            return self.raw.execute(sql, params).fetchone()
        return await self._run(_fetchone, self.raw, sql, params)

    async def tx_executemany(self, sql: str, params: Iterable[Sequence[Any]]) -> None:
        if self.inline:
            self.raw.executemany(sql, params)
        else:
            await self.executemany(sql, params)

    async def close(self) -> None:
        try:
            await self._run(self.raw.close)
        finally:
            self._executor.shutdown(wait=False)


def _fetchall(raw: sqlite3.Connection, sql: str, params: Sequence[Any]) -> list[Any]:
    return raw.execute(sql, params).fetchall()


def _fetchone(raw: sqlite3.Connection, sql: str, params: Sequence[Any]) -> Any:
    return raw.execute(sql, params).fetchone()


class _Group:
    """Transactions sharing one SQLite transaction; ``done`` resolves when it has committed."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def fail(self, exc: BaseException) -> None:
        if not self.done.done():
            self.done.set_exception(exc)
            self.done.exception()  # retrieved: a group nobody waits for logs nothing


def _settle(group: _Group, commit: asyncio.Future[Any]) -> None:
    if commit.cancelled():
        group.fail(LeveretError("the commit was cancelled; its outcome is unknown"))
    elif commit.exception() is not None:
        group.fail(commit.exception())  # type: ignore[arg-type]
    elif not group.done.done():
        group.done.set_result(None)


class _SqliteTx(StoreTx):
    dialect = "sqlite"

    def __init__(self, conn: _Connection, clock: Callable[[], float]) -> None:
        self._conn = conn
        self._clock = clock

    async def inbox_add(self, consumer: str, message_id: str) -> bool:
        cursor = await self._conn.tx_execute(_INBOX_ADD, (consumer, message_id, self._clock()))
        return cursor.rowcount == 1

    async def load(self, saga_id: str) -> SagaRecord | None:
        # The transaction holds SQLite's write lock already (BEGIN IMMEDIATE): no one else can
        # change the row before we commit.
        row = await self._conn.tx_fetchone(_LOAD, (saga_id,))
        return _sql.saga_from_row(row) if row is not None else None

    async def insert(self, record: SagaRecord) -> None:
        cursor = await self._conn.tx_execute(_INSERT, _sql.saga_params(record))
        if cursor.rowcount != 1:
            raise SagaExists(record.saga_id)

    async def update(self, record: SagaRecord, *, expected_version: int) -> None:
        values = _sql.saga_params(record)
        cursor = await self._conn.tx_execute(
            _UPDATE, (*values[1:], record.saga_id, expected_version)
        )
        if cursor.rowcount != 1:
            raise ConcurrencyConflict(record.saga_id)

    async def add_history(self, row: HistoryRow) -> None:
        await self._conn.tx_execute(_HISTORY_ADD, _sql.history_params(row))

    async def add_outbox(self, rows: Sequence[OutboxRow]) -> None:
        if rows:
            await self._conn.tx_executemany(_OUTBOX_ADD, [_sql.outbox_params(row) for row in rows])

    async def fail_outbox(self, message_id: str, error: str, *, at: float) -> bool:
        await self._conn.tx_execute(_FAIL_KEEP, (at, error, message_id))
        cursor = await self._conn.tx_execute(_FAIL_DROP, (message_id,))
        return cursor.rowcount == 1

    async def execute(self, sql: str, *args: Any) -> None:
        await self._conn.tx_execute(sql, args)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            await self._conn.tx_executemany(sql, rows)

    async def fetchone(self, sql: str, *args: Any) -> tuple[Any, ...] | None:
        row = await self._conn.tx_fetchone(sql, args)
        return tuple(row) if row is not None else None

    async def fetchall(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in await self._conn.tx_fetchall(sql, args)]


class SqliteStore(Store):
    """The store in one SQLite file (or in memory).

    Args:
        url: ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db`` or
            ``sqlite://:memory:``; query parameters ``busy_timeout``, ``outbox_retention`` and
            ``inbox_retention`` (seconds; ``none``: forever) override ``config``.
        config: settings; defaults to ``SqliteConfig()``.
        clock: the time source for inbox and ``sent_at`` timestamps, and for their retention.

    Raises:
        ConfigurationError: the URL is not one of these forms, or an option is invalid.
    """

    def __init__(
        self,
        url: str,
        *,
        config: SqliteConfig | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = url
        self.path, self.config = _parse_url(url, config or SqliteConfig())
        self._clock = clock
        self._outbox_pruner = _retention.Pruner(self.config.outbox_retention, clock)
        self._inbox_pruner = _retention.Pruner(self.config.inbox_retention, clock)
        self._lock = asyncio.Lock()
        self._conn: _Connection | None = None
        # The open commit group, if any, and the tasks that commit groups.
        self._group: _Group | None = None
        self._committers: set[asyncio.Task[None]] = set()
        # The task inside a transaction: a store call from it would wait for itself forever.
        self._owner: asyncio.Task[Any] | None = None

    def __repr__(self) -> str:
        return f"SqliteStore({self.url!r})"

    async def setup(self, ddl: Sequence[str] = ()) -> None:
        await self.upgrade()
        if not ddl:
            return
        async with self._locked("setup") as conn:
            await conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in ddl:
                    await conn.execute(statement)
                await conn.execute("COMMIT")
            except BaseException:
                await _rollback(conn)
                raise

    async def pending_steps(self, migrations: Sequence[Migrations] = ()) -> list[PendingStep]:
        async with self._locked("pending_steps") as conn:
            found = await _versions(conn)
        return plan(found, (CORE_MIGRATIONS, *migrations), "sqlite", self.url)

    async def upgrade(self, migrations: Sequence[Migrations] = ()) -> list[PendingStep]:
        if not await self.pending_steps(migrations):
            return []
        # BEGIN IMMEDIATE: the write lock, so a second runner waits and then finds it done.
        async with self._locked("upgrade") as conn:
            await conn.execute("BEGIN IMMEDIATE")
            try:
                found = await _versions(conn)
                steps = plan(found, (CORE_MIGRATIONS, *migrations), "sqlite", self.url)
                await conn.execute(_VERSION_TABLE)
                for step in steps:
                    for statement in step.statements:
                        await conn.execute(statement)
                    await conn.execute(_VERSION_SET, (step.component, step.version, self._clock()))
                await conn.execute("COMMIT")
            except BaseException:
                await _rollback(conn)
                raise
        return steps

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[StoreTx]:
        async with self._participate("transaction") as conn:
            yield _SqliteTx(conn, self._clock)

    @asynccontextmanager
    async def _participate(self, operation: str) -> AsyncIterator[_Connection]:
        """A savepoint in the open commit group (or a new one); returns after the commit."""
        async with self._locked(operation, flush=False) as conn:
            group = self._group
            if group is None:
                group = await self._begin(conn)
            await conn.tx_execute("SAVEPOINT leveret_tx")
            self._owner = asyncio.current_task()
            try:
                yield conn
                await conn.tx_execute("RELEASE leveret_tx")
            except BaseException as exc:
                await self._undo(conn, group, exc)
                raise
            finally:
                self._owner = None
        # Shielded: a cancelled caller must not cancel the commit the others wait for.
        await asyncio.shield(group.done)

    async def _begin(self, conn: _Connection) -> _Group:
        if conn.raw.in_transaction:  # left by a COMMIT that failed while its task was cancelled
            await _rollback(conn)
        try:
            await conn.execute("BEGIN IMMEDIATE")
        except BaseException:
            # Cancelled while BEGIN waits for another process's lock, the BEGIN still runs in
            # aiosqlite's thread: the ROLLBACK queued behind it ends it. Without it the
            # connection stayed in that transaction — the next BEGIN failed and the file stayed
            # locked for every process (found by the fault suite).
            await _rollback(conn)
            raise
        group = self._group = _Group()
        # Queued for the lock behind every transaction waiting now: they all join this group.
        committer = asyncio.create_task(self._commit_in_turn(group), name="leveret-sqlite-commit")
        self._committers.add(committer)
        committer.add_done_callback(self._committers.discard)
        return group

    async def _commit_in_turn(self, group: _Group) -> None:
        async with self._lock:
            if self._group is group and self._conn is not None:
                await self._commit(self._conn, group)

    async def _commit(self, conn: _Connection, group: _Group) -> None:
        """Commit the group (the caller holds the lock); its members learn the outcome.

        The members learn it from the COMMIT itself, even when the task committing is
        cancelled while the COMMIT runs on the connection's thread.
        """
        self._group = None
        commit = asyncio.ensure_future(conn.execute("COMMIT"))
        commit.add_done_callback(functools.partial(_settle, group))
        try:
            await asyncio.shield(commit)
        except Exception:
            await _rollback(conn)

    async def _undo(self, conn: _Connection, group: _Group, exc: BaseException) -> None:
        """Roll back one member's savepoint; if SQLite ended the whole transaction, fail all."""
        with suppress(sqlite3.Error):
            await conn.tx_execute("ROLLBACK TO leveret_tx")
            await conn.tx_execute("RELEASE leveret_tx")
        if not conn.raw.in_transaction and self._group is group:
            self._group = None
            group.fail(
                LeveretError(
                    "SQLite rolled back the whole transaction after an error in one of its "
                    f"group ({type(exc).__name__}: {exc}); nothing of it was committed"
                )
            )

    async def shared_secret(self, candidate: str) -> str:
        """The file's saga secret (``leveret_meta``): ``candidate`` if it had none yet."""
        async with self._participate("shared_secret") as conn:
            await conn.tx_execute(_META_ADD, (_sql.SECRET, candidate))
            row = await conn.tx_fetchone(_META, (_sql.SECRET,))
        return str(row[0])

    async def pending_outbox(self, limit: int = 500) -> list[OutboxRow]:
        async with self._locked("pending_outbox") as conn:
            rows = await conn.execute_fetchall(_PENDING, (limit,))
        return [_sql.outbox_from_row(row) for row in rows]

    async def stats(self) -> StoreStats:
        async with self._locked("stats") as conn:
            rows = list(await conn.execute_fetchall(_STATS))
        pending, oldest, inbox, failed = rows[0]
        return StoreStats(
            outbox_pending=pending, oldest_pending_at=oldest, inbox_rows=inbox, outbox_failed=failed
        )

    async def failed_outbox(
        self, limit: int = 100, *, saga_id: str | None = None
    ) -> list[OutboxRow]:
        async with self._locked("failed_outbox") as conn:
            rows = await conn.execute_fetchall(_FAILED, (saga_id, saga_id, limit))
        return [_sql.failed_from_row(row) for row in rows]

    async def mark_sent(self, message_ids: Sequence[str]) -> None:
        if not message_ids:
            return
        async with self._participate("mark_sent") as conn:
            if self.config.outbox_retention <= 0:
                await conn.tx_executemany(
                    _DELETE_SENT, [(message_id,) for message_id in message_ids]
                )
            else:
                now = self._clock()
                await conn.tx_executemany(
                    _MARK_SENT, [(now, message_id) for message_id in message_ids]
                )

    async def prune_inbox(self, *, chunk: int = _retention.PRUNE_CHUNK) -> int:
        """Delete inbox rows older than ``inbox_retention``, if due (at most once a minute).

        Rows go ``chunk`` at a time, each chunk a transaction of the commit group: other
        transactions take the write lock between chunks. Returns how many rows went.

        Raises:
            ConfigurationError: ``chunk`` is not an int >= 1.
        """
        return await self._prune("prune_inbox", _PRUNE_INBOX, self._inbox_pruner, chunk)

    async def prune_outbox(self, *, chunk: int = _retention.PRUNE_CHUNK) -> int:
        """Delete sent outbox rows older than ``outbox_retention``, if due (at most once a
        minute); pending rows stay, however old.

        Rows go ``chunk`` at a time, each chunk a transaction of the commit group: other
        transactions take the write lock between chunks. Returns how many rows went.

        Raises:
            ConfigurationError: ``chunk`` is not an int >= 1.
        """
        return await self._prune("prune_outbox", _PRUNE_OUTBOX, self._outbox_pruner, chunk)

    async def _prune(self, operation: str, sql: str, pruner: _retention.Pruner, chunk: int) -> int:
        _retention.check_chunk(chunk)
        cutoff = pruner.cutoff(pruner.now())
        if cutoff is None:
            return 0
        deleted = 0
        while True:
            async with self._participate(operation) as conn:
                cursor = await conn.tx_execute(sql, (cutoff, chunk))
                count = cursor.rowcount
            deleted += count
            if count < chunk:
                return deleted

    async def get_saga(self, saga_id: str) -> SagaRecord | None:
        async with self._locked("get_saga") as conn:
            rows = list(await conn.execute_fetchall(_LOAD, (saga_id,)))
        return _sql.saga_from_row(rows[0]) if rows else None

    async def list_sagas(
        self, *, status: SagaStatus | None = None, saga: str | None = None, limit: int = 1000
    ) -> list[SagaRecord]:
        where: list[str] = []
        args: list[Any] = []
        if status is not None:
            where.append("status = ?")
            args.append(status.value)
        if saga is not None:
            where.append("saga = ?")
            args.append(saga)
        sql = f"SELECT {_sql.SAGA_COLUMNS} FROM leveret_sagas"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC LIMIT ?"
        async with self._locked("list_sagas") as conn:
            rows = await conn.execute_fetchall(sql, (*args, limit))
        return [_sql.saga_from_row(row) for row in rows]

    async def history(self, saga_id: str) -> list[HistoryRow]:
        async with self._locked("history") as conn:
            rows = await conn.execute_fetchall(_HISTORY, (saga_id,))
        return [_sql.history_from_row(row) for row in rows]

    async def close(self) -> None:
        async with self._locked("close"):
            if self._conn is not None:
                conn, self._conn = self._conn, None
                await conn.close()

    @asynccontextmanager
    async def _locked(self, operation: str, *, flush: bool = True) -> AsyncIterator[_Connection]:
        """The connection, for this task alone (opened on first use).

        With ``flush``, an open commit group is committed first: what the caller reads or
        writes outside a transaction never depends on work that might still roll back.
        """
        if self._owner is not None and self._owner is asyncio.current_task():
            raise LeveretError(
                f"SqliteStore.{operation}() was called inside a transaction of the same task, "
                "which would wait for itself: use the transaction's methods, or call it after "
                "the `async with` block"
            )
        async with self._lock:
            if self._conn is None:
                self._conn = await self._connect()
            if flush and self._group is not None:
                await self._commit(self._conn, self._group)
            yield self._conn

    async def _connect(self) -> _Connection:
        try:
            conn = await _Connection.open(self.path, self.config.busy_timeout)
        except sqlite3.Error as exc:
            raise ConfigurationError(f"cannot open the SQLite store {self.url!r}: {exc}") from exc
        try:
            if self.path == ":memory:":
                conn.inline = True  # one connection, nobody else to wait for
            else:
                conn.inline = await self._enable_wal(conn) == "wal"
            await conn.execute("PRAGMA synchronous=NORMAL")
        except BaseException:
            await conn.close()
            raise
        return conn

    async def _enable_wal(self, conn: _Connection) -> str:
        """Switch the file to WAL mode; returns the journal mode it is in now."""
        # Switching a new file to WAL needs an exclusive lock and SQLite answers SQLITE_BUSY at
        # once, without its busy handler, while another connection holds any lock: retry, up to
        # busy_timeout. Once the file is in WAL mode (it stays so), the pragma does not lock.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.busy_timeout
        pause = 0.005
        while True:
            try:
                rows = await conn.execute_fetchall("PRAGMA journal_mode=WAL")
                return str(rows[0][0]).lower() if rows else ""
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or loop.time() >= deadline:
                    raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.1)


async def _rollback(conn: _Connection) -> None:
    # SQLite rolls back by itself after some errors (SQLITE_FULL, an interrupt); then there is
    # no transaction left to end.
    with suppress(sqlite3.OperationalError):
        await conn.execute("ROLLBACK")


def _parse_url(url: str, config: SqliteConfig) -> tuple[str, SqliteConfig]:
    """The database path and the settings in ``url``."""
    forms = "sqlite:///relative/path.db, sqlite:////absolute/path.db or sqlite://:memory:"
    scheme, sep, rest = url.partition("://")
    if scheme.lower() != "sqlite" or not sep:
        raise ConfigurationError(f"not a SQLite store URL: {url!r}; use {forms}")
    location, _, query_string = rest.partition("?")
    if location in (":memory:", "/:memory:"):
        path = ":memory:"
    elif location.startswith("/") and len(location) > 1:
        path = location[1:]
    else:
        raise ConfigurationError(f"SQLite store URL {url!r} names no file; use {forms}")
    query = dict(parse_qsl(query_string, keep_blank_values=True))
    unknown = sorted(set(query) - {"busy_timeout", "inbox_retention", "outbox_retention"})
    if unknown:
        raise ConfigurationError(
            f"SQLite store URL {url!r}: unknown option(s) {', '.join(unknown)}; "
            "known: busy_timeout, inbox_retention, outbox_retention"
        )
    busy = _sql.query_option(query, "busy_timeout", float, minimum=0.0, where=repr(url))
    retention = _sql.query_option(query, "outbox_retention", float, minimum=0.0, where=repr(url))
    if busy is not None:
        config = replace(config, busy_timeout=busy)
    if retention is not None:
        config = replace(config, outbox_retention=retention)
    inbox = _retention.inbox_retention_option(query, config.inbox_retention, where=repr(url))
    return path, replace(config, inbox_retention=inbox)


async def _versions(conn: _Connection) -> dict[str, int]:
    """Each component's version; leveret's own from ``leveret_schema_version`` too (a database
    from before ``leveret_schema``)."""
    tables = {row[0] for row in await conn.execute_fetchall(_VERSION_TABLES)}
    found: dict[str, int] = {}
    if "leveret_schema" in tables:
        rows = await conn.execute_fetchall("SELECT component, version FROM leveret_schema")
        found = {str(row[0]): int(row[1]) for row in rows}
    if "leveret_schema_version" in tables:
        rows = list(await conn.execute_fetchall("SELECT max(version) FROM leveret_schema_version"))
        # Only to refuse a newer one: a database from before leveret_schema may lack what
        # later releases added to step 1 (indexes), so step 1 runs on it once more.
        if rows[0][0] is not None and int(rows[0][0]) > SCHEMA_VERSION:
            found[CORE] = int(rows[0][0])
    return found
