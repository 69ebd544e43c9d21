"""Fixtures for the shop's handlers: each test on memory + SQLite and on RabbitMQ + PostgreSQL.

``rig`` is one test's broker and database; ``rig.services()`` starts the services the order saga
commands (inventory, payment, shipping, notifications) with a probe service that records every
reply they publish, and ``rig.shop()`` the whole shop, saga included. A ``Ledger`` middleware
counts the deliveries each message id finished and keeps every failure, so that a test can tell
a handler that only got through on a retry from one that never failed.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import contracts
from contracts.inventory import InventoryRejected, InventoryReleased, InventoryReserved
from contracts.notifications import CustomerNotified
from contracts.payment import PaymentCharged, PaymentDeclined, PaymentRefunded
from contracts.shipping import OrderShipped, ShippingFailed
from framework import App, AppConfig, Service
from framework.messages import Command, Event
from framework.middleware import Incoming, Next
from framework.store import Store, store_from_url
from handlers.gateway import FakeGateway
from handlers.inventory import build_inventory
from handlers.notifications import build_notifications
from handlers.orders import build_orders, build_read_side
from handlers.payment import build_payment
from handlers.shipping import build_shipping
from tests.app.conftest import Backend
from tests.saga.conftest import eventually, postgres_db_url, postgres_url

__all__ = [
    "CARD_LIMIT",
    "STOCK",
    "Ledger",
    "Probe",
    "Rig",
    "Services",
    "postgres_db_url",
    "postgres_url",
    "rig",
]

STOCK = {"apple": 10, "pear": 5}
# With versioned schemas (framework.store.migrations), a PostgreSQL store's upgrade is a deploy
# step that a starting app only checks; the test's app does it, as build_app's tests do. Drop
# the condition once AppConfig(upgrade_db=) is on the main branch.
UPGRADE_DB = (
    {"upgrade_db": True} if "upgrade_db" in {f.name for f in dataclasses.fields(AppConfig)} else {}
)
CARD_LIMIT = 10_000


class Ledger:
    """Consume middleware: the deliveries each message id finished, and every failure."""

    def __init__(self) -> None:
        self.finished: Counter[str] = Counter()
        self.failures: list[str] = []

    async def __call__(self, msg: Incoming, call_next: Next) -> Any:
        try:
            result = await call_next(msg)
        except Exception as exc:
            self.failures.append(f"{msg.handler.name} {msg.context.message_id}: {exc!r}")
            raise
        self.finished[msg.context.message_id] += 1
        return result


def markers(order_id: str) -> list[Event]:
    """One event of each reply type the probe records, all for ``order_id``."""
    return [
        InventoryReserved(order_id=order_id),
        InventoryRejected(order_id=order_id, reason=""),
        InventoryReleased(order_id=order_id),
        PaymentCharged(order_id=order_id, amount_cents=0, payment_id=""),
        PaymentDeclined(order_id=order_id, reason=""),
        PaymentRefunded(order_id=order_id, amount_cents=0),
        OrderShipped(order_id=order_id, tracking_number=""),
        ShippingFailed(order_id=order_id, reason=""),
        CustomerNotified(customer_id="", order_id=order_id, template=""),
    ]


class Probe:
    """A service that records the replies of the services under test, in arrival order."""

    def __init__(self) -> None:
        self.seen: list[Event] = []
        self.service = probe = Service("probe")

        @probe.event
        async def reserved(evt: InventoryReserved) -> None:
            self.seen.append(evt)

        @probe.event
        async def rejected(evt: InventoryRejected) -> None:
            self.seen.append(evt)

        @probe.event
        async def released(evt: InventoryReleased) -> None:
            self.seen.append(evt)

        @probe.event
        async def charged(evt: PaymentCharged) -> None:
            self.seen.append(evt)

        @probe.event
        async def declined(evt: PaymentDeclined) -> None:
            self.seen.append(evt)

        @probe.event
        async def refunded(evt: PaymentRefunded) -> None:
            self.seen.append(evt)

        @probe.event
        async def shipped(evt: OrderShipped) -> None:
            self.seen.append(evt)

        @probe.event
        async def shipping_failed(evt: ShippingFailed) -> None:
            self.seen.append(evt)

        @probe.event
        async def notified(evt: CustomerNotified) -> None:
            self.seen.append(evt)

    def of(self, order_id: str) -> list[Event]:
        """The replies about ``order_id``, in arrival order."""
        return [evt for evt in self.seen if getattr(evt, "order_id", None) == order_id]


class Services:
    """The services the order saga commands, running, with a probe, a ledger and the payment
    gateway they charge through."""

    def __init__(self, app: App, probe: Probe, ledger: Ledger, gateway: FakeGateway) -> None:
        self.app = app
        self.probe = probe
        self.ledger = ledger
        self.gateway = gateway
        self._settled = 0

    @property
    def store(self) -> Store:
        assert self.app.store is not None
        return self.app.store

    async def twice(self, command: Command, tag: str) -> None:
        """Send ``command`` under two message ids and once more under the first (a redelivery),
        all at once; return when the three were handled and their replies reached the probe."""
        first, second = f"{tag}-1", f"{tag}-2"
        await asyncio.gather(
            *(self.app.send(command, message_id=m) for m in (first, second, first))
        )
        await eventually(
            lambda: self.ledger.finished[first] == 2 and self.ledger.finished[second] == 1,
            what=f"three deliveries of {type(command).__name__}",
        )
        await self.settle()

    async def settle(self) -> None:
        """Wait until every reply published so far has reached the probe: a marker of each
        reply type, published now, queues behind them."""
        self._settled += 1
        mark = f"marker-{self._settled}"
        sent = markers(mark)
        for event in sent:
            await self.app.publish(event)
        await eventually(lambda: len(self.probe.of(mark)) == len(sent), what="the markers")

    async def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """The rows of a query on the services' tables."""
        async with self.store.transaction() as tx:
            return await tx.fetchall(sql, *args)


