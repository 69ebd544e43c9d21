"""The outbox relay marks published rows as sent in batches, and still returns only after.

Many handlers publishing at once share ``mark_sent`` calls (one statement, one commit for many
rows); each ``publish`` returns once its own rows are marked, and a failed ``mark_sent`` fails
the publishes whose rows it carried, as a direct call did.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from framework.routing import Naming
from framework.saga.outbox import OutboxRelay
from framework.store.base import OutboxRow
from framework.store.memory import MemoryStore
from framework.transport.base import (
    Consumer,
    Delivery,
    DeliveryCallback,
    OutgoingMessage,
    QueueInfo,
    Topology,
    Transport,
)


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[list[str]] = []
        self.fail_next = False

    async def mark_sent(self, message_ids: Sequence[str]) -> None:
        self.calls.append(list(message_ids))
        await asyncio.sleep(0.01)  # a database round trip: publishes pile up meanwhile
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("database gone")
        await super().mark_sent(message_ids)


class InstantTransport(Transport):
    """Confirms every publish on the next loop turn."""

    async def connect(self) -> None: ...
    async def declare(self, topology: Topology) -> None: ...
    async def delete_queue(self, name: str) -> None: ...
    async def close(self) -> None: ...

    async def publish(
        self, message: OutgoingMessage, *, exchange: str, routing_key: str, mandatory: bool = True
    ) -> None:
        await asyncio.sleep(0)

    async def consume(self, queue: str, callback: DeliveryCallback, *, prefetch: int) -> Consumer:
        raise NotImplementedError

    async def request(
        self, message: OutgoingMessage, *, exchange: str, routing_key: str, timeout: float
    ) -> Delivery:
        raise NotImplementedError

    async def queue_depth(self, name: str) -> int:
        return 0

    async def queue_info(self, name: str) -> QueueInfo:
        raise NotImplementedError


def row(message_id: str) -> OutboxRow:
    return OutboxRow(
        message_id=message_id,
        exchange="shop.events",
        routing_key="orders.order_placed",
        body=b"{}",
        properties=b"{}",
        mandatory=False,
    )


async def stored(store: MemoryStore, ids: list[str]) -> list[OutboxRow]:
    rows = [row(i) for i in ids]
    async with store.transaction() as tx:
        await tx.add_outbox(rows)
    return rows


async def test_concurrent_publishes_share_mark_sent_calls_and_return_marked() -> None:
    store = CountingStore()
    relay = OutboxRelay(store, InstantTransport(), Naming("shop"))
    batches = [await stored(store, [f"m-{i}-a", f"m-{i}-b"]) for i in range(20)]

    async def publish(rows: list[OutboxRow]) -> bool:
        ok = await relay.publish(rows)
        # Returned: its rows are marked already, whatever batch carried them.
        pending = {r.message_id for r in await store.pending_outbox()}
        assert not pending & {r.message_id for r in rows}
        return ok

    assert await asyncio.gather(*(publish(b) for b in batches)) == [True] * 20
    assert await store.pending_outbox() == []
    assert sorted(i for call in store.calls for i in call) == sorted(
        r.message_id for b in batches for r in b
    )
    assert len(store.calls) < 20  # shared: 20 publishes, fewer calls


async def test_a_failed_mark_sent_fails_the_publishes_it_carried() -> None:
    store = CountingStore()
    relay = OutboxRelay(store, InstantTransport(), Naming("shop"))
    first = await stored(store, ["a"])
    store.fail_next = True
    with pytest.raises(ConnectionError, match="database gone"):
        await relay.publish(first)
    assert [r.message_id for r in await store.pending_outbox()] == ["a"]  # the sweeper's job
    assert await relay.publish(first) is True  # the next batch goes through
    assert await store.pending_outbox() == []
