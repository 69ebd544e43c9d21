"""The SQLite store's group commit: transactions that queue up share one COMMIT.

What must hold whatever the grouping: a transaction's ``async with`` block returns only once its
work is committed (another connection sees it); one that raises rolls back only its own work;
a failed COMMIT fails every transaction of its group and commits none; reads never see work
that is not committed.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from framework.store.base import OutboxRow
from framework.store.sqlite import SqliteStore, _Connection

SCHEMA = ["CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, text TEXT NOT NULL)"]


def committed_ids(path: Path) -> set[int]:
    """What another connection sees in the file: committed rows only."""
    conn = sqlite3.connect(path)
    try:
        return {row[0] for row in conn.execute("SELECT id FROM notes")}
    finally:
        conn.close()


def outbox_row(message_id: str) -> OutboxRow:
    return OutboxRow(
        message_id=message_id, exchange="x", routing_key="k", body=b"{}", properties=b"{}"
    )


@pytest.fixture
async def store(tmp_path: Path) -> Any:
    store = SqliteStore(f"sqlite:///{tmp_path / 'group.db'}")
    await store.setup(SCHEMA)
    yield store
    await store.close()


async def test_concurrent_transactions_commit_before_they_return_and_fail_alone(
    store: SqliteStore, tmp_path: Path
) -> None:
    """Of 30 transactions started together, the ones that raise leave nothing; each of the
    others is visible to another connection the moment its block has returned."""
    path = tmp_path / "group.db"
    seen_at_return: dict[int, bool] = {}

    async def write(i: int) -> None:
        async with store.transaction() as tx:
            await tx.execute("INSERT INTO notes (id, text) VALUES (?, ?)", i, f"note {i}")
            if i % 7 == 3:
                raise ValueError(f"handler {i} failed")
        seen_at_return[i] = i in committed_ids(path)

    results = await asyncio.gather(*(write(i) for i in range(30)), return_exceptions=True)

    failed = {i for i, r in enumerate(results) if isinstance(r, ValueError)}
    assert failed == {i for i in range(30) if i % 7 == 3}
    assert committed_ids(path) == set(range(30)) - failed
    assert seen_at_return == {i: True for i in range(30) if i not in failed}


async def test_a_failed_commit_fails_every_transaction_of_its_group(
    store: SqliteStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the shared COMMIT fails, every member raises and none of their rows exists."""
    execute = _Connection.execute
    failures = 0

    async def failing_commit(self: _Connection, sql: str, params: Any = ()) -> Any:
        nonlocal failures
        if sql == "COMMIT" and failures == 0:
            failures += 1
            raise sqlite3.OperationalError("disk I/O error")
        return await execute(self, sql, params)

    monkeypatch.setattr(_Connection, "execute", failing_commit)

    async def write(i: int) -> None:
        async with store.transaction() as tx:
            await tx.execute("INSERT INTO notes (id, text) VALUES (?, ?)", i, "x")

    results = await asyncio.gather(*(write(i) for i in range(10)), return_exceptions=True)

    assert all(isinstance(r, sqlite3.OperationalError) for r in results), results
    assert committed_ids(tmp_path / "group.db") == set()
    await write(99)  # the store goes on working: the next group commits
    assert committed_ids(tmp_path / "group.db") == {99}


async def test_reads_never_see_work_of_a_group_that_then_fails(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read queued behind transactions waits for their COMMIT: when it fails, the read sees
    none of their outbox rows (the same connection would otherwise show them)."""
    execute = _Connection.execute

    async def failing_commit(self: _Connection, sql: str, params: Any = ()) -> Any:
        if sql == "COMMIT":
            raise sqlite3.OperationalError("disk I/O error")
        return await execute(self, sql, params)

    monkeypatch.setattr(_Connection, "execute", failing_commit)
    release = asyncio.Event()
    started = asyncio.Event()

    async def writer(i: int, wait: bool) -> None:
        async with store.transaction() as tx:
            await tx.add_outbox([outbox_row(f"m-{i}")])
            if wait:
                started.set()
                await release.wait()

    writers = [asyncio.create_task(writer(1, True))]
    await started.wait()
    writers.append(asyncio.create_task(writer(2, False)))  # queues, joins the group
    read = asyncio.create_task(store.pending_outbox())  # queues behind both
    await asyncio.sleep(0.05)
    assert not read.done()
    release.set()
    assert await read == []
    results = await asyncio.gather(*writers, return_exceptions=True)
    assert all(isinstance(r, sqlite3.OperationalError) for r in results), results
    monkeypatch.setattr(_Connection, "execute", execute)
    assert await store.pending_outbox() == []


async def test_a_cancelled_member_does_not_cancel_the_commit_of_the_others(
    store: SqliteStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A member cancelled while it waits for the shared COMMIT leaves the others committed."""
    execute = _Connection.execute
    committing = asyncio.Event()

    async def slow_commit(self: _Connection, sql: str, params: Any = ()) -> Any:
        if sql == "COMMIT":
            committing.set()
            await asyncio.sleep(0.05)
        return await execute(self, sql, params)

    monkeypatch.setattr(_Connection, "execute", slow_commit)

    async def member(i: int) -> None:
        async with store.transaction() as tx:
            await tx.execute("INSERT INTO notes (id, text) VALUES (?, 'm')", i)

    members = [asyncio.create_task(member(i)) for i in (1, 2, 3)]
    await committing.wait()
    members[0].cancel()
    results = await asyncio.gather(*members, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
    assert results[1:] == [None, None]
    assert {2, 3} <= committed_ids(tmp_path / "group.db")
