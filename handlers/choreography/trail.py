"""The order trail: what replaces ``leveret sagas`` when the order flow is choreographed.

An orchestrated order is a saga instance: ``leveret sagas list`` and ``show`` read its state and
history. A choreographed order is nowhere in one piece — each service holds its own part — so
the ``order_trail`` service subscribes to every event of the flow and records, per order, each
event with when it saw it and what it said (``order_trail``), and one summary row
(``order_trail_head``: status, furthest event, first and latest time). It answers
``GetOrderTrail`` (an order's timeline, like ``leveret sagas show``) and ``ListOrderTrails`` (by
status, and the orders whose flow stopped moving: no event for ``idle_seconds``, like
``leveret sagas list --state running`` with their age); ``python -m handlers.choreography``
prints the same from the database, without a broker.

The trail sees each event once per message id (the inbox of its queues, and the message id as the
row's key). Each kind of event comes on a queue of its own, so the trail may see an event before
the one that caused it (its queue was shorter): a timeline is ordered by the event's step in the
flow (``FLOW_STEPS``: every path through the flow visits them in that order), then by when the
trail saw it, and an order's latest event is the furthest step it reached.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from contracts.inventory import InventoryRejected, InventoryReleased, InventoryReserved
from contracts.notifications import CustomerNotified
from contracts.orders import OrderCancelled, OrderCompleted, OrderPlaced
from contracts.payment import PaymentCharged, PaymentDeclined, PaymentRefunded
from contracts.shipping import OrderShipped, ShippingFailed
from contracts.trail import (
    GetOrderTrail,
    ListOrderTrails,
    OrderTrail,
    OrderTrailList,
    TrailEntry,
    TrailStatus,
    TrailSummary,
)
from framework import Context, QueryContext, Service
from framework.messages import Event
from framework.store import Store, StoreTx

__all__ = ["FLOW_STEPS", "TRAIL_SCHEMA", "build_trail", "list_trails", "load_trail"]

# The flow's events in causal order: on any path an order takes, an event of a later group is
# caused (through the others) by one of an earlier group.
FLOW_STEPS: tuple[tuple[type[Event], ...], ...] = (
    (OrderPlaced,),
    (InventoryReserved, InventoryRejected),
    (PaymentCharged, PaymentDeclined),
    (OrderShipped, ShippingFailed),
    (PaymentRefunded,),
    (InventoryReleased,),
    (OrderCompleted, OrderCancelled),
    (CustomerNotified,),
)
_RANK = {event.__wire_name__: rank for rank, group in enumerate(FLOW_STEPS) for event in group}

TRAIL_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS order_trail (
        message_id TEXT PRIMARY KEY,
        order_id TEXT NOT NULL,
        seen_at DOUBLE PRECISION NOT NULL,
        step INTEGER NOT NULL,
        event TEXT NOT NULL,
        detail TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS order_trail_by_order ON order_trail (order_id, step, seen_at)",
    """CREATE TABLE IF NOT EXISTS order_trail_head (
        order_id TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        last_event TEXT NOT NULL,
        last_step INTEGER NOT NULL,
        first_at DOUBLE PRECISION NOT NULL,
        last_at DOUBLE PRECISION NOT NULL,
        events INTEGER NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS order_trail_head_by_status ON order_trail_head (status, last_at)",
)

_HEAD = (
    "INSERT INTO order_trail_head "
    "(order_id, status, last_event, last_step, first_at, last_at, events) "
    "VALUES (?, ?, ?, ?, ?, ?, 1) ON CONFLICT (order_id) DO UPDATE SET "
    "last_event = CASE WHEN excluded.last_step >= order_trail_head.last_step "
    "THEN excluded.last_event ELSE order_trail_head.last_event END, "
    "last_step = CASE WHEN excluded.last_step >= order_trail_head.last_step "
    "THEN excluded.last_step ELSE order_trail_head.last_step END, "
    "first_at = CASE WHEN excluded.first_at < order_trail_head.first_at "
    "THEN excluded.first_at ELSE order_trail_head.first_at END, "
    "last_at = CASE WHEN excluded.last_at > order_trail_head.last_at "
    "THEN excluded.last_at ELSE order_trail_head.last_at END, "
    "events = order_trail_head.events + 1, "
    # An ended order stays ended: the notification comes after its end.
    "status = CASE WHEN order_trail_head.status = 'placed' THEN excluded.status "
    "ELSE order_trail_head.status END"
)


async def load_trail(tx: StoreTx, order_id: str) -> OrderTrail | None:
    """The trail of ``order_id``, None if the trail never saw it."""
    head = await tx.fetchone("SELECT status FROM order_trail_head WHERE order_id = ?", order_id)
    if head is None:
        return None
    rows = await tx.fetchall(
        "SELECT seen_at, event, detail FROM order_trail WHERE order_id = ? "
        "ORDER BY step, seen_at, message_id",
        order_id,
    )
    return OrderTrail(
        order_id=order_id,
        status=head[0],
        entries=[TrailEntry(at=row[0], event=row[1], detail=row[2]) for row in rows],
    )


