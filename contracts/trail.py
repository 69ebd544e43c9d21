"""The order trail: what an operator asks about orders whose flow has no coordinator.

In the choreographed order flow (``handlers.choreography``) no saga instance holds an order's
state, so ``leveret sagas`` has nothing to show; the ``order_trail`` service records every event
of each order instead and answers these queries.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from framework.messages import Query, Reply

__all__ = [
    "GetOrderTrail",
    "ListOrderTrails",
    "OrderTrail",
    "OrderTrailList",
    "TrailEntry",
    "TrailStatus",
    "TrailSummary",
]

# Where an order's flow stands: placed until the orders service says how it ended.
TrailStatus = Literal["placed", "completed", "cancelled"]


class TrailEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One event of an order, as the trail saw it: when (Unix seconds), its wire name (the
    publishing service first) and what it said."""

    at: float
    event: str
    detail: str


class TrailSummary(msgspec.Struct, frozen=True, kw_only=True):
    """An order's trail in one line: its status, the furthest event of the flow it reached,
    when the trail saw its first and its latest event, and how many it saw."""

    order_id: str
    status: TrailStatus
    last_event: str
    first_at: float
    last_at: float
    events: int


class OrderTrail(Reply):
    """Every event of one order, in the order of the flow's steps."""

    __wire_name__ = "orders.order_trail"

    order_id: str
    status: TrailStatus
    entries: list[TrailEntry]


class GetOrderTrail(Query[OrderTrail]):
    __wire_name__ = "orders.get_order_trail"

    order_id: str


class OrderTrailList(Reply):
    __wire_name__ = "orders.order_trail_list"

    orders: list[TrailSummary]


class ListOrderTrails(Query[OrderTrailList]):
    """Orders by status, and those that saw no event for ``idle_seconds`` (a flow that stopped
    moving), the longest idle first."""

    __wire_name__ = "orders.list_order_trails"

    status: TrailStatus | None = None
    idle_seconds: Annotated[float, msgspec.Meta(ge=0)] | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100
