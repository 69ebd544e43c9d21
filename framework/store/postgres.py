"""PostgreSQL store on asyncpg: the store for services that run more than one process.

Transactions run concurrently, each on its own pooled connection, at READ COMMITTED: ``load``
locks the saga row (``SELECT ... FOR UPDATE``), so two transitions of one saga queue up instead
of failing; ``update`` still checks the version. Inserts of an existing saga, inbox row or outbox
message id use ``ON CONFLICT DO NOTHING``, so the transaction stays usable after ``SagaExists``
or a duplicate inbox row. ``?schema=name`` puts every table (leveret's and the service's) in
that schema, through each connection's ``search_path``; the schema is created when missing.

Every statement is a network round trip, so a saga step's reads (inbox row, saga row locked)
and its writes (saga row, history row, outbox rows) are one statement each
(``inbox_add_and_load``, ``save_step``: data-modifying CTEs), 4 round trips with ``BEGIN`` and
``COMMIT`` instead of 7.
"""

from __future__ import annotations

import asyncio
import functools
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeAlias
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from framework.errors import ConfigurationError
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
    StoreUnreachable,
)
from framework.store.migrations import CORE, Migrations, PendingStep, Step, plan
from framework.urls import check_userinfo, redact, url_passwords

__all__ = ["PostgresConfig", "PostgresStore", "positional_params"]

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

# Subscripted for the type checker only: asyncpg's classes are not generic at run time.
_Conn: TypeAlias = "PoolConnectionProxy[asyncpg.Record]"

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS leveret_sagas ("
    " saga_id TEXT PRIMARY KEY, saga TEXT NOT NULL, correlation_id TEXT NOT NULL,"
    " status TEXT NOT NULL, state TEXT NOT NULL, data BYTEA NOT NULL, version BIGINT NOT NULL,"
    " created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL,"
    " deadline_at DOUBLE PRECISION, reason TEXT)",
    "CREATE INDEX IF NOT EXISTS leveret_sagas_status ON leveret_sagas (status, created_at)",
    "CREATE INDEX IF NOT EXISTS leveret_sagas_saga ON leveret_sagas (saga, created_at)",
    "CREATE INDEX IF NOT EXISTS leveret_sagas_created ON leveret_sagas (created_at)",
    "CREATE TABLE IF NOT EXISTS leveret_inbox ("
    " consumer TEXT NOT NULL, message_id TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL,"
    " PRIMARY KEY (consumer, message_id))",
    "CREATE INDEX IF NOT EXISTS leveret_inbox_created ON leveret_inbox (created_at)",
    "CREATE TABLE IF NOT EXISTS leveret_outbox ("
    " position BIGSERIAL PRIMARY KEY, message_id TEXT NOT NULL UNIQUE, exchange TEXT NOT NULL,"
    " routing_key TEXT NOT NULL, body BYTEA NOT NULL, properties BYTEA NOT NULL,"
    " mandatory BOOLEAN NOT NULL, destination TEXT NOT NULL, saga_id TEXT,"
    " created_at DOUBLE PRECISION NOT NULL, sent_at DOUBLE PRECISION,"
    " attempts INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS leveret_outbox_pending ON leveret_outbox (position)"
    " WHERE sent_at IS NULL",
    "CREATE INDEX IF NOT EXISTS leveret_outbox_sent ON leveret_outbox (sent_at)"
    " WHERE sent_at IS NOT NULL",
    "CREATE TABLE IF NOT EXISTS leveret_history ("
    " seq BIGSERIAL PRIMARY KEY, saga_id TEXT NOT NULL, version BIGINT NOT NULL,"
    " at DOUBLE PRECISION NOT NULL, message_id TEXT NOT NULL, message_type TEXT NOT NULL,"
    " from_state TEXT NOT NULL, to_state TEXT NOT NULL, status TEXT NOT NULL,"
    " emitted JSONB NOT NULL, note TEXT)",
    "CREATE INDEX IF NOT EXISTS leveret_history_saga ON leveret_history (saga_id, seq)",
    "CREATE TABLE IF NOT EXISTS leveret_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    # The version table of leveret releases before leveret_schema, which refuse a newer value.
    "CREATE TABLE IF NOT EXISTS leveret_schema_version (version INTEGER NOT NULL)",
    "INSERT INTO leveret_schema_version (version)"
    " SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM leveret_schema_version)",
)
# Step 2: outbox rows that can never be published (``fail_outbox``) move here, with why; the
# outbox table and its pending reads stay as they were. Idempotent, as step 1 is.
_FAILED_OUTBOX = (
    "CREATE TABLE IF NOT EXISTS leveret_outbox_failed ("
    " position BIGINT NOT NULL, message_id TEXT PRIMARY KEY, exchange TEXT NOT NULL,"
    " routing_key TEXT NOT NULL, body BYTEA NOT NULL, properties BYTEA NOT NULL,"
    " mandatory BOOLEAN NOT NULL, destination TEXT NOT NULL, saga_id TEXT,"
    " created_at DOUBLE PRECISION NOT NULL, attempts INTEGER NOT NULL,"
    " failed_at DOUBLE PRECISION NOT NULL, error TEXT NOT NULL)",
    "UPDATE leveret_schema_version SET version = 2",
)
# leveret's own tables, step by step; a later step also sets leveret_schema_version to its number.
CORE_MIGRATIONS = Migrations(CORE, (Step(postgresql=_SCHEMA), Step(postgresql=_FAILED_OUTBOX)))
assert len(CORE_MIGRATIONS.steps) == SCHEMA_VERSION
# Serializes upgrades (and setup()'s DDL): two runners never race, each step runs once.
_SETUP_LOCK_KEY = 0x6C65766572657401
_VERSION_TABLE = (
    "CREATE TABLE IF NOT EXISTS leveret_schema ("
    " component TEXT PRIMARY KEY, version INTEGER NOT NULL,"
    " upgraded_at DOUBLE PRECISION NOT NULL)"
)
_VERSION_SET = (
    "INSERT INTO leveret_schema (component, version, upgraded_at) VALUES ($1, $2, $3)"
    " ON CONFLICT (component) DO UPDATE SET version = excluded.version,"
    " upgraded_at = excluded.upgraded_at"
)
# Both version tables as the search_path finds them (NULL when missing): a read, never DDL.
_VERSION_TABLES = (
    "SELECT to_regclass('leveret_schema') IS NOT NULL,"
    " to_regclass('leveret_schema_version') IS NOT NULL"
)

