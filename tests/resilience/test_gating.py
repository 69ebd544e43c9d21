"""Breakers on the publish path, in memory with a fake clock: signals, refusals, fallbacks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pytest

from contracts.inventory import InventoryReserved, ReserveInventory
from contracts.orders import GetOrder, LineItem, OrderPlaced, OrderView
from framework import (
    AccessRefused,
    App,
    AppConfig,
    BrokerUnreachable,
    Context,
    PublishNacked,
    PublishTimeout,
    QueryContext,
    QueryFailed,
    Service,
    Unroutable,
)
from framework.bus import Outbound
from framework.errors import BreakerOpen, ConfigurationError
from framework.resilience import (
    BreakerConfig,
    Breakers,
    CachedReply,
    CallNotPermitted,
    CircuitBreaker,
    DefaultReply,
    Downstream,
    State,
    TransitionReason,
    WhenOpen,
    defer_when_open,
    fail_fast,
)
from framework.transport.base import BindingSpec, OutgoingMessage, QueueSpec, Topology
from framework.transport.memory import MemoryBroker, MemoryTransport
from tests.support.clock import FakeClock

ITEMS = [LineItem(sku="apple", qty=1, unit_price_cents=100)]
RESERVE = ReserveInventory.__wire_name__
MakeApp = Callable[..., Awaitable[App]]


def reserve(order_id: str = "o-1") -> ReserveInventory:
    return ReserveInventory(order_id=order_id, items=ITEMS)


def view(order_id: str, status: str = "placed") -> OrderView:
    return OrderView(order_id=order_id, customer_id="c", status=status, total_cents=1)  # type: ignore[arg-type]


def quick(**overrides: Any) -> BreakerConfig:
    """A breaker that judges after 4 calls and stays open 10 s."""
    settings: dict[str, Any] = {"window_size": 4, "minimum_calls": 4, "wait_in_open": 10.0}
    settings.update(overrides)
    return BreakerConfig(**settings)


@pytest.fixture
def broker() -> MemoryBroker:
    """One in-memory broker shared by the apps of a test."""
    return MemoryBroker()


@pytest.fixture
async def make_app(broker: MemoryBroker) -> AsyncIterator[MakeApp]:
    """Started memory apps with the given services and breakers, stopped after the test."""
    apps: list[App] = []

    async def make(
        services: Sequence[Service] = (),
        *,
        breakers: Breakers | None = None,
        publish_middleware: Sequence[Any] = (),
        **config: Any,
    ) -> App:
        config.setdefault("prefix", "t")
        app = App(
            services,
            transport=MemoryTransport(broker),
            config=AppConfig(**config),
            breakers=breakers,
            publish_middleware=publish_middleware,
        )
        apps.append(app)
        await app.start()
        return app

    yield make
    for app in reversed(apps):
        await app.stop(grace=0)


async def capped_queue(app: App, wire_name: str, max_length: int) -> str:
    """A downstream queue for ``wire_name`` that nacks publishes once it holds ``max_length``."""
    name = f"{app.naming.prefix}.downstream.{wire_name}"
    await app.transport.declare(
        Topology(
            queues=(QueueSpec(name, max_length=max_length, overflow="reject-publish"),),
            bindings=(BindingSpec(name, app.naming.commands, wire_name),),
        )
    )
    return name


def outbound(routing_key: str = RESERVE, *, timeout: float | None = None) -> Outbound:
    message = reserve()
    wire = OutgoingMessage(body=b"{}", message_id="m-1", type=routing_key)
    return Outbound(message, wire, "t.commands", routing_key, True, timeout=timeout)


def refused_event(breakers: Breakers, name: str) -> asyncio.Event:
    """Set when breaker ``name`` next refuses a call."""
    refused = asyncio.Event()
    breakers[name].subscribe(lambda e: refused.set() if isinstance(e, CallNotPermitted) else None)
    return refused


async def test_nacks_from_a_full_queue_open_the_breaker(make_app: MakeApp) -> None:
    """A capped queue nacks; the nacks open the breaker; then sends fail fast, unpublished."""
    clock = FakeClock()
    breakers = Breakers([Downstream("inventory", config=quick())], clock=clock, status=False)
    app = await make_app(breakers=breakers)
    queue = await capped_queue(app, RESERVE, 2)
    for i in range(2):
        await app.send(reserve(f"o-{i}"))
    for i in range(2, 4):
        with pytest.raises(PublishNacked):
            await app.send(reserve(f"o-{i}"))
    breaker = breakers["inventory"]
    assert breaker.state is State.OPEN
    assert breaker.metrics().failure_rate == 50.0
    with pytest.raises(BreakerOpen) as info:
        await app.send(reserve("o-9"))
    assert info.value.destination == RESERVE
    assert info.value.retry_after == 10.0
    assert "circuit breaker 'inventory' is open (failure_rate)" in str(info.value)
    assert await app.transport.queue_depth(queue) == 2
    assert breaker.metrics().not_permitted == 1


async def test_only_the_matching_destination_is_gated(make_app: MakeApp) -> None:
    """A service downstream gates its commands and queries, not events named after it."""
    clock = FakeClock()
    breakers = Breakers(
        [
            Downstream("inventory", config=quick()),
            Downstream("placed-events", routes=("orders.order_placed", "#.never"), config=quick()),
        ],
        clock=clock,
        status=False,
    )
    app = await make_app(breakers=breakers)
    for breaker in breakers:
        breaker.transition_to_forced_open()
    await app.publish(InventoryReserved(order_id="o-1"))  # an event of inventory: not gated
    with pytest.raises(BreakerOpen, match="'placed-events'"):
        await app.publish(
            OrderPlaced(order_id="o", customer_id="c", items=ITEMS, total_cents=1, address="a")
        )
    assert breakers.breaker_for(RESERVE) is breakers["inventory"]
    assert breakers.breaker_for("payment.charge_payment") is None
    assert breakers.breaker_for("inventory.inventory_reserved", is_event=True) is None


@pytest.mark.parametrize(
    "error",
    [
        PublishTimeout("no confirm", exchange="t.commands", routing_key=RESERVE),
        Unroutable("no queue", exchange="t.commands", routing_key=RESERVE),
        PublishNacked("full", exchange="t.commands", routing_key=RESERVE),
        BrokerUnreachable("amqp://x", "down"),
    ],
    ids=["timeout", "unroutable", "nack", "unreachable"],
)
async def test_broker_signals_count_as_failures(error: Exception) -> None:
    """Confirm timeouts, returns, nacks and a lost broker are recorded failures."""
    breakers = Breakers([Downstream("inventory", config=quick())], clock=FakeClock())

    async def call_next(out: Outbound) -> None:
        raise error

    for _ in range(4):
        with pytest.raises(type(error)):
            await breakers.publish_middleware(outbound(), call_next)
    assert breakers["inventory"].state is State.OPEN
    assert breakers["inventory"].metrics().failed == 4


async def test_a_waiting_send_goes_out_once_the_breaker_lets_a_probe_through() -> None:
    """WhenOpen.WAIT: the send waits while open and is published as the half-open probe."""
    clock = FakeClock()
    downstream = Downstream("inventory", config=quick(), when_open=WhenOpen.WAIT, max_wait=60)
    breakers = Breakers([downstream], clock=clock)
    breaker = breakers["inventory"]
    breaker.transition_to_open(wait=5.0)
    refused = refused_event(breakers, "inventory")
    sent: list[str] = []

    async def call_next(out: Outbound) -> None:
        sent.append(out.routing_key)

    task = asyncio.create_task(breakers.publish_middleware(outbound(), call_next))
    await refused.wait()
    clock.advance(4.0)
    breakers.tick()
    refused.clear()
    await refused.wait()  # tried again, still refused
    assert sent == []
    clock.advance(1.0)
    breakers.tick()
    await task
    assert sent == [RESERVE]
    assert breaker.state is State.HALF_OPEN


async def test_a_waiting_send_gives_up_after_max_wait() -> None:
    """A send that waited max_wait raises BreakerOpen and was never published."""
    clock = FakeClock()
    downstream = Downstream("inventory", config=quick(), when_open=WhenOpen.WAIT, max_wait=10)
    breakers = Breakers([downstream], clock=clock)
    breakers["inventory"].transition_to_forced_open()
    refused = refused_event(breakers, "inventory")

    async def call_next(out: Outbound) -> None:
        raise AssertionError("must not be published")

    task = asyncio.create_task(breakers.publish_middleware(outbound(), call_next))
    await refused.wait()
    clock.advance(10.0)
    breakers.tick()
    with pytest.raises(BreakerOpen, match="forced_open"):
        await task


async def test_a_waiting_send_retries_nacks_with_the_same_message() -> None:
    """WhenOpen.WAIT republishes a nacked message (same id) until it is confirmed."""
    downstream = Downstream(
        "inventory",
        config=quick(window_size=10, minimum_calls=10),
        when_open=WhenOpen.WAIT,
        retry_interval=0.001,
    )
    breakers = Breakers([downstream], clock=FakeClock())
    attempts: list[str] = []

    async def call_next(out: Outbound) -> None:
        attempts.append(out.wire.message_id)
        if len(attempts) < 3:
            raise PublishNacked("full", exchange=out.exchange, routing_key=out.routing_key)

    await breakers.publish_middleware(outbound(), call_next)
    assert attempts == ["m-1", "m-1", "m-1"]
    m = breakers["inventory"].metrics()
    assert (m.buffered, m.failed) == (3, 2)


async def test_a_waiting_send_does_not_retry_a_refused_publish() -> None:
    """WhenOpen.WAIT never republishes a publish the broker refused for lack of permission."""
    downstream = Downstream(
        "inventory",
        config=quick(window_size=1, minimum_calls=1),
        when_open=WhenOpen.WAIT,
        retry_interval=0.001,
    )
    breakers = Breakers([downstream], clock=FakeClock())
    attempts: list[str] = []

    async def call_next(out: Outbound) -> None:
        attempts.append(out.wire.message_id)
        raise AccessRefused(
            "refused", exchange=out.exchange, routing_key=out.routing_key, user="reader"
        )

    with pytest.raises(AccessRefused):
        await breakers.publish_middleware(outbound(), call_next)
    assert attempts == ["m-1"]


async def test_sends_inside_a_handler_raise_at_once(make_app: MakeApp) -> None:
    """In a handler, a refused send raises BreakerOpen immediately even with WhenOpen.WAIT."""
    orders = Service("orders")
    caught: asyncio.Queue[BreakerOpen] = asyncio.Queue()

    @orders.event
    async def on_placed(evt: OrderPlaced, ctx: Context) -> None:
        try:
            await ctx.send(reserve(evt.order_id))
        except BreakerOpen as exc:
            await caught.put(exc)

    downstream = Downstream("inventory", config=quick(), when_open=WhenOpen.WAIT, max_wait=60)
    breakers = Breakers([downstream], clock=FakeClock(), status=False)
    app = await make_app([orders], breakers=breakers)
    breakers["inventory"].transition_to_forced_open()
    await app.publish(
        OrderPlaced(order_id="o-1", customer_id="c", items=ITEMS, total_cents=1, address="a")
    )
    error = await asyncio.wait_for(caught.get(), 5)
    assert error.routing_key == RESERVE


async def test_fail_fast_refuses_at_once_outside_handlers() -> None:
    """Inside fail_fast() (what an outbox relay uses) a WAIT downstream raises at once."""
    downstream = Downstream("inventory", config=quick(), when_open=WhenOpen.WAIT, max_wait=60)
    breakers = Breakers([downstream], clock=FakeClock())
    breakers["inventory"].transition_to_open(wait=5)

    async def call_next(out: Outbound) -> None:
        raise AssertionError("must not be published")

    with fail_fast(), pytest.raises(BreakerOpen) as info:
        await breakers.publish_middleware(outbound(), call_next)
    assert (info.value.breaker, info.value.retry_after) == ("inventory", 5.0)


# -- queries --------------------------------------------------------------------------------


def orders_service(replies: list[str], *, fail: bool = False) -> Service:
    orders = Service("orders")

    @orders.query
    async def get_order(q: GetOrder, ctx: QueryContext) -> OrderView:
        if fail:
            raise LookupError(f"no order {q.order_id}")
        replies.append(q.order_id)
        return view(q.order_id)

    return orders


async def test_query_answers_from_the_cache_while_open(make_app: MakeApp) -> None:
    """While open, the last good reply to the same query answers, marked with its age."""
    clock = FakeClock()
    downstream = Downstream("orders", fallbacks={GetOrder: CachedReply(max_age=60)})
    breakers = Breakers([downstream], clock=clock, status=False)
    handled: list[str] = []
    await make_app([orders_service(handled)])
    client = await make_app(breakers=breakers)
    fresh = await client.request(GetOrder(order_id="o-1"), with_meta=True)
    assert (fresh.reply, fresh.from_fallback, fresh.fallback) == (view("o-1"), False, None)
    breakers["orders"].transition_to_open(wait=100)
    clock.advance(30)
    cached = await client.request(GetOrder(order_id="o-1"), with_meta=True)
    assert cached.reply == view("o-1")
    assert (cached.fallback, cached.age, cached.breaker, cached.cause) == (
        "cache",
        30.0,
        "orders",
        "breaker_open",
    )
    assert await client.request(GetOrder(order_id="o-1")) == view("o-1")
    assert handled == ["o-1"]
    with pytest.raises(BreakerOpen, match=r"'orders' is open .* for 'orders\.get_order'"):
        await client.request(GetOrder(order_id="o-2"))  # never answered: nothing cached
    clock.advance(31)
    with pytest.raises(BreakerOpen):
        await client.request(GetOrder(order_id="o-1"))  # older than max_age


async def test_query_default_reply_after_the_cache(make_app: MakeApp) -> None:
    """Fallbacks are tried in order: the cache first, then a default computed from the query."""
    clock = FakeClock()
    default = DefaultReply(lambda q: view(q.order_id, status="failed"))
    downstream = Downstream("orders", fallback=(CachedReply(max_age=60), default))
    breakers = Breakers([downstream], clock=clock, status=False)
    await make_app([orders_service([])])
    client = await make_app(breakers=breakers)
    await client.request(GetOrder(order_id="o-1"))
    breakers["orders"].transition_to_forced_open()
    one = await client.request(GetOrder(order_id="o-1"), with_meta=True)
    two = await client.request(GetOrder(order_id="o-2"), with_meta=True)
    assert (one.fallback, one.reply.status) == ("cache", "placed")
    assert (two.fallback, two.reply, two.age) == ("default", view("o-2", status="failed"), None)


async def test_query_without_fallback_fails_fast(make_app: MakeApp) -> None:
    """No fallback: an open breaker raises BreakerOpen at once, naming the destination."""
    breakers = Breakers([Downstream("orders")], clock=FakeClock(), status=False)
    await make_app([orders_service([])])
    client = await make_app(breakers=breakers)
    breakers["orders"].transition_to_open(wait=7)
    with pytest.raises(BreakerOpen) as info:
        await client.request(GetOrder(order_id="o-1"), timeout=30)
    assert (info.value.destination, info.value.retry_after) == ("orders.get_order", 7.0)


async def test_error_replies_count_and_fall_back(make_app: MakeApp, broker: MemoryBroker) -> None:
    """An error reply is a failure; the cached answer replaces it unless told otherwise."""
    clock = FakeClock()
    replies: list[str] = []
    server = await make_app([orders_service(replies)])
    downstream = Downstream("orders", config=quick(), fallback=CachedReply(max_age=60))
    strict = Downstream(
        "orders", config=quick(), fallback=CachedReply(max_age=60), fallback_on_failure=False
    )
    lenient_breakers = Breakers([downstream], clock=clock, status=False)
    strict_breakers = Breakers([strict], clock=clock, status=False)
    lenient = await make_app(breakers=lenient_breakers)
    strictly = await make_app(breakers=strict_breakers)
    await lenient.request(GetOrder(order_id="o-1"))
    await strictly.request(GetOrder(order_id="o-1"))
    await server.stop(grace=0)
    await make_app([orders_service(replies, fail=True)])
    answer = await lenient.request(GetOrder(order_id="o-1"), with_meta=True)
    assert (answer.fallback, answer.cause) == ("cache", "LookupError")
    with pytest.raises(QueryFailed, match="LookupError"):
        await strictly.request(GetOrder(order_id="o-1"))
    assert lenient_breakers["orders"].metrics().failed == 1
    assert strict_breakers["orders"].metrics().failed == 1


async def test_ignored_error_replies_pass_through_uncounted(make_app: MakeApp) -> None:
    """An error reply the predicates ignore is raised as QueryFailed and not counted."""
    config = quick(
        ignore_exceptions=lambda e: isinstance(e, QueryFailed) and e.error_type == "LookupError"
    )
    breakers = Breakers([Downstream("orders", config=config)], clock=FakeClock(), status=False)
    await make_app([orders_service([], fail=True)])
    client = await make_app(breakers=breakers)
    for _ in range(5):
        with pytest.raises(QueryFailed):
            await client.request(GetOrder(order_id="o-1"))
    assert breakers["orders"].metrics().buffered == 0
    assert breakers["orders"].state is State.CLOSED


async def test_slow_replies_and_timeouts_are_recorded(make_app: MakeApp) -> None:
    """A reply slower than slow_call_duration counts as slow; a timeout counts as failed."""
    clock = FakeClock()
    orders = Service("orders")
    never = asyncio.Event()

    @orders.query
    async def get_order(q: GetOrder, ctx: QueryContext) -> OrderView:
        if q.order_id == "slow":
            clock.advance(3.0)
        if q.order_id == "hang":
            await never.wait()
        return view(q.order_id)

    config = quick(slow_call_duration=2.0, window_size=10, minimum_calls=10)
    breakers = Breakers(
        [Downstream("orders", config=config, fallback=CachedReply(max_age=60))],
        clock=clock,
        status=False,
    )
    await make_app([orders])
    client = await make_app(breakers=breakers)
    assert await client.request(GetOrder(order_id="slow")) == view("slow")
    answer = await client.request(GetOrder(order_id="slow"), with_meta=True)
    assert answer.from_fallback is False  # slow, but a real answer
    with pytest.raises(TimeoutError):  # nothing cached for this query: no fallback
        await client.request(GetOrder(order_id="hang"), timeout=0.05)
    m = breakers["orders"].metrics()
    assert (m.buffered, m.slow, m.failed) == (3, 2, 1)
    never.set()


async def test_a_wrong_default_reply_type_is_refused_at_declaration() -> None:
    """A DefaultReply whose value is not the query's reply type fails when declared."""
    with pytest.raises(ConfigurationError, match="must be a OrderView, got InventoryReserved"):
        Downstream(
            "orders",
            fallbacks={GetOrder: DefaultReply(InventoryReserved(order_id="x"))},  # type: ignore[arg-type]
        )


