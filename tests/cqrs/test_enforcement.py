"""CQRS enforcement: each misuse of commands and queries fails with a message saying what to do."""

from __future__ import annotations

import pytest

from contracts.orders import GetOrder, OrderPlaced, OrderView, PlaceOrder
from framework import App, Context, QueryContext, RegistrationError, Service, WrongBus


def test_query_handler_on_a_command() -> None:
    """@query on a Command is rejected and points at @command."""
    svc = Service("orders")
    with pytest.raises(
        RegistrationError,
        match=r"handle is registered with @orders.query but PlaceOrder is a Command: "
        r"use @orders.command",
    ):

        @svc.query
        async def handle(cmd: PlaceOrder, ctx: QueryContext) -> None: ...


def test_command_handler_on_a_query() -> None:
    """@command on a Query is rejected and points at @query."""
    svc = Service("orders")
    with pytest.raises(
        RegistrationError,
        match=r"registered with @orders.command but GetOrder is a Query: use @orders.query",
    ):

        @svc.command
        async def handle(q: GetOrder) -> None: ...


def test_command_handler_returning_data_is_told_to_use_a_query() -> None:
    """A command handler annotated to return data is rejected with a pointer to queries."""
    svc = Service("orders")
    with pytest.raises(
        RegistrationError,
        match=r"handles the command PlaceOrder and must return None \(annotated <class "
        r"'contracts.orders.OrderView'>\): command handlers return nothing; use a Query",
    ):

        @svc.command
        async def handle(cmd: PlaceOrder) -> OrderView: ...


def test_event_handler_must_return_none() -> None:
    """An event handler annotated to return a value is rejected like a command handler."""
    svc = Service("orders")
    with pytest.raises(RegistrationError, match=r"the event OrderPlaced and must return None"):

        @svc.event
        async def handle(evt: OrderPlaced) -> int: ...


def test_query_handler_cannot_be_transactional() -> None:
    """A query handler cannot ask for a write transaction."""
    svc = Service("orders")
    with pytest.raises(RegistrationError, match=r"transactional=True needs a command or event"):

        @svc.query(transactional=True)  # type: ignore[call-overload]
        async def handle(q: GetOrder, ctx: QueryContext) -> OrderView: ...


def test_two_services_one_query() -> None:
    """A query answered by two services is a start-up error naming both handlers."""
    a, b = Service("a"), Service("b")

    @a.query
    async def one(q: GetOrder) -> OrderView: ...

    @b.query
    async def two(q: GetOrder) -> OrderView: ...

    with pytest.raises(
        RegistrationError,
        match=r"GetOrder is a query and must have exactly one handler, but .*one \(service 'a'\) "
        r"and .*two \(service 'b'\) both handle it: remove one",
    ):
        App([a, b])


def test_query_context_is_read_only() -> None:
    """A query handler's context has neither send nor publish, and takes no new attributes."""
    ctx = QueryContext(
        message_id="m", correlation_id=None, headers={}, redelivered=False, attempt=1, handler="h"
    )
    assert not hasattr(ctx, "send")
    assert not hasattr(ctx, "publish")
    with pytest.raises(AttributeError):
        ctx.send = None  # type: ignore[attr-defined]
    assert hasattr(Context, "send")


@pytest.mark.parametrize(
    ("verb", "message", "expected"),
    [
        ("send", GetOrder(order_id="o"), r"GetOrder is a Query: use request\(\), not send\(\)"),
        ("request", PlaceOrder(order_id="o", customer_id="c", items=[], address="a"), "use send"),
        ("publish", PlaceOrder(order_id="o", customer_id="c", items=[], address="a"), "use send"),
    ],
)
async def test_wrong_bus_names_the_right_verb(verb: str, message: object, expected: str) -> None:
    """Passing a message to the wrong bus verb raises WrongBus naming the right one."""
    app = App([])
    with pytest.raises(WrongBus, match=expected):
        await getattr(app, verb)(message)
