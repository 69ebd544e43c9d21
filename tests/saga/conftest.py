"""Fixtures for the saga tests: the reference shop on either transport, and ways to watch it.

``backend`` (memory and RabbitMQ) comes from ``tests/app``; ``make_shop`` builds the shop's
services on it with a SQLite file of the test's own, optionally with another shipping or payment
service or step timeout, and stops every app it built afterwards. ``postgres_db_url`` is a
PostgreSQL schema of the test's own, dropped afterwards (as in ``tests/store``).
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import asyncpg
import pytest

import contracts
from contracts.payment import ChargePayment, PaymentCharged, PaymentRefunded, RefundPayment
from contracts.shipping import OrderShipped, ShipOrder
from framework import App, AppConfig, Context, Service
from framework.middleware import Incoming, Middleware, Next
from framework.store import SagaRecord, Store, store_from_url
from handlers.app import DEFAULT_STOCK
from handlers.inventory import build_inventory
from handlers.notifications import build_notifications
from handlers.orders import build_orders, build_read_side
from handlers.payment import SCHEMA as PAYMENT_SCHEMA
from handlers.payment import build_payment
from handlers.shipping import SCHEMA as SHIPPING_SCHEMA
from handlers.shipping import build_shipping
from tests.app.conftest import Backend, backend
from tests.store.conftest import postgres_url, with_query
from tests.support.poll import until

__all__ = [
    "Backend",
    "Deliveries",
    "MakeShop",
    "backend",
    "eventually",
    "make_shop",
    "payment_that_holds",
    "postgres_db_url",
    "postgres_url",
    "saga_of",
    "scalar",
    "shipping_that_answers_from",
]

T = TypeVar("T")


async def eventually(check: Callable[[], Any], *, timeout: float = 20.0, what: str) -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy; fail after ``timeout``."""
    try:
        return await until(check, timeout=timeout, what=what, interval=0.02)
    except TimeoutError as exc:
        pytest.fail(str(exc))


class Deliveries:
    """Consume middleware that counts the deliveries each handler finished (by wire name)."""

    def __init__(self) -> None:
        self.handled: Counter[tuple[str, str]] = Counter()

    async def __call__(self, msg: Incoming, call_next: Next) -> Any:
        try:
            return await call_next(msg)
        finally:
            self.handled[(msg.handler.service, type(msg.message).__wire_name__)] += 1

    def count(self, service: str, message_type: type[Any]) -> int:
        return self.handled[(service, message_type.__wire_name__)]


class MakeShop(Protocol):
    """Builds (and starts) the shop on the test's backend and database."""

    def __call__(
        self,
        *,
        step_timeout: float | None = ...,
        ship_timeout: float | None = ...,
        shipping: Service | None = ...,
        payment: Service | None = ...,
        middleware: Sequence[Middleware] = ...,
        db_url: str | None = ...,
        start: bool = ...,
    ) -> Awaitable[App]: ...


@pytest.fixture
async def make_shop(backend: Backend, tmp_path: Path) -> AsyncIterator[MakeShop]:
    """A factory of shop apps on ``backend``, all on one SQLite file unless told otherwise."""
    made: list[App] = []

    async def make(
        *,
        step_timeout: float | None = 60.0,
        ship_timeout: float | None = None,
        shipping: Service | None = None,
        payment: Service | None = None,
        middleware: Sequence[Middleware] = (),
        db_url: str | None = None,
        start: bool = True,
    ) -> App:
        store = store_from_url(db_url or f"sqlite:///{tmp_path / 'shop.db'}")
        app = App(
            [
                build_orders(step_timeout=step_timeout, ship_timeout=ship_timeout),
                build_read_side(store),
                build_inventory(DEFAULT_STOCK),
                payment or build_payment(),
                shipping or build_shipping(),
                build_notifications(),
            ],
            transport=backend.transport(),
            config=AppConfig(prefix=backend.prefix),
            store=store,
            contracts=contracts.ALL,
            middleware=middleware,
        )
        made.append(app)
        if start:
            await app.start()
        return app

    yield make
    for app in reversed(made):
        await app.stop(grace=0)


def shipping_that_answers_from(attempt: int) -> tuple[Service, Counter[str]]:
    """A shipping service that ignores the first ``attempt - 1`` ShipOrders of each order.

    Returns the service and the count of ShipOrders it received per order id; with a huge
    ``attempt`` it never answers.
    """
    service = Service("shipping", schema=SHIPPING_SCHEMA)
    received: Counter[str] = Counter()

    @service.command
    async def ship(cmd: ShipOrder, ctx: Context) -> None:
        received[cmd.order_id] += 1
        if received[cmd.order_id] >= attempt:
            await ctx.publish(OrderShipped(order_id=cmd.order_id, tracking_number="TRK-late"))

    return service, received


def payment_that_holds() -> tuple[Service, dict[str, ChargePayment]]:
    """A payment service that never answers a charge (so the saga waits in ``charge``).

    Returns the service and the ChargePayments it received, by order id; the test answers for
    it. A refund is confirmed with nothing to give back.
    """
    service = Service("payment", schema=PAYMENT_SCHEMA, sends=[PaymentCharged, PaymentRefunded])
    held: dict[str, ChargePayment] = {}

    @service.command
    async def charge(cmd: ChargePayment, ctx: Context) -> None:
        held[cmd.order_id] = cmd

    @service.command
    async def refund(cmd: RefundPayment, ctx: Context) -> None:
        await ctx.publish(PaymentRefunded(order_id=cmd.order_id, amount_cents=0))

    return service, held


async def saga_of(store: Store, order_id: str) -> SagaRecord | None:
    """The order saga of ``order_id``, if it exists."""
    return await store.get_saga(f"order-{order_id}")


async def scalar(store: Store, sql: str, *args: Any) -> Any:
    """The first column of the first row of a query on the shop's tables."""
    async with store.transaction() as tx:
        row = await tx.fetchone(sql, *args)
    return None if row is None else row[0]


@pytest.fixture
async def postgres_db_url(postgres_url: str) -> AsyncIterator[str]:
    """A PostgreSQL store URL on a schema of this test's own, dropped afterwards."""
    schema = f"leveret_test_{secrets.token_hex(6)}"
    try:
        yield with_query(postgres_url, schema=schema)
    finally:
        conn = await asyncpg.connect(postgres_url, timeout=5)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()