def test_downstream_mistakes_say_what_to_change() -> None:
    """Bad names, patterns, duplicate downstreams and waits are refused with a reason."""
    with pytest.raises(ConfigurationError, match="use a name"):
        Downstream("has space")
    with pytest.raises(ConfigurationError, match="not an AMQP topic pattern"):
        Downstream("x", routes=("orders..x",))
    with pytest.raises(ConfigurationError, match="max_wait"):
        Downstream("x", max_wait=0)
    with pytest.raises(ConfigurationError, match="two breakers are named 'x'"):
        Breakers([Downstream("x"), Downstream("x")])
    assert Downstream("inventory").service == "inventory"
    assert Downstream("feeds", routes=("a.#",)).service is None


async def test_a_blocked_connection_holds_every_breaker_open(
    make_app: MakeApp, broker: MemoryBroker
) -> None:
    """A resource alarm opens every breaker until it is lifted; then they probe (half-open)."""
    clock = FakeClock()
    breakers = Breakers(
        [Downstream("inventory", config=quick()), Downstream("orders", config=quick())],
        clock=clock,
        status=False,
    )
    app = await make_app(breakers=breakers)
    breakers["orders"].transition_to_forced_open()
    broker.block("memory alarm")
    assert breakers.blocked == "memory alarm"
    inventory = breakers["inventory"]
    assert (inventory.state, inventory.open_reason) == (
        State.OPEN,
        TransitionReason.CONNECTION_BLOCKED,
    )
    clock.advance(10_000)
    with pytest.raises(BreakerOpen, match=r"\(connection_blocked\).*until the cause is lifted"):
        await app.send(reserve())
    broker.unblock()
    assert inventory.state is State.HALF_OPEN
    assert breakers["orders"].state is State.FORCED_OPEN  # an operator's choice stays
    await capped_queue(app, RESERVE, 100)
    await app.send(reserve())  # the first probe