_INBOX_ADD = (
    "INSERT INTO leveret_inbox (consumer, message_id, created_at) VALUES ($1, $2, $3)"
    " ON CONFLICT DO NOTHING"
)
_LOAD = f"SELECT {_sql.SAGA_COLUMNS} FROM leveret_sagas WHERE saga_id = $1"
_LOAD_FOR_UPDATE = _LOAD + " FOR UPDATE"
_INSERT = (
    f"INSERT INTO leveret_sagas ({_sql.SAGA_COLUMNS})"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (saga_id) DO NOTHING"
)
_UPDATE = (
    "UPDATE leveret_sagas SET saga = $2, correlation_id = $3, status = $4, state = $5,"
    " data = $6, version = $7, created_at = $8, updated_at = $9, deadline_at = $10,"
    " reason = $11 WHERE saga_id = $1 AND version = $12"
)
_HISTORY_ADD = (
    f"INSERT INTO leveret_history ({_sql.HISTORY_COLUMNS})"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
)
# A message id queued twice is the same message (ids are deterministic): the first row stays.
_OUTBOX_ADD = (
    f"INSERT INTO leveret_outbox ({_sql.OUTBOX_COLUMNS})"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (message_id) DO NOTHING"
)
# A saga step's reads in one round trip: the inbox row, and the saga row locked for update.
# ``fresh`` is 0 for a duplicate (its saga row, locked anyway, is not used).
_INBOX_ADD_AND_LOAD = (
    "WITH i AS (INSERT INTO leveret_inbox (consumer, message_id, created_at)"
    " VALUES ($1, $2, $3) ON CONFLICT DO NOTHING RETURNING 1)"
    " SELECT (SELECT count(*) FROM i) AS fresh, s.* FROM (SELECT 1) AS one"
    f" LEFT JOIN LATERAL (SELECT {_sql.SAGA_COLUMNS} FROM leveret_sagas WHERE saga_id = $4"
    " FOR UPDATE) AS s ON true"
)


