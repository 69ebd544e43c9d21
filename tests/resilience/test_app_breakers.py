"""Breakers in running apps, on memory and on RabbitMQ: real nacks, real timeouts, real siblings."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from contracts.inventory import ReserveInventory
from contracts.orders import GetOrder, LineItem, OrderView, PlaceOrder
from contracts.payment import ChargePayment
from framework import Context, QueryContext, RetryPolicy, Service, Unroutable
from framework import envelope as env
from framework.resilience import (
    DEFERRALS,
    BreakerClosed,
    BreakerConfig,
    BreakerEvent,
    BreakerOpened,
    Breakers,
    CachedReply,
    Downstream,
    State,
    TransitionReason,
    WhenOpen,
    defer_when_open,
)
from framework.transport.base import (
    BindingSpec,
    Consumer,
    Delivery,
    QueueSpec,
    Topology,
    Transport,
)
from tests.resilience.conftest import Backend, next_item, start_app

ITEMS = [LineItem(sku="apple", qty=1, unit_price_cents=100)]
RESERVE = ReserveInventory.__wire_name__
CHARGE = ChargePayment.__wire_name__


def on(breakers: Breakers, name: str, kind: type[BreakerEvent]) -> asyncio.Event:
    """An event set each time breaker ``name`` emits a ``kind`` event."""
    seen = asyncio.Event()
    breakers[name].subscribe(lambda e: seen.set() if isinstance(e, kind) else None)
    return seen


async def declare_queue(
    transport: Transport, exchange: str, key: str, name: str, *, max_length: int | None = None
) -> None:
    overflow = "reject-publish" if max_length is not None else None
    await transport.declare(
        Topology(
            queues=(QueueSpec(name, max_length=max_length, overflow=overflow),),
            bindings=(BindingSpec(name, exchange, key),),
        )
    )


class Sink:
    """A consumer of one queue that can be stopped and started again; acks and remembers ids."""

    def __init__(self, transport: Transport, queue: str) -> None:
        self.transport = transport
        self.queue = queue
        self.ids: list[str] = []
        self._arrivals: asyncio.Queue[str] = asyncio.Queue()
        self._consumer: Consumer | None = None

    async def start(self) -> None:
        self._consumer = await self.transport.consume(self.queue, self._on, prefetch=50)

    async def stop(self) -> None:
        assert self._consumer is not None
        await self._consumer.cancel()

    async def until(self, done: Callable[[list[str]], bool], timeout: float = 30.0) -> None:
        """Wait until ``done(ids)`` holds, failing the test after ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            while not done(self.ids):
                await self._arrivals.get()

    async def _on(self, delivery: Delivery) -> None:
        await delivery.ack()
        self.ids.append(delivery.message_id or "")
        self._arrivals.put_nowait(self.ids[-1])


