"""Outbox retention: sent outbox rows older than ``outbox_retention`` are pruned by
``prune_outbox`` (the sweeper's job), in chunks, at most once a minute, on the SQLite and
PostgreSQL stores; ``mark_sent`` only marks them (or deletes them with a retention of 0)."""

from __future__ import annotations

import pytest

from framework.errors import ConfigurationError
from framework.store import OutboxRow, Store
from framework.store.postgres import PostgresStore
from framework.store.sqlite import SqliteStore
from tests.store.conftest import SQL_KINDS, MakeStore

sql_stores = pytest.mark.parametrize("store_kind", SQL_KINDS, indirect=True)

_ROWS = "SELECT message_id, sent_at FROM leveret_outbox ORDER BY position"


class Clock:
    """A settable time source."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def row(message_id: str, created_at: float = 1000.0) -> OutboxRow:
    return OutboxRow(
        message_id=message_id,
        exchange="shop.events",
        routing_key="shop.noted",
        body=b"{}",
        properties=b"{}",
        mandatory=False,
        destination="shop.noted",
        saga_id=None,
        created_at=created_at,
    )


async def queue(store: Store, *message_ids: str) -> None:
    async with store.transaction() as tx:
        await tx.add_outbox([row(message_id) for message_id in message_ids])


async def outbox(store: Store) -> list[tuple[str, float | None]]:
    async with store.transaction() as tx:
        return [(r[0], r[1]) for r in await tx.fetchall(_ROWS)]


@sql_stores
async def test_old_sent_rows_go_pending_and_recent_ones_stay(make_store: MakeStore) -> None:
    """A prune deletes sent rows past the retention; a pending row stays however old, and so
    does a row sent within the retention."""
    clock = Clock(1000.0)
    store = await make_store(clock=clock, outbox_retention=100.0)
    await queue(store, "old-1", "pending", "old-2", "recent")
    await store.mark_sent(["old-1", "old-2"])
    clock.now = 1090.0
    await store.mark_sent(["recent"])
    clock.now = 1150.0
    assert await store.prune_outbox() == 2
    assert await outbox(store) == [("pending", None), ("recent", 1090.0)]
    assert [r.message_id for r in await store.pending_outbox()] == ["pending"]


@sql_stores
async def test_mark_sent_leaves_old_sent_rows_to_the_prune(make_store: MakeStore) -> None:
    """mark_sent does no delete of its own: rows past the retention wait for prune_outbox."""
    clock = Clock(1000.0)
    store = await make_store(clock=clock, outbox_retention=100.0)
    await queue(store, "a", "b")
    await store.mark_sent(["a"])
    clock.now = 5000.0
    await store.mark_sent(["b"])
    assert await outbox(store) == [("a", 1000.0), ("b", 5000.0)]
    assert await store.prune_outbox() == 1
    assert await outbox(store) == [("b", 5000.0)]


@sql_stores
async def test_an_outbox_prune_is_due_at_most_once_a_minute(make_store: MakeStore) -> None:
    """A second prune within 60 seconds of the last deletes nothing; the next one catches up."""
    clock = Clock(1000.0)
    store = await make_store(clock=clock, outbox_retention=100.0)
    await queue(store, "a", "b")
    await store.mark_sent(["a"])
    clock.now = 1010.0
    await store.mark_sent(["b"])
    clock.now = 1105.0
    assert await store.prune_outbox() == 1
    clock.now = 1164.0
    assert await store.prune_outbox() == 0
    assert await outbox(store) == [("b", 1010.0)]
    clock.now = 1165.0
    assert await store.prune_outbox() == 1
    assert await outbox(store) == []


@sql_stores
@pytest.mark.parametrize("old", [20, 23])
async def test_a_backlog_larger_than_a_chunk_goes_chunk_by_chunk(
    make_store: MakeStore, old: int
) -> None:
    """With chunks of 5, a prune deletes chunk after chunk until no old sent row is left (a
    full last chunk too); pending and recent rows stay."""
    clock = Clock(1000.0)
    store = await make_store(clock=clock, outbox_retention=100.0)
    assert isinstance(store, SqliteStore | PostgresStore)
    backlog = [f"old-{n}" for n in range(old)]
    await queue(store, *backlog, "pending", "recent")
    await store.mark_sent(backlog)
    clock.now = 1090.0
    await store.mark_sent(["recent"])
    clock.now = 1150.0
    assert await store.prune_outbox(chunk=5) == old
    assert await outbox(store) == [("pending", None), ("recent", 1090.0)]


@pytest.mark.parametrize("store_kind", ["sqlite"], indirect=True)
async def test_one_delete_removes_at_most_a_chunk(make_store: MakeStore) -> None:
    """The prune's delete statements each remove at most ``chunk`` rows: 23 old rows in chunks
    of 5 take five deletes (on SQLite, whose statements the test can watch)."""
    clock = Clock(1000.0)
    store = await make_store(clock=clock, outbox_retention=100.0)
    assert isinstance(store, SqliteStore)
    backlog = [f"old-{n}" for n in range(23)]
    await queue(store, *backlog)
    await store.mark_sent(backlog)
    clock.now = 1150.0
    statements: list[str] = []
    assert store._conn is not None
    store._conn.raw.set_trace_callback(statements.append)
    try:
        assert await store.prune_outbox(chunk=5) == 23
    finally:
        store._conn.raw.set_trace_callback(None)
    deletes = [s for s in statements if s.startswith("DELETE FROM leveret_outbox")]
    assert len(deletes) == 5
    assert all(s.endswith("LIMIT 5)") for s in deletes)


@sql_stores
async def test_zero_retention_deletes_when_sent_and_prunes_what_a_longer_one_left(
    make_store: MakeStore,
) -> None:
    """outbox_retention=0: mark_sent deletes the rows at once, and a prune removes sent rows
    that a store with a longer retention left behind."""
    clock = Clock(1000.0)
    keeping = await make_store(clock=clock, outbox_retention=100.0)
    await queue(keeping, "kept", "a", "pending")
    await keeping.mark_sent(["kept"])
    clock.now = 1001.0
    deleting = await make_store(clock=clock, outbox_retention=0.0)
    await deleting.mark_sent(["a"])
    assert await outbox(deleting) == [("kept", 1000.0), ("pending", None)]
    assert await deleting.prune_outbox() == 1
    assert await outbox(deleting) == [("pending", None)]


@sql_stores
async def test_a_chunk_below_one_is_refused(make_store: MakeStore) -> None:
    """A prune chunk of 0 (which would never finish) or a negative one raises a clear error."""
    store = await make_store()
    assert isinstance(store, SqliteStore | PostgresStore)
    for chunk in (0, -1):
        with pytest.raises(ConfigurationError, match=r"chunk=.* must be an int >= 1"):
            await store.prune_outbox(chunk=chunk)
        with pytest.raises(ConfigurationError, match=r"chunk=.* must be an int >= 1"):
            await store.prune_inbox(chunk=chunk)