def _save_step_sql(saga_write: str, first: int) -> str:
    """A saga step's writes in one statement (data-modifying CTEs).

    ``saga_write`` is the insert or the version-checked update, ``RETURNING 1`` when it wrote;
    the history row and the outbox rows (``unnest`` of one array per column, in order) are
    written only if it did, so a conflict leaves nothing of the step behind, like the separate
    statements. The statement returns how many saga rows it wrote (0 or 1). ``first`` is the
    number of the first parameter after the saga write's.
    """
    h = [f"${first + n}" for n in range(10)]
    o = [f"${first + 10 + n}" for n in range(10)]
    history = (
        f"{h[0]}::text, {h[1]}::bigint, {h[2]}::float8, {h[3]}::text, {h[4]}::text,"
        f" {h[5]}::text, {h[6]}::text, {h[7]}::text, {h[8]}::jsonb, {h[9]}::text"
    )
    outbox = (
        f"{o[0]}::text[], {o[1]}::text[], {o[2]}::text[], {o[3]}::bytea[], {o[4]}::bytea[],"
        f" {o[5]}::bool[], {o[6]}::text[], {o[7]}::text[], {o[8]}::float8[], {o[9]}::int[]"
    )
    columns = "m_id, m_ex, m_rk, m_body, m_props, m_mand, m_dest, m_saga, m_at, m_att"
    return (
        f"WITH s AS ({saga_write} RETURNING 1),"
        f" h AS (INSERT INTO leveret_history ({_sql.HISTORY_COLUMNS}) SELECT {history} FROM s),"
        f" o AS (INSERT INTO leveret_outbox ({_sql.OUTBOX_COLUMNS}) SELECT {columns} FROM s,"
        f" unnest({outbox}) WITH ORDINALITY AS m({columns}, n) ORDER BY n"
        " ON CONFLICT (message_id) DO NOTHING)"
        " SELECT count(*) FROM s"
    )


_SAVE_INSERTED = _save_step_sql(_INSERT, 12)
_SAVE_UPDATED = _save_step_sql(_UPDATE, 13)
_PENDING = (
    f"SELECT position, {_sql.OUTBOX_COLUMNS} FROM leveret_outbox"
    " WHERE sent_at IS NULL ORDER BY position LIMIT $1"
)
# Moves the row in one statement; returns 1 when it was pending.
_FAIL = (
    "WITH d AS (DELETE FROM leveret_outbox WHERE message_id = $3 AND sent_at IS NULL"
    f" RETURNING position, {_sql.OUTBOX_COLUMNS}),"
    f" k AS (INSERT INTO leveret_outbox_failed (position, {_sql.OUTBOX_COLUMNS}, failed_at,"
    f" error) SELECT position, {_sql.OUTBOX_COLUMNS}, $1, $2 FROM d"
    " ON CONFLICT (message_id) DO NOTHING)"
    " SELECT count(*) FROM d"
)
_FAILED = (
    f"SELECT position, {_sql.OUTBOX_COLUMNS}, failed_at, error FROM leveret_outbox_failed"
    " WHERE $1::text IS NULL OR saga_id = $1 ORDER BY failed_at DESC, position DESC LIMIT $2"
)
_STATS = (
    "SELECT (SELECT count(*) FROM leveret_outbox WHERE sent_at IS NULL),"
    " (SELECT min(created_at) FROM leveret_outbox WHERE sent_at IS NULL),"
    " (SELECT count(*) FROM leveret_inbox),"
    " (SELECT count(*) FROM leveret_outbox_failed)"
)
_MARK_SENT = (
    "UPDATE leveret_outbox SET sent_at = $1 WHERE message_id = ANY($2::text[]) AND sent_at IS NULL"
)
_DELETE_SENT = "DELETE FROM leveret_outbox WHERE message_id = ANY($1::text[])"
# One chunk of a prune: a bounded delete, committed on its own. SKIP LOCKED: processes
# pruning at the same time share the rows instead of waiting for each other.
_PRUNE_INBOX = (
    "DELETE FROM leveret_inbox WHERE ctid = ANY(ARRAY(SELECT ctid FROM leveret_inbox"
    " WHERE created_at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED))"
)
# Through the partial index on sent_at (``sent_at < $1`` implies ``sent_at IS NOT NULL``).
_PRUNE_OUTBOX = (
    "DELETE FROM leveret_outbox WHERE position = ANY(ARRAY(SELECT position FROM leveret_outbox"
    " WHERE sent_at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED))"
)
_HISTORY = f"SELECT {_sql.HISTORY_COLUMNS} FROM leveret_history WHERE saga_id = $1 ORDER BY seq"
_META_ADD = "INSERT INTO leveret_meta (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING"
_META = "SELECT value FROM leveret_meta WHERE name = $1"

