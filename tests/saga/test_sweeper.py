"""The outbox sweeper survives a stray ``CancelledError`` from a publish it did not cancel, and
prunes the store's inbox and sent outbox rows as it goes."""

from __future__ import annotations

import asyncio
from typing import Any

from framework import Command
from framework.codec import Codec
from framework.messages import MessageKind
from framework.routing import Naming
from framework.saga.outbox import OutboxRelay, OutboxWriter
from framework.store import store_from_url
from framework.store.memory import MemoryStore
from framework.store.sqlite import SqliteConfig, SqliteStore
from framework.transport.memory import MemoryTransport
from tests.test_worker import eventually


class Note(Command):
    __wire_name__ = "sweeper.note"


class FlakyTransport(MemoryTransport):
    """Fails its first publish with the CancelledError a dying aiormq connection produces."""

    def __init__(self) -> None:
        super().__init__()
        self.published = asyncio.Event()
        self.failed = False

    async def publish(self, message: Any, **kwargs: Any) -> None:
        if not self.failed:
            self.failed = True
            raise asyncio.CancelledError()
        await super().publish(message, **kwargs)
        self.published.set()


async def test_sweeper_keeps_sweeping_after_a_stray_cancellation() -> None:
    """The first sweep's publish raises CancelledError; the next sweep sends the row."""
    naming = Naming("sweep")
    transport = FlakyTransport()
    await transport.connect()
    queue = naming.handler_queue("svc", Note.__wire_name__)
    await transport.declare(
        naming.base_topology(())
        + naming.handler_topology(queue, MessageKind.COMMAND, Note.__wire_name__)
    )
    store = store_from_url("memory://")
    await store.setup()
    row = OutboxWriter(Codec([Note]), naming).row(
        Note(), message_id="n-1", correlation_id=None, causation_id=None
    )
    async with store.transaction() as tx:
        await tx.add_outbox([row])
    relay = OutboxRelay(store, transport, naming, sweep_interval=0.01, sweep_grace=0.0)
    sweeper = asyncio.create_task(relay.run())
    try:
        await asyncio.wait_for(transport.published.wait(), 10)
        assert transport.failed
        assert not sweeper.done()

        async def all_sent() -> bool:
            return await store.pending_outbox() == []

        await eventually(all_sent, timeout=10, what="the row to be marked sent")
    finally:
        sweeper.cancel()
        await asyncio.gather(sweeper, return_exceptions=True)
        await transport.close()


class FailingPruneStore(MemoryStore):
    """A memory store whose first inbox prune fails, as a database that is briefly away."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.prunes = 0

    async def prune_inbox(self) -> int:
        self.prunes += 1
        if self.prunes == 1:
            raise OSError("connection reset")
        return await super().prune_inbox()


async def test_sweeper_prunes_the_inbox_and_survives_a_failed_prune() -> None:
    """The sweeper asks the store to prune its inbox every round; a failing prune is retried."""
    now = [1000.0]
    store = FailingPruneStore(inbox_retention=100.0, clock=lambda: now[0])
    async with store.transaction() as tx:
        await tx.inbox_add("svc", "m-1")
    now[0] = 1200.0
    transport = MemoryTransport()
    await transport.connect()
    relay = OutboxRelay(store, transport, Naming("sweep"), sweep_interval=0.01)
    sweeper = asyncio.create_task(relay.run())
    try:

        async def pruned() -> bool:
            return (await store.stats()).inbox_rows == 0

        await eventually(pruned, timeout=10, what="the old inbox row to be pruned")
        assert store.prunes >= 2
        assert not sweeper.done()
    finally:
        sweeper.cancel()
        await asyncio.gather(sweeper, return_exceptions=True)
        await transport.close()


async def test_sweeper_prunes_old_sent_outbox_rows(tmp_path: Any) -> None:
    """Sent outbox rows past the retention go in a sweeper round, not when marked sent; a
    pending row stays."""
    now = [1000.0]
    store = SqliteStore(
        f"sqlite:///{tmp_path / 'sweep.db'}",
        config=SqliteConfig(outbox_retention=100.0),
        clock=lambda: now[0],
    )
    await store.setup()
    writer = OutboxWriter(Codec([Note]), Naming("sweep"), clock=lambda: now[0])
    rows = [
        writer.row(Note(), message_id=f"n-{n}", correlation_id=None, causation_id=None)
        for n in range(3)
    ]
    async with store.transaction() as tx:
        await tx.add_outbox(rows)
    await store.mark_sent(["n-0", "n-1"])
    now[0] = 1200.0
    transport = MemoryTransport()
    await transport.connect()
    # A long grace: the sweeper leaves the pending row alone, so only the prune changes rows.
    relay = OutboxRelay(
        store,
        transport,
        Naming("sweep"),
        sweep_interval=0.01,
        sweep_grace=1e9,
        clock=lambda: now[0],
    )
    everything = "SELECT message_id FROM leveret_outbox ORDER BY position"
    async with store.transaction() as tx:
        assert await tx.fetchall(everything) == [("n-0",), ("n-1",), ("n-2",)]
    sweeper = asyncio.create_task(relay.run())
    try:

        async def pruned() -> bool:
            async with store.transaction() as tx:
                return await tx.fetchall(everything) == [("n-2",)]

        await eventually(pruned, timeout=10, what="the old sent rows to be pruned")
        assert [r.message_id for r in await store.pending_outbox()] == ["n-2"]
        assert not sweeper.done()
    finally:
        sweeper.cancel()
        await asyncio.gather(sweeper, return_exceptions=True)
        await transport.close()
        await store.close()