async def test_the_outbox_hooks(make_app: MakeApp) -> None:
    """A relay can find a routing key's breaker and wait until it would permit a call."""
    clock = FakeClock()
    breakers = Breakers([Downstream("inventory", config=quick())], clock=clock, status=False)
    await make_app(breakers=breakers)
    breaker = breakers.breaker_for(RESERVE)
    assert breaker is not None
    assert await breakers.wait_permitted("inventory", timeout=1) is True
    breaker.transition_to_open(wait=5)
    waiting = asyncio.create_task(breakers.wait_permitted("inventory", timeout=60))
    clock.advance(5)
    breakers.tick()
    assert await waiting is True
    assert breaker.state is State.OPEN  # waiting took no permit


async def test_publish_guarded_counts_rows_and_refuses_when_open(make_app: MakeApp) -> None:
    """A relay's wire messages are judged like sends; a refusal names the breaker to park on."""
    breakers = Breakers([Downstream("inventory", config=quick())], clock=FakeClock(), status=False)
    app = await make_app(breakers=breakers)
    queue = await capped_queue(app, RESERVE, 1)
    where = {"exchange": app.naming.commands, "routing_key": RESERVE, "mandatory": True}

    def row(n: int) -> OutgoingMessage:
        return OutgoingMessage(body=b"{}", message_id=f"row-{n}", type=RESERVE)

    await breakers.publish_guarded(app.transport, row(0), **where)
    for n in range(1, 4):
        with pytest.raises(PublishNacked):
            await breakers.publish_guarded(app.transport, row(n), **where)
    with pytest.raises(BreakerOpen) as info:
        await breakers.publish_guarded(app.transport, row(4), **where)
    assert (info.value.breaker, info.value.destination) == ("inventory", RESERVE)
    assert await app.transport.queue_depth(queue) == 1
    await app.transport.declare(app.naming.base_topology([1000]))
    await breakers.publish_guarded(  # a delay-queue row is never gated
        app.transport,
        row(5),
        exchange=app.naming.delay(1000),
        routing_key="inventory.anything",
        mandatory=True,
    )


