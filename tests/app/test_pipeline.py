"""The consume pipeline on both transports: context, retries, DLQ, deadlines, shutdown."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from contracts.inventory import ReserveInventory
from contracts.orders import LineItem, OrderPlaced, PlaceOrder
from framework import (
    Context,
    Incoming,
    RejectMessage,
    RetryPolicy,
    Service,
    Unroutable,
)
from framework import envelope as env
from framework.middleware import Next
from tests.app.conftest import Backend, next_item

ITEMS = [LineItem(sku="apple", qty=1, unit_price_cents=100)]


def place(order_id: str = "o-1") -> PlaceOrder:
    return PlaceOrder(order_id=order_id, customer_id="c-1", items=ITEMS, address="1 Main St")


def header(delivery: Any, name: str) -> Any:
    value = delivery.headers.get(name)
    return value.decode() if isinstance(value, bytes) else value


async def test_handler_sends_and_publishes_with_correlation(backend: Backend) -> None:
    """A handler's send and publish carry the correlation id forward and name their cause."""
    orders, inventory, audit = Service("orders"), Service("inventory"), Service("audit")
    seen: asyncio.Queue[tuple[str, Context]] = asyncio.Queue()

    @orders.command
    async def place_order(cmd: PlaceOrder, ctx: Context) -> None:
        await seen.put(("place", ctx))
        await ctx.publish(
            OrderPlaced(
                order_id=cmd.order_id,
                customer_id=cmd.customer_id,
                items=cmd.items,
                total_cents=100,
                address=cmd.address,
            )
        )
        await ctx.send(ReserveInventory(order_id=cmd.order_id, items=cmd.items))

    @inventory.command
    async def reserve(cmd: ReserveInventory, ctx: Context) -> None:
        await seen.put(("reserve", ctx))

    @audit.event
    async def placed(evt: OrderPlaced, ctx: Context) -> None:
        await seen.put(("placed", ctx))

    app = await backend.app([orders, inventory, audit])
    first_id = await app.send(place(), correlation_id="corr-42")
    got = {}
    for _ in range(3):
        name, ctx = await next_item(seen)
        got[name] = ctx
    assert got["place"].message_id == first_id
    assert {c.correlation_id for c in got.values()} == {"corr-42"}
    assert got["reserve"].causation_id == first_id
    assert got["placed"].causation_id == first_id
    assert got["place"].attempt == 0


async def test_publish_with_a_message_id_of_the_handlers_own(backend: Backend) -> None:
    """ctx.publish(event, message_id=...) publishes under that id, still correlated."""
    orders, audit = Service("orders"), Service("audit")
    seen: asyncio.Queue[Context] = asyncio.Queue()

    @orders.command
    async def place_order(cmd: PlaceOrder, ctx: Context) -> None:
        placed = OrderPlaced(
            order_id=cmd.order_id,
            customer_id=cmd.customer_id,
            items=cmd.items,
            total_cents=100,
            address=cmd.address,
        )
        assert await ctx.publish(placed, message_id=f"{cmd.order_id}/placed") == "o-7/placed"

    @audit.event
    async def placed(evt: OrderPlaced, ctx: Context) -> None:
        await seen.put(ctx)

    app = await backend.app([orders, audit])
    first_id = await app.send(place("o-7"), correlation_id="corr-7")
    ctx = await next_item(seen)
    assert (ctx.message_id, ctx.correlation_id, ctx.causation_id) == (
        "o-7/placed",
        "corr-7",
        first_id,
    )


async def test_retries_then_dead_letter(backend: Backend) -> None:
    """A failing handler runs 1 + immediate + delayed times, then its message is in the DLQ."""
    orders = Service("orders")
    runs: list[int] = []

    @orders.command(retry=RetryPolicy(immediate=2, delays=(0.05, 0.1)))
    async def place_order(cmd: PlaceOrder, ctx: Context) -> None:
        runs.append(ctx.attempt)
        raise ValueError(f"boom {len(runs)}")

    app = await backend.app([orders])
    queue = app.naming.handler_queue("orders", "orders.place_order")
    dlq = await backend.collect(app.naming.dlq(queue))
    message_id = await app.send(place())
    dead = await next_item(dlq)
    assert runs == [0, 1, 2, 3, 4]
    assert dead.message_id == message_id
    assert header(dead, env.DEAD_REASON) == "handler_failed: ValueError"
    assert header(dead, env.EXCEPTION_TYPE) == "ValueError"
    assert header(dead, env.EXCEPTION_MESSAGE) == "boom 5"
    assert header(dead, env.ATTEMPT) == 5
    assert header(dead, env.ORIGINAL_QUEUE) == queue
    assert dead.type == "orders.place_order"
    assert dlq.empty()


async def test_retry_succeeds_on_a_later_attempt(backend: Backend) -> None:
    """A handler that fails once and then succeeds is acked; nothing reaches the DLQ."""
    orders = Service("orders")
    done = asyncio.Event()
    runs: list[int] = []

    @orders.command(retry=RetryPolicy(immediate=0, delays=(0.05,)))
    async def place_order(cmd: PlaceOrder, ctx: Context) -> None:
        runs.append(ctx.attempt)
        if len(runs) == 1:
            raise RuntimeError("transient")
        done.set()

    app = await backend.app([orders])
    queue = app.naming.handler_queue("orders", "orders.place_order")
    await app.send(place())
    async with asyncio.timeout(10):
        await done.wait()
    assert runs == [0, 1]
    probe = await backend.connected()
    assert await probe.queue_depth(app.naming.dlq(queue)) == 0