_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_OPTIONS = (
    "schema",
    "min_size",
    "max_size",
    "connect_timeout",
    "command_timeout",
    "outbox_retention",
    "inbox_retention",
)
# Quoted strings, quoted identifiers, comments and dollar quotes: a `?` inside stays as it is.
_SQL_TOKENS = re.compile(
    r"""
      (?<![A-Za-z0-9_])[Ee]'(?:[^'\\]|\\.|'')*'
    | '(?:[^']|'')*'
    | "(?:[^"]|"")*"
    | --[^\n]*
    | /\*.*?\*/
    | \$(?P<tag>[A-Za-z_][A-Za-z0-9_]*|)\$.*?\$(?P=tag)\$
    | (?P<param>\?)
    """,
    re.DOTALL | re.VERBOSE,
)


@functools.lru_cache(maxsize=1024)
def positional_params(sql: str) -> str:
    """``sql`` with each ``?`` placeholder replaced by ``$1``, ``$2``, ... in order.

    A ``?`` inside a string, a quoted identifier, a comment or a dollar-quoted body is kept,
    so is nothing else: use ``jsonb_exists()`` instead of the ``jsonb ? key`` operator.
    """
    count = 0

    def number(match: re.Match[str]) -> str:
        nonlocal count
        if match.group("param") is None:
            return match.group(0)
        count += 1
        return f"${count}"

    return _SQL_TOKENS.sub(number, sql)


@dataclass(frozen=True, slots=True)
class PostgresConfig:
    """Settings of the PostgreSQL store; each can also be given as a URL query parameter.

    Args:
        schema: the schema for every table (created when missing); None keeps the server's
            ``search_path``.
        min_size: connections the pool keeps open.
        max_size: connections the pool opens at most (concurrent transactions).
        connect_timeout: seconds to open a connection.
        command_timeout: seconds one statement, or waiting for a free connection, may take.
        outbox_retention: seconds a sent outbox row is kept; 0 deletes it when marked sent.
        inbox_retention: seconds an inbox row (a processed message id) is kept, so a duplicate
            is recognised; None keeps them forever. Default 7 days.

    Raises:
        ConfigurationError: ``inbox_retention`` is 0, negative or not finite.
    """

    schema: str | None = None
    min_size: int = 1
    max_size: int = 10
    connect_timeout: float = 10.0
    command_timeout: float = 30.0
    outbox_retention: float = 3600.0
    inbox_retention: float | None = _retention.INBOX_RETENTION

    def __post_init__(self) -> None:
        _retention.check_inbox_retention(self.inbox_retention, "PostgresConfig")


