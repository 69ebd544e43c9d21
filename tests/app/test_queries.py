"""Queries over request/reply on both transports: replies, errors, timeouts, concurrency."""

from __future__ import annotations

import asyncio

import pytest

from contracts.orders import GetOrder, OrderView
from framework import QueryContext, QueryFailed, QueryTimeout, Service, Unroutable
from tests.app.conftest import Backend


def view(order_id: str) -> OrderView:
    return OrderView(order_id=order_id, customer_id="c", status="placed", total_cents=1)


async def test_request_reply(backend: Backend) -> None:
    """A query is answered by its handler with the declared reply type."""
    orders = Service("orders")

    @orders.query
    async def get_order(q: GetOrder, ctx: QueryContext) -> OrderView:
        return view(q.order_id)

    app = await backend.app([orders])
    reply = await app.request(GetOrder(order_id="o-7"), timeout=5)
    assert reply == view("o-7")


async def test_concurrent_requests_run_concurrently(backend: Backend) -> None:
    """Fifty queries from one process are all in flight at once (none waits for another)."""
    orders = Service("orders")
    n = 50
    arrived = 0
    all_arrived = asyncio.Event()

    @orders.query(prefetch=n)
    async def get_order(q: GetOrder, ctx: QueryContext) -> OrderView:
        nonlocal arrived
        arrived += 1
        if arrived == n:
            all_arrived.set()
        await all_arrived.wait()  # no reply leaves until every request has arrived
        return view(q.order_id)

    app = await backend.app([orders])
    replies = await asyncio.gather(
        *(app.request(GetOrder(order_id=f"o-{i}"), timeout=10) for i in range(n))
    )
    assert [r.order_id for r in replies] == [f"o-{i}" for i in range(n)]


async def test_handler_error_fails_the_caller_fast(backend: Backend) -> None:
    """A query handler that raises makes the caller raise QueryFailed, not wait for a timeout."""
    orders = Service("orders")

    @orders.query
    async def get_order(q: GetOrder, ctx: QueryContext) -> OrderView:
        raise LookupError(f"no order {q.order_id}")

    app = await backend.app([orders])
    with pytest.raises(QueryFailed, match="LookupError: no order o-1") as info:
        await app.request(GetOrder(order_id="o-1"), timeout=30)
    assert info.value.error_type == "LookupError"


async def test_timeout(backend: Backend) -> None:
    """A reply that does not come in time raises QueryTimeout naming the query."""
    orders = Service("orders")
    never = asyncio.Event()

    @orders.query
    async def get_order(q: GetOrder, ctx: QueryContext) -> OrderView:
        await never.wait()
        return view(q.order_id)

    app = await backend.app([orders])
    with pytest.raises(QueryTimeout, match=r"'orders.get_order' got no reply within 0.2s"):
        await app.request(GetOrder(order_id="o-1"), timeout=0.2)
    never.set()


async def test_query_without_handler(backend: Backend) -> None:
    """A query nobody answers fails at once as unroutable."""
    app = await backend.app([])
    with pytest.raises(Unroutable):
        await app.request(GetOrder(order_id="o-1"), timeout=5)
