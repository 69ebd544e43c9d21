"""A transaction cancelled while SQLite waits for another process's lock leaves nothing open."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

from framework.store import store_from_url


async def test_cancel_while_waiting_for_the_write_lock_leaves_the_connection_usable(
    tmp_path: Path,
) -> None:
    """BEGIN still runs in aiosqlite's thread after the cancel: it is rolled back, so the next
    transaction of this store — and another process's — can write."""
    path = tmp_path / "locked.db"
    store = store_from_url(f"sqlite:///{path}?busy_timeout=10")
    await store.setup()
    other = sqlite3.connect(path, isolation_level=None)  # another process, as far as locks go
    try:
        other.execute("BEGIN IMMEDIATE")

        async def write() -> None:
            async with store.transaction() as tx:
                await tx.inbox_add("c", "never")

        waiting = asyncio.create_task(write())
        await asyncio.sleep(0.3)  # let it reach BEGIN, which now waits on the other's lock
        waiting.cancel()
        other.execute("ROLLBACK")  # now the BEGIN gets the lock, in the thread, cancelled or not
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        async with asyncio.timeout(10):
            async with store.transaction() as tx:
                assert await tx.inbox_add("c", "after")
        other.execute("BEGIN IMMEDIATE")  # the store holds no lock any more
        other.execute("ROLLBACK")
    finally:
        other.close()
        await store.close()
