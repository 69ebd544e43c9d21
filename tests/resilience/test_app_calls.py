"""Call breakers in running apps, on memory and on RabbitMQ: deferral, siblings, status,
metrics."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from contracts.orders import LineItem, PlaceOrder
from framework import App, BreakerOpen, Context, RetryPolicy, Service, cli
from framework.cli.breakers import ask_workers
from framework.metrics import PrometheusMetrics
from framework.resilience import (
    DEFERRALS,
    BreakerClosed,
    BreakerConfig,
    BreakerOpened,
    Breakers,
    ExternalCall,
    State,
    TransitionReason,
    defer_when_open,
)
from framework.store import store_from_url
from framework.testing.harness import Harness
from tests.resilience.conftest import Backend, next_item, start_app

GATEWAY = "payment-gateway"
ITEMS = [LineItem(sku="apple", qty=1, unit_price_cents=100)]


class GatewayDown(Exception):
    """What the fake gateway raises when it fails."""


def order(i: int) -> PlaceOrder:
    return PlaceOrder(order_id=f"o-{i}", customer_id="c", items=ITEMS, address="a")


@pytest.mark.parametrize("transactional", [False, True], ids=["plain", "transactional"])
async def test_a_refused_call_defers_the_message_and_nothing_is_lost(
    backend: Backend, transactional: bool
) -> None:
    """While the gateway's breaker refuses, each order is deferred (no attempt used up); once it
    closes every order is charged exactly once and nothing reaches the DLQ — also for a
    ``transactional=True`` handler, which the app runs inside a wrapper of its own."""
    orders = Service("orders")
    breakers = Breakers([ExternalCall(GATEWAY, timeout=5)], defer_delays=(0.3,), status=False)
    runs: asyncio.Queue[tuple[str, int, int]] = asyncio.Queue()
    charged: asyncio.Queue[str] = asyncio.Queue()

    @orders.command(retry=RetryPolicy.none(), transactional=transactional)
    @defer_when_open
    async def place_order(cmd: PlaceOrder, ctx: Context) -> None:
        await runs.put((cmd.order_id, ctx.attempt, ctx.headers.get(DEFERRALS, 0)))
        async with breakers.call(GATEWAY):
            await charged.put(cmd.order_id)  # the gateway call

    store = store_from_url("memory://") if transactional else None
    app = await start_app(backend, [orders], breakers=breakers, store=store)
    breakers[GATEWAY].transition_to_forced_open()
    for i in range(3):
        await app.send(order(i))
    first = sorted([await next_item(runs) for _ in range(3)])
    assert first == [("o-0", 0, 0), ("o-1", 0, 0), ("o-2", 0, 0)]
    assert charged.empty()
    breakers[GATEWAY].transition_to_closed()
    done = sorted([await next_item(charged) for _ in range(3)])
    assert done == ["o-0", "o-1", "o-2"]
    queue = app.naming.handler_queue("orders", "orders.place_order")
    probe = await backend.connected()
    assert await probe.queue_depth(app.naming.dlq(queue)) == 0
    assert await probe.queue_depth(queue) == 0
    later = [runs.get_nowait() for _ in range(runs.qsize())]
    assert all(attempt == 0 and deferrals >= 1 for _, attempt, deferrals in later)
    assert charged.empty()  # each order charged once
    assert breakers[GATEWAY].metrics().buffered == 3


async def test_sibling_workers_share_call_breaker_transitions(backend: Backend) -> None:
    """One worker's gateway failures open its call breaker; its sibling opens and closes too."""
    config = BreakerConfig(window_size=3, minimum_calls=3, wait_in_open=60)

    def make() -> Breakers:
        return Breakers([ExternalCall(GATEWAY, config=config)], shared=True)

    first, second = make(), make()
    await start_app(backend, [Service("orders")], breakers=first)
    await start_app(backend, [Service("orders")], breakers=second)
    opened, closed = asyncio.Event(), asyncio.Event()
    heard: list[BreakerOpened] = []

    def listen(event: object) -> None:
        if isinstance(event, BreakerOpened):
            heard.append(event)
            opened.set()
        elif isinstance(event, BreakerClosed):
            closed.set()

    second[GATEWAY].subscribe(listen)

    @first.guard(GATEWAY)
    async def charge() -> None:
        raise GatewayDown("503")

    for _ in range(3):
        with pytest.raises(GatewayDown):
            await charge()
    assert first[GATEWAY].state is State.OPEN
    async with asyncio.timeout(20):
        await opened.wait()
    assert (heard[0].reason, heard[0].origin) == (TransitionReason.REMOTE, first.worker_id)
    assert second[GATEWAY].metrics().buffered == 0  # counting stays local
    first[GATEWAY].transition_to_closed()
    async with asyncio.timeout(20):
        await closed.wait()
    assert second[GATEWAY].state is State.CLOSED


@pytest.mark.rabbitmq
async def test_workers_report_their_call_breakers(amqp_url: str, prefix: str) -> None:
    """``leveret breakers`` (ask_workers) gets the call breaker's state and numbers."""
    backend = Backend("amqp", prefix, amqp_url)

    def make() -> Breakers:
        return Breakers([ExternalCall(GATEWAY, config=BreakerConfig(window_size=20))])

    worker = make()
    try:
        await start_app(backend, [Service("orders")], breakers=worker)
        async with worker.call(GATEWAY):
            pass
        worker[GATEWAY].transition_to_forced_open()
        asking = await start_app(backend, [Service("orders")], breakers=make(), start=False)
        replies = await ask_workers(asking, timeout=1.0)
    finally:
        await backend.close()
    statuses = [b for r in replies for b in r.breakers if r.worker == worker.worker_id]
    assert [(s.name, s.state, s.buffered, s.window) for s in statuses] == [
        (GATEWAY, "forced_open", 1, "last 20 calls")
    ]


def test_a_memory_app_lists_its_call_breakers(capsys: pytest.CaptureFixture[str]) -> None:
    """The declared listing names the external call and its timeout."""
    assert cli.main(["breakers", "tests.resilience.call_app:app"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith("  ")]
    assert [row[0] for row in rows[1:]] == ["inventory", GATEWAY]
    assert "external calls, timeout 2s" in out


async def test_call_breakers_are_in_the_prometheus_metrics() -> None:
    """The state gauge, transitions and refusals of a call breaker are exported like the rest."""
    registry = CollectorRegistry()
    breakers = Breakers([ExternalCall(GATEWAY)], status=False)
    app = App([], breakers=breakers, observers=[PrometheusMetrics(registry=registry)])

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"breaker": GATEWAY, **labels})

    async with Harness(app):
        assert sample("leveret_breaker_state", state="closed") == 1
        breakers[GATEWAY].transition_to_forced_open()
        assert sample("leveret_breaker_state", state="forced_open") == 1
        with pytest.raises(BreakerOpen):
            async with breakers.call(GATEWAY):
                pass
    transitions = sample(
        "leveret_breaker_transitions_total", from_state="closed", to_state="forced_open"
    )
    assert transitions == 1
    assert sample("leveret_breaker_calls_not_permitted_total") == 1
