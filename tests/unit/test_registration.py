"""Handler registration: mistakes are errors at decoration or start-up that say what to change."""

from __future__ import annotations

import pytest

from contracts.orders import GetOrder, OrderPlaced, OrderView, PlaceOrder
from framework import App, Command, Context, Event, QueryContext, RegistrationError, Service
from framework.errors import ContractError, WrongBus


def test_event_on_command_decorator() -> None:
    """An Event handler registered with @command is rejected, naming the right decorator."""
    svc = Service("orders")
    with pytest.raises(RegistrationError, match=r"OrderPlaced is a Event: use @orders.event"):

        @svc.command
        async def handle(evt: OrderPlaced) -> None: ...


def test_missing_annotation() -> None:
    """A handler without a type on its first parameter is rejected, naming the function."""
    svc = Service("orders")
    with pytest.raises(RegistrationError, match=r"test_missing_annotation.<locals>.handle has no"):

        @svc.command
        async def handle(msg) -> None: ...  # type: ignore[no-untyped-def]


def test_not_async() -> None:
    """A plain def is rejected."""
    svc = Service("orders")
    with pytest.raises(RegistrationError, match="not an `async def`"):

        @svc.command  # type: ignore[type-var]
        def handle(msg: PlaceOrder) -> None: ...


def test_not_a_contract() -> None:
    """Annotating with a non-contract type is rejected."""
    svc = Service("orders")
    with pytest.raises(RegistrationError, match="not a message contract"):

        @svc.command
        async def handle(msg: dict[str, str]) -> None: ...


def test_two_handlers_in_one_service() -> None:
    """One service cannot handle one message twice; both functions are named."""
    svc = Service("orders")

    @svc.command
    async def first(msg: PlaceOrder) -> None: ...

    with pytest.raises(RegistrationError, match=r"second.*first.*PlaceOrder"):

        @svc.command
        async def second(msg: PlaceOrder) -> None: ...


def test_two_services_one_command() -> None:
    """A command handled in two services is a start-up error naming both handlers."""
    a, b = Service("a"), Service("b")

    @a.command
    async def one(msg: PlaceOrder) -> None: ...

    @b.command
    async def two(msg: PlaceOrder) -> None: ...

    with pytest.raises(RegistrationError, match=r"exactly one handler.*one.*'a'.*two.*'b'"):
        App([a, b])


def test_two_services_one_event_is_fine() -> None:
    """Events may have many subscribing services, each with its own queue."""
    a, b = Service("a"), Service("b")

    @a.event
    async def one(msg: OrderPlaced) -> None: ...

    @b.event
    async def two(msg: OrderPlaced) -> None: ...

    app = App([a, b], config=None)
    queues = {q.name for q in app.topology.queues}
    assert {"leveret.a.orders.order_placed", "leveret.b.orders.order_placed"} <= queues


def test_command_handler_must_return_none() -> None:
    """A command handler annotated to return a value is rejected."""
    svc = Service("orders")
    with pytest.raises(RegistrationError, match="must return None"):

        @svc.command
        async def handle(msg: PlaceOrder) -> int: ...


def test_query_handler_return_must_be_its_reply() -> None:
    """A query handler's return annotation must be the query's reply type."""
    svc = Service("orders")
    with pytest.raises(RegistrationError, match="whose reply is OrderView"):

        @svc.query
        async def handle(q: GetOrder, ctx: QueryContext) -> PlaceOrder: ...


def test_query_context_has_no_send() -> None:
    """The query context is read-only: it has neither send nor publish."""
    assert not hasattr(QueryContext, "send")
    assert not hasattr(QueryContext, "publish")
    assert hasattr(Context, "send")


def test_query_rejects_retry_option() -> None:
    """Queries are not retried, so retry= is refused."""
    svc = Service("orders")
    with pytest.raises(RegistrationError, match="not retried"):
        svc.query(retry=None)  # type: ignore[call-overload]


class Nameless(Command):
    x: int


class Child(OrderPlaced):
    pass


def test_wire_name_must_be_explicit() -> None:
    """A contract without its own wire name cannot be handled."""
    svc = Service("orders")
    with pytest.raises(ContractError, match="no wire name of its own"):

        @svc.command
        async def handle(msg: Nameless) -> None: ...


def test_bad_service_name() -> None:
    """Service names are checked."""
    with pytest.raises(RegistrationError, match="not valid"):
        Service("Orders Service")


async def test_send_on_wrong_bus() -> None:
    """Sending an event or publishing a command is refused before anything is published."""
    app = App([])
    placed = OrderPlaced(order_id="o", customer_id="c", items=[], total_cents=0, address="a")
    with pytest.raises(WrongBus, match="OrderPlaced is a Event: use publish"):
        await app.send(placed)  # type: ignore[arg-type]
    with pytest.raises(WrongBus, match="GetOrder is a Query: use request"):
        await app.publish(GetOrder(order_id="o"))  # type: ignore[arg-type]


def test_apps_do_not_share_registries() -> None:
    """Two apps in one process see only their own services."""
    a, b = Service("a"), Service("b")

    @a.event
    async def one(msg: OrderPlaced) -> None: ...

    assert len(App([a]).handlers) == 1
    assert App([b]).handlers == []
    assert OrderView.__wire_name__ == "orders.order_view"


def test_event_subclass_needs_own_name() -> None:
    """An Event subclass that inherits a wire name is refused."""
    svc = Service("x")
    with pytest.raises(ContractError, match="no wire name of its own"):

        @svc.event
        async def handle(msg: Child) -> None: ...


def test_contracts_are_frozen_and_keyword_only() -> None:
    """Contracts cannot be built positionally or mutated."""

    class Ping(Event):
        __wire_name__ = "test.ping"
        n: int

    with pytest.raises(TypeError):
        Ping(1)  # type: ignore[misc]
    ping = Ping(n=1)
    with pytest.raises(AttributeError):
        ping.n = 2  # type: ignore[misc]
