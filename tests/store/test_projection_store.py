"""The projection's checkpoint, event log and rebuild on the SQL stores (SQLite, PostgreSQL)."""

from __future__ import annotations

import pytest

from framework.cqrs import find_projection
from framework.store import Store
from handlers.orders import build_read_side
from tests.cqrs.support import cancelled, completed, placed, read_model
from tests.store.conftest import SQL_KINDS


@pytest.mark.parametrize("store_kind", SQL_KINDS)
async def test_projection_log_and_rebuild(store: Store) -> None:
    """Events are applied once each with increasing positions, and a rebuild from the log gives
    back the live read model."""
    service = build_read_side(store)
    await store.upgrade(service.migrations)
    projection = find_projection([service], "orders_view")
    assert projection is not None
    events = [
        ("e1", placed("o-1", "c-1", 2)),
        ("e2", completed("o-2")),
        ("e3", placed("o-2", "c-2", 1)),
        ("e1", placed("o-1", "c-1", 2)),
        ("e4", cancelled("o-1", "out of stock")),
    ]
    applied = []
    for message_id, event in events:
        async with store.transaction() as tx:
            applied.append(await projection.apply_live(tx, event, message_id))
    assert applied == [True, True, True, False, True]
    assert await projection.position(store) == 4
    async with store.transaction() as tx:
        log = await tx.fetchall(
            "SELECT position, message_id, wire_name FROM leveret_event_log "
            "WHERE projection = ? ORDER BY position",
            "orders_view",
        )
        checkpoint = await tx.fetchone(
            "SELECT position, last_message_id FROM leveret_projection WHERE name = ?",
            "orders_view",
        )
    assert [row[:2] for row in log] == [(1, "e1"), (2, "e2"), (3, "e3"), (4, "e4")]
    assert [row[2] for row in log] == [type(event).__wire_name__ for _, event in events[:3]] + [
        type(events[4][1]).__wire_name__
    ]
    assert checkpoint == (4, "e4")
    live = await read_model(store)
    assert live == [
        ("o-1", "c-1", "cancelled", 200, "out of stock", "placed", 0, 0),
        ("o-2", "c-2", "completed", 100, None, "shipped", 0, 0),
    ]
    async with store.transaction() as tx:
        await tx.execute("DELETE FROM orders_view")
        await tx.execute("DELETE FROM order_steps")
    assert await projection.rebuild(store) == 4
    assert await read_model(store) == live
