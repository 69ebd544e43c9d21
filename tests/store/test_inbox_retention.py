"""Inbox retention: inbox rows older than ``inbox_retention`` are pruned, in chunks, at most once
a minute, on the memory, SQLite and PostgreSQL stores; bad settings are refused clearly."""

from __future__ import annotations

import pytest

from framework.errors import ConfigurationError
from framework.store import Store
from framework.store._retention import INBOX_RETENTION
from framework.store.memory import MemoryStore
from framework.store.postgres import PostgresConfig, PostgresStore
from framework.store.sqlite import SqliteConfig, SqliteStore
from tests.store.conftest import SQL_KINDS, MakeStore


class Clock:
    """A settable time source."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def record(store: Store, *message_ids: str, consumer: str = "billing") -> list[bool]:
    """inbox_add of each id in one transaction; True for each id that was new."""
    async with store.transaction() as tx:
        return [await tx.inbox_add(consumer, message_id) for message_id in message_ids]


async def inbox_rows(store: Store) -> int:
    return (await store.stats()).inbox_rows


async def test_rows_older_than_the_retention_are_pruned_newer_kept(make_store: MakeStore) -> None:
    """A prune deletes rows past the retention; a duplicate of a newer row is still caught,
    one of a pruned row is taken as new."""
    clock = Clock(1000.0)
    store = await make_store(clock=clock, inbox_retention=100.0)
    assert await record(store, "old-1", "old-2") == [True, True]
    await record(store, "other", consumer="shipping")
    clock.now = 1050.0
    assert await record(store, "new") == [True]
    clock.now = 1120.0
    assert await store.prune_inbox() == 3
    assert await inbox_rows(store) == 1
    assert await record(store, "new") == [False]
    assert await record(store, "old-1") == [True]


async def test_a_prune_is_due_at_most_once_a_minute(make_store: MakeStore) -> None:
    """A second prune within 60 seconds of the last deletes nothing; the next one catches up."""
    clock = Clock(1000.0)
    store = await make_store(clock=clock, inbox_retention=100.0)
    await record(store, "a")
    clock.now = 1010.0
    await record(store, "b")
    clock.now = 1105.0
    assert await store.prune_inbox() == 1
    clock.now = 1164.0
    assert await store.prune_inbox() == 0
    assert await inbox_rows(store) == 1
    clock.now = 1165.0
    assert await store.prune_inbox() == 1
    assert await inbox_rows(store) == 0


async def test_without_a_retention_rows_are_kept_forever(make_store: MakeStore) -> None:
    """inbox_retention=None: no prune is ever due, a duplicate years later is still caught."""
    clock = Clock(1000.0)
    store = await make_store(clock=clock, inbox_retention=None)
    await record(store, "a")
    clock.now = 1000.0 + 10 * 365 * 86400
    assert await store.prune_inbox() == 0
    assert await record(store, "a") == [False]


@pytest.mark.parametrize("store_kind", SQL_KINDS, indirect=True)
@pytest.mark.parametrize("old", [20, 23])
async def test_a_chunked_prune_removes_every_old_row(make_store: MakeStore, old: int) -> None:
    """With chunks of 5, a prune goes on until no old row is left (a full last chunk too)."""
    clock = Clock(1000.0)
    store = await make_store(clock=clock, inbox_retention=100.0)
    assert isinstance(store, SqliteStore | PostgresStore)
    await record(store, *(f"old-{n}" for n in range(old)))
    clock.now = 1090.0
    await record(store, "new-1", "new-2")
    clock.now = 1150.0
    assert await store.prune_inbox(chunk=5) == old
    assert await inbox_rows(store) == 2


@pytest.mark.parametrize("store_kind", SQL_KINDS, indirect=True)
async def test_upgrade_adds_the_created_at_index_to_a_database_from_before_versioning(
    make_store: MakeStore, store_kind: str
) -> None:
    """An inbox without the created_at index (an older leveret's, which had no leveret_schema
    table) gets it from the upgrade: step 1 runs once more on such a database."""
    indexes = (
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'leveret_inbox'"
        if store_kind == "sqlite"
        else "SELECT indexname FROM pg_indexes WHERE tablename = 'leveret_inbox'"
        " AND schemaname = current_schema()"
    )
    store = await make_store()
    async with store.transaction() as tx:
        assert ("leveret_inbox_created",) in await tx.fetchall(indexes)
        await tx.execute("DROP INDEX leveret_inbox_created")
        await tx.execute("DROP TABLE leveret_schema")
    await record(store, "m1")
    await store.close()
    reopened = await make_store()
    async with reopened.transaction() as tx:
        assert ("leveret_inbox_created",) in await tx.fetchall(indexes)
    assert await record(reopened, "m1") == [False]


def test_the_default_retention_is_seven_days() -> None:
    """Every store keeps inbox rows 7 days unless told otherwise."""
    assert INBOX_RETENTION == 604800.0
    assert SqliteStore("sqlite:///app.db").config.inbox_retention == INBOX_RETENTION
    assert PostgresStore("postgresql://app@db.invalid/shop").config.inbox_retention == (
        INBOX_RETENTION
    )


@pytest.mark.parametrize(("raw", "expected"), [("3600", 3600.0), ("0.5", 0.5), ("None", None)])
def test_the_url_sets_the_inbox_retention(raw: str, expected: float | None) -> None:
    """inbox_retention in either SQL store's URL overrides the config; none keeps rows forever."""
    sqlite = SqliteStore(f"sqlite:///app.db?inbox_retention={raw}", config=SqliteConfig())
    postgres = PostgresStore(f"postgresql://app@db.invalid/shop?inbox_retention={raw}")
    assert sqlite.config.inbox_retention == expected
    assert postgres.config.inbox_retention == expected
    assert "inbox_retention" not in postgres._dsn


@pytest.mark.parametrize("raw", ["0", "-60", "soon", "", "inf", "nan"])
def test_bad_url_inbox_retentions_are_refused(raw: str) -> None:
    """0, negative, non-numeric and infinite retentions raise a ConfigurationError saying what
    to write, without the password."""
    with pytest.raises(ConfigurationError, match=r"inbox_retention=.* must be a number of second"):
        SqliteStore(f"sqlite:///app.db?inbox_retention={raw}")
    with pytest.raises(
        ConfigurationError, match=r"inbox_retention=.* must be a number of second"
    ) as caught:
        PostgresStore(f"postgresql://app:s3cret@db.invalid/shop?inbox_retention={raw}")
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize("value", [0, 0.0, -1.0, float("inf"), float("nan")])
def test_bad_configured_inbox_retentions_are_refused(value: float) -> None:
    """The configs and the memory store refuse a retention that is not > 0 (0 would turn
    duplicate detection off)."""
    with pytest.raises(ConfigurationError, match="SqliteConfig: inbox_retention="):
        SqliteConfig(inbox_retention=value)
    with pytest.raises(ConfigurationError, match="PostgresConfig: inbox_retention="):
        PostgresConfig(inbox_retention=value)
    with pytest.raises(ConfigurationError, match="MemoryStore: inbox_retention="):
        MemoryStore(inbox_retention=value)