async def test_a_publish_middleware_that_drops_a_reply_is_named(make_app: MakeApp) -> None:
    """Queries pass through publish middleware: one that returns None gets a helpful error."""

    async def forgetful(out: Outbound, call_next: Callable[[Outbound], Awaitable[Any]]) -> None:
        await call_next(out)

    await make_app([orders_service([])])
    client = await make_app(publish_middleware=[forgetful])
    with pytest.raises(ConfigurationError, match=r"return await call_next\(out\)"):
        await client.request(GetOrder(order_id="o-1"))


def test_transition_listeners_hear_no_refusals() -> None:
    """A transitions_only listener gets transitions but not the per-call refusals."""
    clock = FakeClock()
    breaker = CircuitBreaker("x", quick(window_size=1, minimum_calls=1), clock=clock)
    heard: list[object] = []
    breaker.subscribe(heard.append, transitions_only=True)
    permit = breaker.acquire()
    breaker.on_error(permit, 0.01, ValueError())
    for _ in range(3):
        assert breaker.try_acquire() is None
    assert [type(e).__name__ for e in heard] == ["BreakerOpened"]


def test_the_handler_guard_goes_only_where_it_does_something() -> None:
    """HandlerGuard (deferral, fail-fast sends) wraps a handler only where it changes what
    happens: a ``defer_when_open`` command or event handler, or any handler once some
    downstream waits; elsewhere a delivery runs without that layer."""
    orders = Service("orders")

    @orders.event
    async def on_placed(evt: OrderPlaced) -> None: ...

    @orders.command
    @defer_when_open
    async def reserve_stock(cmd: ReserveInventory) -> None: ...

    @orders.query
    @defer_when_open  # queries answer or fail: never deferred
    async def get_order(q: GetOrder) -> OrderView:
        return view(q.order_id)

    def guarded(when_open: WhenOpen) -> dict[str, bool]:
        breakers = Breakers([Downstream("inventory", when_open=when_open)], status=False)
        app = App([orders], transport=MemoryTransport(MemoryBroker()), breakers=breakers)
        return {
            spec.message_type.__name__: breakers.consume_middleware_for(spec) is not None
            for spec in app.handlers
        }

    assert guarded(WhenOpen.RAISE) == {
        "OrderPlaced": False,
        "ReserveInventory": True,
        "GetOrder": False,
    }
    assert guarded(WhenOpen.WAIT) == {
        "OrderPlaced": True,
        "ReserveInventory": True,
        "GetOrder": True,
    }


async def test_a_middleware_may_bind_itself_to_the_onion(make_app: MakeApp) -> None:
    """A publish middleware with ``bind_next`` is bound once and still runs in its place:
    after the middleware outside it, around the breakers inside it."""
    seen: list[str] = []

    class Tagging:
        def bind_next(self, call_next: Callable[[Outbound], Awaitable[Any]]) -> Any:
            async def tagged(out: Outbound) -> Any:
                seen.append(f"tagged {out.routing_key}")
                return await call_next(out)

            return tagged

    async def outer(out: Outbound, call_next: Callable[[Outbound], Awaitable[Any]]) -> Any:
        seen.append("outer")
        return await call_next(out)

    breakers = Breakers([Downstream("inventory", config=quick())], status=False)
    app = await make_app(breakers=breakers, publish_middleware=[outer, Tagging()])
    await capped_queue(app, RESERVE, 10)
    await app.send(reserve())
    assert seen == ["outer", f"tagged {RESERVE}"]
    assert breakers["inventory"].metrics().buffered == 1