class Rig:
    """One test's broker and database: memory + SQLite, or RabbitMQ + PostgreSQL."""

    def __init__(self, backend: Backend, db_url: str) -> None:
        self.backend = backend
        self.db_url = db_url
        self._apps: list[App] = []

    async def _start(self, services: list[Service], ledger: Ledger, store: Store) -> App:
        app = App(
            services,
            transport=self.backend.transport(),
            config=AppConfig(prefix=self.backend.prefix, **UPGRADE_DB),
            store=store,
            contracts=contracts.ALL,
            middleware=[ledger],
        )
        self._apps.append(app)
        await app.start()
        return app

    async def services(self) -> Services:
        """Inventory (``STOCK``), payment (``CARD_LIMIT``, a ``FakeGateway``), shipping and
        notifications."""
        probe, ledger, gateway = Probe(), Ledger(), FakeGateway()
        services = [
            build_inventory(STOCK),
            build_payment(card_limit_cents=CARD_LIMIT, gateway=gateway),
            build_shipping(),
            build_notifications(),
            probe.service,
        ]
        app = await self._start(services, ledger, store_from_url(self.db_url))
        return Services(app, probe, ledger, gateway)

    async def shop(self) -> tuple[App, Ledger]:
        """The whole shop, the order saga and its read side included."""
        ledger, store = Ledger(), store_from_url(self.db_url)
        services = [
            build_orders(step_timeout=None),
            build_read_side(store),
            build_inventory(STOCK),
            build_payment(card_limit_cents=CARD_LIMIT),
            build_shipping(),
            build_notifications(),
        ]
        return await self._start(services, ledger, store), ledger

    async def close(self) -> None:
        for app in reversed(self._apps):
            await app.stop(grace=0)


@pytest.fixture(
    params=[
        "memory+sqlite",
        pytest.param("rabbitmq+postgresql", marks=[pytest.mark.rabbitmq, pytest.mark.postgres]),
    ]
)
def servers(request: pytest.FixtureRequest, prefix: str, tmp_path: Path) -> tuple[Backend, str]:
    """The test's broker and database URL, one pair per run (not async: it asks for the
    PostgreSQL schema fixture by name, which an async fixture cannot)."""
    if request.param == "memory+sqlite":
        return Backend("memory", prefix, None), f"sqlite:///{tmp_path / 'shop.db'}"
    amqp_url: str = request.getfixturevalue("amqp_url")
    db_url: str = request.getfixturevalue("postgres_db_url")
    return Backend("amqp", prefix, amqp_url), db_url


@pytest.fixture
async def rig(servers: tuple[Backend, str]) -> AsyncIterator[Rig]:
    """A ``Rig`` on the test's servers; its apps are stopped afterwards."""
    made = Rig(*servers)
    try:
        yield made
    finally:
        await made.close()
