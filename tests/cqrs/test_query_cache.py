"""Query caching: a query handler declares how long its reply may be served from the
requesting side's cache, keyed by the query's fields, timed by the requester's clock."""

from __future__ import annotations

import pytest

from contracts.orders import GetOrder, ListOrders, OrderList, OrderView, PlaceOrder
from framework import QueryContext, RegistrationError, Service
from framework.bus import Bus
from tests.app.conftest import Backend


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_reply_is_served_from_cache_until_its_ttl(backend: Backend) -> None:
    """Within the TTL the same query is answered from the requester's cache; another query's
    fields, an expired entry and an uncached query all reach the handler."""
    orders = Service("orders")
    asked: list[str] = []

    @orders.query(cache_ttl=5.0)
    async def get_order(q: GetOrder, ctx: QueryContext) -> OrderView:
        asked.append(q.order_id)
        return OrderView(
            order_id=q.order_id, customer_id="c", status="placed", total_cents=len(asked)
        )

    @orders.query
    async def list_orders(q: ListOrders, ctx: QueryContext) -> OrderList:
        asked.append("list")
        return OrderList(orders=[])

    app = await backend.app([orders])
    clock = FakeClock()
    requester = Bus(app.transport, app.codec, app.naming, clock=clock)

    first = await requester.request(GetOrder(order_id="o-1"), timeout=10)
    clock.now += 4.9
    assert await requester.request(GetOrder(order_id="o-1"), timeout=10) == first
    assert asked == ["o-1"]

    await requester.request(GetOrder(order_id="o-2"), timeout=10)
    assert asked == ["o-1", "o-2"]

    clock.now += 0.2  # o-1 is now 5.1 s old
    refreshed = await requester.request(GetOrder(order_id="o-1"), timeout=10)
    assert refreshed.total_cents == 3
    assert asked == ["o-1", "o-2", "o-1"]

    await requester.request(ListOrders(), timeout=10)
    await requester.request(ListOrders(), timeout=10)
    assert asked.count("list") == 2

    other = Bus(app.transport, app.codec, app.naming, clock=clock)
    await other.request(GetOrder(order_id="o-2"), timeout=10)
    assert asked.count("o-2") == 2  # each requesting Bus has its own cache


def test_cache_ttl_is_for_queries_only() -> None:
    """cache_ttl on a command is rejected, saying only query replies can be cached."""
    svc = Service("orders")
    with pytest.raises(RegistrationError, match=r"only query replies can be cached"):

        @svc.command(cache_ttl=1.0)  # type: ignore[call-overload]
        async def place(cmd: PlaceOrder) -> None: ...


def test_cache_ttl_must_be_positive() -> None:
    """A zero or negative cache_ttl is rejected."""
    svc = Service("orders")
    with pytest.raises(RegistrationError, match=r"cache_ttl=0 must be a positive number"):
        svc.query(cache_ttl=0)