class _PostgresTx(StoreTx):
    dialect = "postgresql"

    def __init__(self, conn: _Conn, clock: Callable[[], float]) -> None:
        self._conn = conn
        self._clock = clock

    async def inbox_add(self, consumer: str, message_id: str) -> bool:
        status = await self._conn.execute(_INBOX_ADD, consumer, message_id, self._clock())
        return _row_count(status) == 1

    async def load(self, saga_id: str) -> SagaRecord | None:
        row = await self._conn.fetchrow(_LOAD_FOR_UPDATE, saga_id)
        return _sql.saga_from_row(row) if row is not None else None

    async def inbox_add_and_load(
        self, consumer: str, message_id: str, saga_id: str
    ) -> tuple[bool, SagaRecord | None]:
        row = await self._conn.fetchrow(
            _INBOX_ADD_AND_LOAD, consumer, message_id, self._clock(), saga_id
        )
        assert row is not None  # the outer join always yields one row
        if not row[0]:
            return False, None
        return True, None if row[1] is None else _sql.saga_from_row(row[1:])

    async def save_step(
        self,
        record: SagaRecord,
        *,
        expected_version: int | None,
        history: HistoryRow,
        outbox: Sequence[OutboxRow],
    ) -> None:
        params = [_sql.outbox_params(row) for row in outbox]
        columns = [list(column) for column in zip(*params, strict=True)] if params else [[]] * 10
        saga = _sql.saga_params(record)
        if expected_version is None:
            written = await self._conn.fetchval(
                _SAVE_INSERTED, *saga, *_sql.history_params(history), *columns
            )
            if written != 1:
                raise SagaExists(record.saga_id)
            return
        written = await self._conn.fetchval(
            _SAVE_UPDATED, *saga, expected_version, *_sql.history_params(history), *columns
        )
        if written != 1:
            raise ConcurrencyConflict(record.saga_id)

    async def insert(self, record: SagaRecord) -> None:
        status = await self._conn.execute(_INSERT, *_sql.saga_params(record))
        if _row_count(status) != 1:
            raise SagaExists(record.saga_id)

    async def update(self, record: SagaRecord, *, expected_version: int) -> None:
        status = await self._conn.execute(_UPDATE, *_sql.saga_params(record), expected_version)
        if _row_count(status) != 1:
            raise ConcurrencyConflict(record.saga_id)

    async def add_history(self, row: HistoryRow) -> None:
        await self._conn.execute(_HISTORY_ADD, *_sql.history_params(row))

    async def add_outbox(self, rows: Sequence[OutboxRow]) -> None:
        if rows:
            await self._conn.executemany(_OUTBOX_ADD, [_sql.outbox_params(row) for row in rows])

    async def fail_outbox(self, message_id: str, error: str, *, at: float) -> bool:
        moved = await self._conn.fetchval(_FAIL, at, error, message_id)
        return bool(moved)

    async def execute(self, sql: str, *args: Any) -> None:
        await self._conn.execute(positional_params(sql), *args)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            await self._conn.executemany(positional_params(sql), rows)

    async def fetchone(self, sql: str, *args: Any) -> tuple[Any, ...] | None:
        row = await self._conn.fetchrow(positional_params(sql), *args)
        return tuple(row) if row is not None else None

    async def fetchall(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in await self._conn.fetch(positional_params(sql), *args)]