async def test_a_full_downstream_trips_its_breaker_and_nothing_is_lost(backend: Backend) -> None:
    """Capped queue, consumer stopped: nacks open the breaker while other sends keep going;
    the consumer comes back, the breaker closes, and every command arrives."""
    inventory = Downstream(
        "inventory",
        config=BreakerConfig(
            window_size=5,
            minimum_calls=3,
            wait_in_open=0.3,
            permitted_calls_in_half_open=2,
            automatic_transition=True,
        ),
        when_open=WhenOpen.WAIT,
        max_wait=30,
        retry_interval=0.05,
    )
    breakers = Breakers([inventory, Downstream("payment")], status=False)
    app = await start_app(backend, [], breakers=breakers)
    watcher = await backend.connected()
    capped = f"{backend.prefix}.inventory-stub"
    healthy = f"{backend.prefix}.payment-stub"
    await declare_queue(watcher, app.naming.commands, RESERVE, capped, max_length=5)
    await declare_queue(watcher, app.naming.commands, CHARGE, healthy)
    sink = Sink(watcher, capped)
    await sink.start()
    opened = on(breakers, "inventory", BreakerOpened)
    closed = on(breakers, "inventory", BreakerClosed)
    reopened = asyncio.Event()
    breakers["inventory"].subscribe(
        lambda e: (
            reopened.set()
            if isinstance(e, BreakerOpened) and e.reason is TransitionReason.PROBES_FAILED
            else None
        )
    )

    sent = [await app.send(ReserveInventory(order_id=f"o-{i}", items=ITEMS)) for i in range(3)]
    await sink.until(lambda ids: len(ids) == 3)
    await sink.stop()

    async def produce() -> None:
        for i in range(3, 40):
            sent.append(await app.send(ReserveInventory(order_id=f"o-{i}", items=ITEMS)))

    producer = asyncio.create_task(produce())
    await next_item_event(opened)
    assert breakers["inventory"].metrics().failed >= 1
    charged = [
        await app.send(ChargePayment(order_id=f"o-{i}", customer_id="c", amount_cents=1))
        for i in range(5)
    ]
    assert len(set(charged)) == 5  # another downstream is not held up
    assert await watcher.queue_depth(capped) == 5
    assert not producer.done()
    await next_item_event(reopened)  # probes went out, were nacked, and the breaker re-opened
    assert not producer.done()
    closed.clear()
    await sink.start()
    async with asyncio.timeout(30):
        await producer
        await closed.wait()
    await sink.until(lambda ids: set(sent) <= set(ids))
    assert breakers["inventory"].state is State.CLOSED
    assert len(sent) == 40
    assert set(sink.ids) == set(sent)  # nothing lost (a retried confirm timeout may repeat one)
    assert breakers["payment"].state is State.CLOSED