async def list_trails(tx: StoreTx, query: ListOrderTrails, *, now: float) -> OrderTrailList:
    """The orders ``query`` asks for, oldest latest event first; ``now`` in Unix seconds."""
    clauses: list[str] = []
    args: list[object] = []
    if query.status is not None:
        clauses.append("status = ?")
        args.append(query.status)
    if query.idle_seconds is not None:
        clauses.append("last_at <= ?")
        args.append(now - query.idle_seconds)
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    rows = await tx.fetchall(
        "SELECT order_id, status, last_event, first_at, last_at, events FROM order_trail_head"
        f"{where} ORDER BY last_at, order_id LIMIT ?",
        *args,
        query.limit,
    )
    return OrderTrailList(
        orders=[
            TrailSummary(
                order_id=row[0],
                status=row[1],
                last_event=row[2],
                first_at=row[3],
                last_at=row[4],
                events=row[5],
            )
            for row in rows
        ]
    )


def build_trail(store: Store, *, clock: Callable[[], float] = time.time) -> Service:
    """The ``order_trail`` service: records the flow's events, answers the trail queries.

    Args:
        store: where the queries read (the app's store).
        clock: Unix seconds, for when an event was seen and for ``idle_seconds``.
    """
    trail = Service("order_trail", schema=TRAIL_SCHEMA)

    async def record(
        ctx: Context,
        evt: Event,
        order_id: str,
        detail: str = "",
        status: TrailStatus = "placed",
    ) -> None:
        now = clock()
        event = type(evt).__wire_name__
        inserted = await ctx.tx.fetchone(
            "INSERT INTO order_trail (message_id, order_id, seen_at, step, event, detail) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (message_id) DO NOTHING RETURNING message_id",
            ctx.message_id,
            order_id,
            now,
            _RANK[event],
            event,
            detail,
        )
        if inserted is not None:
            await ctx.tx.execute(_HEAD, order_id, status, event, _RANK[event], now, now)

    @trail.event(transactional=True)
    async def placed(evt: OrderPlaced, ctx: Context) -> None:
        items = ", ".join(f"{i.qty} {i.sku}" for i in evt.items)
        await record(ctx, evt, evt.order_id, f"{items}; {evt.total_cents} cents; {evt.address}")

    @trail.event(transactional=True)
    async def reserved(evt: InventoryReserved, ctx: Context) -> None:
        await record(ctx, evt, evt.order_id)

    @trail.event(transactional=True)
    async def rejected(evt: InventoryRejected, ctx: Context) -> None:
        await record(ctx, evt, evt.order_id, evt.reason)

    @trail.event(transactional=True)
    async def released(evt: InventoryReleased, ctx: Context) -> None:
        await record(ctx, evt, evt.order_id)

    @trail.event(transactional=True)
    async def charged(evt: PaymentCharged, ctx: Context) -> None:
        await record(ctx, evt, evt.order_id, f"{evt.amount_cents} cents, {evt.payment_id}")

    @trail.event(transactional=True)
    async def declined(evt: PaymentDeclined, ctx: Context) -> None:
        await record(ctx, evt, evt.order_id, evt.reason)

    @trail.event(transactional=True)
    async def refunded(evt: PaymentRefunded, ctx: Context) -> None:
        await record(ctx, evt, evt.order_id, f"{evt.amount_cents} cents")

    @trail.event(transactional=True)
    async def shipped(evt: OrderShipped, ctx: Context) -> None:
        await record(ctx, evt, evt.order_id, evt.tracking_number)

    @trail.event(transactional=True)
    async def shipping_failed(evt: ShippingFailed, ctx: Context) -> None:
        await record(ctx, evt, evt.order_id, evt.reason)

    @trail.event(transactional=True)
    async def completed(evt: OrderCompleted, ctx: Context) -> None:
        await record(ctx, evt, evt.order_id, status="completed")

    @trail.event(transactional=True)
    async def cancelled(evt: OrderCancelled, ctx: Context) -> None:
        await record(ctx, evt, evt.order_id, evt.reason, status="cancelled")

    @trail.event(transactional=True)
    async def notified(evt: CustomerNotified, ctx: Context) -> None:
        await record(ctx, evt, evt.order_id, evt.template)

    @trail.query
    async def get_order_trail(query: GetOrderTrail, ctx: QueryContext) -> OrderTrail:
        async with store.transaction() as tx:
            found = await load_trail(tx, query.order_id)
        if found is None:
            raise LookupError(f"no order {query.order_id} in the trail")
        return found

    @trail.query
    async def list_order_trails(query: ListOrderTrails, ctx: QueryContext) -> OrderTrailList:
        async with store.transaction() as tx:
            return await list_trails(tx, query, now=clock())

    return trail