class PostgresStore(Store):
    """The store in a PostgreSQL database, through a small asyncpg pool opened on first use.

    Args:
        url: ``postgresql://user:password@host:port/database`` (or ``postgres://``); the query
            parameters ``schema``, ``min_size``, ``max_size``, ``connect_timeout``,
            ``command_timeout``, ``outbox_retention`` and ``inbox_retention`` (``none``:
            forever) override ``config``, any others
            (``sslmode``...) go to asyncpg. ``url`` keeps the address with its password
            redacted.
        config: settings; defaults to ``PostgresConfig()``.
        clock: the time source for inbox and ``sent_at`` timestamps, and for their retention.

    Raises:
        ConfigurationError: an option is invalid.
    """

    def __init__(
        self,
        url: str,
        *,
        config: PostgresConfig | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = _display(url)
        self._dsn, self.config = _parse_url(url, config or PostgresConfig(), self.url)
        self._secrets = _secrets(url)
        self._clock = clock
        self._outbox_pruner = _retention.Pruner(self.config.outbox_retention, clock)
        self._inbox_pruner = _retention.Pruner(self.config.inbox_retention, clock)
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None
        self._pool_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"PostgresStore({self.url!r})"

    async def setup(self, ddl: Sequence[str] = ()) -> None:
        await self.upgrade()
        if not ddl:
            return
        async with self._connection() as conn, conn.transaction():
            # CREATE ... IF NOT EXISTS races in PostgreSQL: one runner at a time.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _SETUP_LOCK_KEY)
            for statement in ddl:
                await conn.execute(statement)

    async def pending_steps(self, migrations: Sequence[Migrations] = ()) -> list[PendingStep]:
        async with self._connection() as conn:
            found = await _versions(conn)
        return plan(found, (CORE_MIGRATIONS, *migrations), "postgresql", self.url)

    async def upgrade(self, migrations: Sequence[Migrations] = ()) -> list[PendingStep]:
        if not await self.pending_steps(migrations):
            return []
        components = (CORE_MIGRATIONS, *migrations)
        async with self._connection() as conn:
            # A session lock around the whole upgrade, each step committed with its version:
            # a second runner waits here, then reads the versions the first one left.
            await conn.execute("SELECT pg_advisory_lock($1)", _SETUP_LOCK_KEY)
            try:
                schema = self.config.schema
                if schema is not None and not await conn.fetchval(
                    "SELECT 1 FROM pg_namespace WHERE nspname = $1", schema
                ):
                    await conn.execute(f'CREATE SCHEMA "{schema}"')
                await conn.execute(_VERSION_TABLE)
                found = await _versions(conn)
                steps = plan(found, components, "postgresql", self.url)
                for step in steps:
                    async with conn.transaction():
                        for statement in step.statements:
                            await conn.execute(statement)
                        await conn.execute(
                            _VERSION_SET, step.component, step.version, self._clock()
                        )
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", _SETUP_LOCK_KEY)
        return steps

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[StoreTx]:
        async with self._connection() as conn, conn.transaction():
            yield _PostgresTx(conn, self._clock)

    async def shared_secret(self, candidate: str) -> str:
        """The database's saga secret (``leveret_meta``): ``candidate`` if it had none yet.

        Two statements, so that the read (a snapshot of its own at READ COMMITTED) sees the row
        of a racing writer whose insert this one waited for.
        """
        async with self._connection() as conn, conn.transaction():
            await conn.execute(_META_ADD, _sql.SECRET, candidate)
            value = await conn.fetchval(_META, _sql.SECRET)
        return str(value)

    async def pending_outbox(self, limit: int = 500) -> list[OutboxRow]:
        async with self._connection() as conn:
            rows = await conn.fetch(_PENDING, limit)
        return [_sql.outbox_from_row(row) for row in rows]

    async def stats(self) -> StoreStats:
        async with self._connection() as conn:
            row = await conn.fetchrow(_STATS)
        assert row is not None  # a SELECT without FROM returns one row
        return StoreStats(
            outbox_pending=row[0], oldest_pending_at=row[1], inbox_rows=row[2], outbox_failed=row[3]
        )

    async def failed_outbox(
        self, limit: int = 100, *, saga_id: str | None = None
    ) -> list[OutboxRow]:
        async with self._connection() as conn:
            rows = await conn.fetch(_FAILED, saga_id, limit)
        return [_sql.failed_from_row(row) for row in rows]

    async def mark_sent(self, message_ids: Sequence[str]) -> None:
        if not message_ids:
            return
        async with self._connection() as conn:
            if self.config.outbox_retention <= 0:
                await conn.execute(_DELETE_SENT, list(message_ids))
            else:
                await conn.execute(_MARK_SENT, self._clock(), list(message_ids))

    async def prune_inbox(self, *, chunk: int = _retention.PRUNE_CHUNK) -> int:
        """Delete inbox rows older than ``inbox_retention``, if due (at most once a minute).

        Rows go ``chunk`` at a time, each chunk one statement committed on its own, so no
        transaction holds many row locks for long. Returns how many rows went.

        Raises:
            ConfigurationError: ``chunk`` is not an int >= 1.
        """
        return await self._prune(_PRUNE_INBOX, self._inbox_pruner, chunk)

    async def prune_outbox(self, *, chunk: int = _retention.PRUNE_CHUNK) -> int:
        """Delete sent outbox rows older than ``outbox_retention``, if due (at most once a
        minute); pending rows stay, however old.

        Rows go ``chunk`` at a time, each chunk one statement committed on its own, so no
        transaction holds many row locks for long. Returns how many rows went.

        Raises:
            ConfigurationError: ``chunk`` is not an int >= 1.
        """
        return await self._prune(_PRUNE_OUTBOX, self._outbox_pruner, chunk)

    async def _prune(self, sql: str, pruner: _retention.Pruner, chunk: int) -> int:
        _retention.check_chunk(chunk)
        cutoff = pruner.cutoff(pruner.now())
        if cutoff is None:
            return 0
        deleted = 0
        async with self._connection() as conn:
            while True:
                count = _row_count(await conn.execute(sql, cutoff, chunk))
                deleted += count
                if count < chunk:
                    return deleted

    async def get_saga(self, saga_id: str) -> SagaRecord | None:
        async with self._connection() as conn:
            row = await conn.fetchrow(_LOAD, saga_id)
        return _sql.saga_from_row(row) if row is not None else None

    async def list_sagas(
        self, *, status: SagaStatus | None = None, saga: str | None = None, limit: int = 1000
    ) -> list[SagaRecord]:
        where: list[str] = []
        args: list[Any] = []
        if status is not None:
            args.append(status.value)
            where.append(f"status = ${len(args)}")
        if saga is not None:
            args.append(saga)
            where.append(f"saga = ${len(args)}")
        sql = f"SELECT {_sql.SAGA_COLUMNS} FROM leveret_sagas"
        if where:
            sql += " WHERE " + " AND ".join(where)
        args.append(limit)
        sql += f" ORDER BY created_at DESC LIMIT ${len(args)}"
        async with self._connection() as conn:
            rows = await conn.fetch(sql, *args)
        return [_sql.saga_from_row(row) for row in rows]

    async def history(self, saga_id: str) -> list[HistoryRow]:
        async with self._connection() as conn:
            rows = await conn.fetch(_HISTORY, saga_id)
        return [_sql.history_from_row(row) for row in rows]

    async def close(self) -> None:
        async with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            async with asyncio.timeout(self.config.command_timeout):
                await pool.close()
        except TimeoutError:  # a connection still held: cut it
            pool.terminate()

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[_Conn]:
        pool = await self._open_pool()
        async with pool.acquire(timeout=self.config.command_timeout) as conn:
            yield conn

    async def _open_pool(self) -> asyncpg.Pool[asyncpg.Record]:
        async with self._pool_lock:
            if self._pool is None:
                self._pool = await self._create_pool()
            return self._pool

    async def _create_pool(self) -> asyncpg.Pool[asyncpg.Record]:
        settings = {"search_path": f'"{self.config.schema}"'} if self.config.schema else None
        try:
            return await asyncpg.create_pool(
                self._dsn,
                min_size=self.config.min_size,
                max_size=self.config.max_size,
                timeout=self.config.connect_timeout,
                command_timeout=self.config.command_timeout,
                server_settings=settings,
                reset=_reset_if_dirty,
            )
        except (OSError, ValueError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
            for secret in self._secrets:
                reason = reason.replace(secret, "***")
            # Not chained: asyncpg's own exception could quote the DSN.
            raise StoreUnreachable(self.url, reason) from None


async def _reset_if_dirty(conn: asyncpg.Connection[Any]) -> None:
    """Reset a connection going back to the pool only if it is still inside a transaction.

    asyncpg's default reset costs a round trip per release (``RESET ALL``, ``UNLISTEN *``,
    ...), that is per transaction. The store's connections only ever run its transactions,
    which always end (commit or rollback) before the release; one that did not, after a
    cancellation, is reset in full. Service SQL that changes a setting uses ``SET LOCAL``,
    which ends with its transaction.
    """
    if conn.is_in_transaction():
        await conn.reset()


def _row_count(status: str) -> int:
    """The row count in a command status such as ``INSERT 0 1`` or ``UPDATE 0``."""
    return int(status.rsplit(" ", 1)[-1])


def _secrets(url: str) -> list[str]:
    """The passwords in ``url`` (in its user info or its query), to scrub from messages."""
    return url_passwords(url)


def _display(url: str) -> str:
    """``url`` with every password replaced by ``***``."""
    try:
        shown = redact(url)
        parts = urlsplit(shown)
    except ValueError:
        return "<unparseable url>"
    query = parse_qsl(parts.query, keep_blank_values=True)
    if not any(key in ("password", "sslpassword") for key, _ in query):
        return shown
    masked = [(k, "***" if k in ("password", "sslpassword") else v) for k, v in query]
    return urlunsplit(parts._replace(query=urlencode(masked, safe="*")))


def _parse_url(url: str, config: PostgresConfig, shown: str) -> tuple[str, PostgresConfig]:
    """The DSN for asyncpg (without leveret's options) and the settings in ``url``."""
    check_userinfo(url, what="PostgreSQL store")
    try:
        parts = urlsplit(url)
    except ValueError:
        raise ConfigurationError(f"cannot parse the PostgreSQL store URL {shown}") from None
    if parts.scheme.lower() not in ("postgres", "postgresql"):
        raise ConfigurationError(
            f"not a PostgreSQL store URL: {shown}; use postgresql://user:password@host/database"
        )
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    ours = {key: query.pop(key) for key in _OPTIONS if key in query}
    where = shown
    schema = ours.get("schema")
    if schema is not None:
        config = replace(config, schema=schema)
    min_size = _sql.query_option(ours, "min_size", int, minimum=1, where=where)
    max_size = _sql.query_option(ours, "max_size", int, minimum=1, where=where)
    connect = _sql.query_option(ours, "connect_timeout", float, minimum=0.0, where=where)
    command = _sql.query_option(ours, "command_timeout", float, minimum=0.0, where=where)
    retention = _sql.query_option(ours, "outbox_retention", float, minimum=0.0, where=where)
    config = replace(
        config,
        min_size=config.min_size if min_size is None else min_size,
        max_size=config.max_size if max_size is None else max_size,
        connect_timeout=config.connect_timeout if connect is None else connect,
        command_timeout=config.command_timeout if command is None else command,
        outbox_retention=config.outbox_retention if retention is None else retention,
        inbox_retention=_retention.inbox_retention_option(
            ours, config.inbox_retention, where=where
        ),
    )
    if config.schema is not None and not _SCHEMA_NAME.fullmatch(config.schema):
        raise ConfigurationError(
            f"store URL {where}: schema={config.schema!r} must be a plain identifier "
            "(letters, digits, underscores; at most 63)"
        )
    if not 1 <= config.min_size <= config.max_size:
        raise ConfigurationError(
            f"store URL {where}: need 1 <= min_size ({config.min_size}) <= max_size "
            f"({config.max_size})"
        )
    dsn = urlunsplit(parts._replace(query=urlencode(list(query.items()))))
    return dsn, config


async def _versions(conn: _Conn) -> dict[str, int]:
    """Each component's version; leveret's own from ``leveret_schema_version`` too (a database
    from before ``leveret_schema``). Reads only."""
    row = await conn.fetchrow(_VERSION_TABLES)
    assert row is not None  # a SELECT without FROM returns one row
    found: dict[str, int] = {}
    if row[0]:
        rows = await conn.fetch("SELECT component, version FROM leveret_schema")
        found = {str(r[0]): int(r[1]) for r in rows}
    if row[1]:
        legacy = await conn.fetchval("SELECT max(version) FROM leveret_schema_version")
        # Only to refuse a newer one: a database from before leveret_schema may lack what
        # later releases added to step 1 (indexes), so step 1 runs on it once more.
        if legacy is not None and int(legacy) > SCHEMA_VERSION:
            found[CORE] = int(legacy)
    return found