async def next_item_event(event: asyncio.Event, timeout: float = 20.0) -> None:
    """Wait for ``event``, failing the test after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        await event.wait()


def orders_service() -> Service:
    orders = Service("orders")

    @orders.query
    async def get_order(q: GetOrder, ctx: QueryContext) -> OrderView:
        return OrderView(order_id=q.order_id, customer_id="c", status="paid", total_cents=42)

    return orders


async def test_a_cached_query_answers_while_its_service_is_stopped(backend: Backend) -> None:
    """With the orders service down, queries answer from the cache, and say so."""
    downstream = Downstream(
        "orders",
        config=BreakerConfig(window_size=4, minimum_calls=4, wait_in_open=60),
        fallback=CachedReply(max_age=300),
    )
    breakers = Breakers([downstream], status=False)
    server = await start_app(backend, [orders_service()])
    client = await start_app(backend, [], breakers=breakers)
    fresh = {
        i: await client.request(GetOrder(order_id=f"o-{i}"), timeout=5, with_meta=True)
        for i in (1, 2)
    }
    assert not any(a.from_fallback for a in fresh.values())
    await server.stop(grace=0)

    answers = [
        await client.request(GetOrder(order_id=f"o-{1 + i % 2}"), timeout=0.3, with_meta=True)
        for i in range(6)
    ]
    assert [a.reply for a in answers] == [fresh[1 + i % 2].reply for i in range(6)]
    assert all(a.fallback == "cache" and a.breaker == "orders" for a in answers)
    assert [a.cause for a in answers[:2]] == ["TimeoutError", "TimeoutError"]
    assert {a.cause for a in answers[2:]} == {"breaker_open"}  # 2 of 4 failed: open
    assert all(a.age is not None and a.age >= 0 for a in answers)
    assert breakers["orders"].state is State.OPEN


def worker(name: str) -> Service:
    """A service whose workers share breakers (the handler is beside the point)."""
    service = Service(name)

    @service.command
    async def place_order(cmd: PlaceOrder) -> None:
        return None

    return service


async def test_sibling_workers_open_and_close_together(backend: Backend) -> None:
    """One worker sees the downstream fail and opens; its sibling opens too, then closes with it."""
    config = BreakerConfig(window_size=3, minimum_calls=3, wait_in_open=60)

    def make() -> Breakers:
        return Breakers([Downstream("inventory", config=config)], shared=True)

    first, second = make(), make()
    app_a = await start_app(backend, [worker("orders")], breakers=first)
    await start_app(backend, [worker("orders")], breakers=second)
    assert first.group == second.group == "orders"
    sibling_opened = on(second, "inventory", BreakerOpened)
    sibling_closed = on(second, "inventory", BreakerClosed)
    heard: list[BreakerEvent] = []
    second["inventory"].subscribe(heard.append)
    for i in range(3):  # nobody consumes inventory commands: each send comes back unroutable
        with pytest.raises(Unroutable):
            await app_a.send(ReserveInventory(order_id=f"o-{i}", items=ITEMS))
    assert first["inventory"].state is State.OPEN
    await next_item_event(sibling_opened)
    mirrored = heard[0]
    assert isinstance(mirrored, BreakerOpened)
    assert (mirrored.reason, mirrored.origin) == (TransitionReason.REMOTE, first.worker_id)
    assert mirrored.wait is not None
    assert 0 < mirrored.wait <= 60
    assert second["inventory"].metrics().buffered == 0  # counting stays local
    first["inventory"].transition_to_closed()
    await next_item_event(sibling_closed)
    assert second["inventory"].state is State.CLOSED


async def test_a_handler_defers_its_message_until_the_breaker_closes(backend: Backend) -> None:
    """A deferring handler's message comes back after the wait, with no attempt used up."""
    orders = Service("orders")
    runs: asyncio.Queue[tuple[int, int]] = asyncio.Queue()

    @orders.command(retry=RetryPolicy.none())
    @defer_when_open
    async def place_order(cmd: PlaceOrder, ctx: Context) -> None:
        await runs.put((ctx.attempt, ctx.headers.get(DEFERRALS, 0)))
        await ctx.send(ReserveInventory(order_id=cmd.order_id, items=cmd.items))

    breakers = Breakers([Downstream("inventory")], defer_delays=(0.3,), status=False)
    app = await start_app(backend, [orders], breakers=breakers)
    stub = f"{backend.prefix}.inventory-stub"
    await declare_queue(await backend.connected(), app.naming.commands, RESERVE, stub)
    reserved = await backend.collect(stub)
    breakers["inventory"].transition_to_forced_open()
    await app.send(PlaceOrder(order_id="o-1", customer_id="c", items=ITEMS, address="a"))
    assert await next_item(runs) == (0, 0)
    breakers["inventory"].transition_to_closed()
    assert await next_item(runs) == (0, 1)
    delivered = await next_item(reserved)
    assert delivered.type == RESERVE
    queue = app.naming.handler_queue("orders", "orders.place_order")
    probe = await backend.connected()
    assert await probe.queue_depth(app.naming.dlq(queue)) == 0


async def test_deferrals_are_bounded(backend: Backend) -> None:
    """Past max_deferrals the refusal fails the handler: here, straight to the DLQ."""
    orders = Service("orders")

    @orders.command(retry=RetryPolicy.none())
    @defer_when_open(max_deferrals=1)
    async def place_order(cmd: PlaceOrder, ctx: Context) -> None:
        await ctx.send(ReserveInventory(order_id=cmd.order_id, items=cmd.items))

    breakers = Breakers([Downstream("inventory")], defer_delays=(0.05,), status=False)
    app = await start_app(backend, [orders], breakers=breakers)
    queue = app.naming.handler_queue("orders", "orders.place_order")
    dead = await backend.collect(app.naming.dlq(queue))
    breakers["inventory"].transition_to_forced_open()
    await app.send(PlaceOrder(order_id="o-1", customer_id="c", items=ITEMS, address="a"))
    message = await next_item(dead)
    assert message.headers.get(DEFERRALS) == 1
    assert message.headers.get(env.EXCEPTION_TYPE) == "BreakerOpen"