async def test_reject_skips_retries(backend: Backend) -> None:
    """RejectMessage sends the message straight to the DLQ after one run."""
    orders = Service("orders")
    runs = 0

    @orders.command
    async def place_order(cmd: PlaceOrder) -> None:
        nonlocal runs
        runs += 1
        raise RejectMessage("no such customer")

    app = await backend.app([orders])
    dlq = await backend.collect(
        app.naming.dlq(app.naming.handler_queue("orders", "orders.place_order"))
    )
    await app.send(place())
    dead = await next_item(dlq)
    assert runs == 1
    assert header(dead, env.DEAD_REASON) == "rejected: no such customer"


async def test_handler_deadline(backend: Backend) -> None:
    """A handler past its deadline is cancelled and counted as a HandlerTimeout failure."""
    orders = Service("orders")

    @orders.command(timeout=0.05, retry=RetryPolicy.none())
    async def place_order(cmd: PlaceOrder) -> None:
        await asyncio.Event().wait()

    app = await backend.app([orders])
    dlq = await backend.collect(
        app.naming.dlq(app.naming.handler_queue("orders", "orders.place_order"))
    )
    await app.send(place())
    dead = await next_item(dlq)
    assert header(dead, env.EXCEPTION_TYPE) == "HandlerTimeout"


async def test_shutdown_nacks_in_flight_messages(backend: Backend) -> None:
    """Handlers still running after the grace period are cancelled and their messages requeued."""
    orders = Service("orders")
    started = asyncio.Event()
    cancelled = asyncio.Event()

    @orders.command
    async def place_order(cmd: PlaceOrder) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    app = await backend.app([orders])
    queue = app.naming.handler_queue("orders", "orders.place_order")
    await app.send(place())
    async with asyncio.timeout(10):
        await started.wait()
    await app.stop(grace=0.05)
    assert cancelled.is_set()
    probe = await backend.connected()
    assert await probe.queue_depth(queue) == 1
    assert await probe.queue_depth(app.naming.dlq(queue)) == 0


async def test_drain_lets_handlers_finish(backend: Backend) -> None:
    """Stopping waits for in-flight handlers within the grace period and acks them."""
    orders = Service("orders")
    started, release, finished = asyncio.Event(), asyncio.Event(), asyncio.Event()

    @orders.command
    async def place_order(cmd: PlaceOrder) -> None:
        started.set()
        await release.wait()
        finished.set()

    app = await backend.app([orders])
    queue = app.naming.handler_queue("orders", "orders.place_order")
    await app.send(place())
    async with asyncio.timeout(10):
        await started.wait()
    stopping = asyncio.ensure_future(app.stop(grace=10))
    release.set()
    await stopping
    assert finished.is_set()
    probe = await backend.connected()
    assert await probe.queue_depth(queue) == 0


async def test_command_without_handler_is_unroutable(backend: Backend) -> None:
    """Sending a command nobody handles fails at once instead of vanishing."""
    app = await backend.app([])
    with pytest.raises(Unroutable):
        await app.send(place())


async def test_middleware_onion_order(backend: Backend) -> None:
    """Consume middleware wraps the handler outermost-first, and can see the decoded message."""
    calls: list[str] = []
    done = asyncio.Event()

    class Trace:
        def __init__(self, name: str) -> None:
            self.name = name

        async def __call__(self, msg: Incoming, call_next: Next) -> Any:
            calls.append(f"{self.name}:in:{type(msg.message).__name__}")
            result = await call_next(msg)
            calls.append(f"{self.name}:out")
            if self.name == "outer":
                done.set()
            return result

    orders = Service("orders")

    @orders.command
    async def place_order(cmd: PlaceOrder) -> None:
        calls.append("handler")

    app = await backend.app([orders], middleware=[Trace("outer"), Trace("inner")])
    await app.send(place())
    async with asyncio.timeout(10):
        await done.wait()
    assert calls == [
        "outer:in:PlaceOrder",
        "inner:in:PlaceOrder",
        "handler",
        "inner:out",
        "outer:out",
    ]


async def test_event_fans_out_to_each_service(backend: Backend) -> None:
    """Every subscribing service gets its own copy of an event."""
    got: asyncio.Queue[str] = asyncio.Queue()
    services = []
    for name in ("billing", "audit", "mail"):
        svc = Service(name)

        async def on_placed(evt: OrderPlaced, ctx: Context, *, _name: str = name) -> None:
            await got.put(_name)

        svc.event(on_placed)
        services.append(svc)
    app = await backend.app(services)
    await app.publish(
        OrderPlaced(order_id="o", customer_id="c", items=ITEMS, total_cents=1, address="a")
    )
    names = {await next_item(got) for _ in range(3)}
    assert names == {"billing", "audit", "mail"}


async def test_quorum_delivery_limit_dead_letters_a_poison_message(backend: Backend) -> None:
    """With a delivery limit, a message that keeps coming back unsettled ends in the DLQ."""
    orders = Service("orders")

    @orders.command
    async def place_order(cmd: PlaceOrder) -> None: ...

    app = await backend.app([orders], start=False, quorum_delivery_limit=2)
    await app.start(consume=False)
    queue = app.naming.handler_queue("orders", "orders.place_order")
    dlq = await backend.collect(app.naming.dlq(queue))
    deliveries = 0

    async def crash_every_time(delivery: Any) -> None:
        # Stands in for a worker that dies on the message before it can settle or retry it.
        nonlocal deliveries
        deliveries += 1
        await delivery.nack(requeue=True)

    poison = await backend.connected()
    await poison.consume(queue, crash_every_time, prefetch=1)
    message_id = await app.send(place())
    dead = await next_item(dlq)
    assert dead.message_id == message_id
    assert deliveries == 3
