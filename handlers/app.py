"""The reference shop wired into Apps: ``leveret run handlers.app:app`` serves all of it.

``app`` runs every service in one App. The command side and the read side can also run as
separate workers, each scaling and failing on its own: ``leveret run handlers.app:command_side``
(the saga and the services it commands) and ``leveret run handlers.app:read_side`` (the
``orders_view`` projection answering ``GetOrder`` and ``ListOrders``). While the read side is
down, its events wait in its durable queues; it catches up when it comes back.

``LEVERET_SHOP_URL`` (default ``memory://``), ``LEVERET_SHOP_DB_URL`` (default
``sqlite:///leveret-shop.sqlite3``) and ``LEVERET_SHOP_PREFIX`` (default ``shop``) pick the broker,
the database and the name prefix; ``LEVERET_SHOP_VIEW_DB_URL`` (default: the same database)
gives ``read_side`` a database of its own; ``LEVERET_SHOP_QUEUE_TYPE=quorum`` declares every
queue the shop owns as a quorum queue (for a RabbitMQ cluster).

The payment service charges through a payment gateway (``handlers.gateway``; an in-process fake
unless ``build_app`` is given another) guarded by the ``payment-gateway`` call breaker of the
app's ``Breakers`` (``shop_breakers``): ``leveret breakers handlers.app:app`` lists it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import contracts
from framework import App, AppConfig, Service
from framework.middleware import Middleware
from framework.resilience import Breakers, ExternalCall
from framework.store import Store, store_from_url
from framework.transport.base import Transport
from handlers.gateway import GATEWAY_CALL, PaymentGateway
from handlers.inventory import build_inventory
from handlers.notifications import build_notifications
from handlers.orders import build_orders, build_read_side
from handlers.payment import build_payment
from handlers.shipping import build_shipping

__all__ = [
    "DEFAULT_STOCK",
    "app",
    "build_app",
    "build_command_side",
    "build_read_side_app",
    "command_services",
    "command_side",
    "read_side",
    "shop_breakers",
]

DEFAULT_STOCK: Mapping[str, int] = {
    "apple": 1_000_000_000,
    "pear": 1_000_000_000,
    "plum": 1_000_000_000,
    "discontinued": 0,
}


def shop_breakers(gateway_call: ExternalCall = GATEWAY_CALL) -> Breakers:
    """The shop's circuit breakers: the payment gateway's call breaker, its transitions shared
    by the workers of one shop (a gateway down for one is down for all).

    A refused payment command comes back after 1 s, whatever the breaker's wait: asking again
    costs one refusal, and the commands go soon after the breaker closes rather than up to a
    whole wait later (a half-open breaker full of probes says "wait until it must decide").
    """
    return Breakers([gateway_call], shared=True, defer_delays=(1.0,))


def command_services(
    *,
    stock: Mapping[str, int] = DEFAULT_STOCK,
    step_timeout: float | None = 60.0,
    compensation_timeout: float | None = None,
    gateway: PaymentGateway | None = None,
    breakers: Breakers | None = None,
) -> list[Service]:
    """The services of the command side: the order saga and the services it commands.

    ``gateway`` and ``breakers`` go to ``build_payment``; give the app the same breakers.
    """
    return [
        build_orders(step_timeout=step_timeout, compensation_timeout=compensation_timeout),
        build_inventory(stock),
        build_payment(gateway=gateway, breakers=breakers),
        build_shipping(),
        build_notifications(),
    ]


def build_app(
    url: str = "memory://",
    *,
    db_url: str = "sqlite:///leveret-shop.sqlite3",
    store: Store | None = None,
    prefix: str = "shop",
    config: AppConfig | None = None,
    stock: Mapping[str, int] = DEFAULT_STOCK,
    step_timeout: float | None = 60.0,
    transport: Transport | None = None,
    middleware: Sequence[Middleware] = (),
    gateway: PaymentGateway | None = None,
    breakers: Breakers | None = None,
) -> App:
    """A fresh shop app: five services, the order saga and the read side on one store.

    ``transport`` and ``middleware`` go to ``App`` as they are (the fault-injection suite wraps
    the shop's handlers and tunes its connection this way). ``gateway`` is the payment gateway
    (default: an in-process ``FakeGateway``), ``breakers`` the app's breakers (default:
    ``shop_breakers()``); they must declare the ``payment-gateway`` call breaker.
    """
    store = store or store_from_url(db_url)
    breakers = breakers if breakers is not None else shop_breakers()
    services = command_services(
        stock=stock, step_timeout=step_timeout, gateway=gateway, breakers=breakers
    )
    services.insert(1, build_read_side(store))
    return App(
        services,
        url=url,
        transport=transport,
        middleware=middleware,
        config=config or AppConfig(prefix=prefix),
        store=store,
        breakers=breakers,
        contracts=contracts.ALL,
    )


def build_command_side(
    url: str = "memory://",
    *,
    db_url: str = "sqlite:///leveret-shop.sqlite3",
    store: Store | None = None,
    prefix: str = "shop",
    config: AppConfig | None = None,
    stock: Mapping[str, int] = DEFAULT_STOCK,
    step_timeout: float | None = 60.0,
) -> App:
    """The shop without its read side: what ``build_app`` runs, minus ``order_view``."""
    breakers = shop_breakers()
    return App(
        command_services(stock=stock, step_timeout=step_timeout, breakers=breakers),
        url=url,
        config=config or AppConfig(prefix=prefix),
        store=store or store_from_url(db_url),
        breakers=breakers,
        contracts=contracts.ALL,
    )


def build_read_side_app(
    url: str = "memory://",
    *,
    db_url: str = "sqlite:///leveret-shop.sqlite3",
    store: Store | None = None,
    prefix: str = "shop",
    config: AppConfig | None = None,
) -> App:
    """The shop's read side alone: the ``orders_view`` projection and its queries.

    Its queues are declared when it first starts; from then on they keep the events it has not
    applied yet, also while it is stopped.
    """
    store = store or store_from_url(db_url)
    return App(
        [build_read_side(store)],
        url=url,
        config=config or AppConfig(prefix=prefix),
        store=store,
        contracts=contracts.ALL,
    )


_URL = os.environ.get("LEVERET_SHOP_URL", "memory://")
_DB_URL = os.environ.get("LEVERET_SHOP_DB_URL", "sqlite:///leveret-shop.sqlite3")
_PREFIX = os.environ.get("LEVERET_SHOP_PREFIX", "shop")
_CONFIG = AppConfig(prefix=_PREFIX, queue_type=os.environ.get("LEVERET_SHOP_QUEUE_TYPE", "classic"))

app = build_app(_URL, db_url=_DB_URL, config=_CONFIG)
command_side = build_command_side(_URL, db_url=_DB_URL, config=_CONFIG)
read_side = build_read_side_app(
    _URL, db_url=os.environ.get("LEVERET_SHOP_VIEW_DB_URL", _DB_URL), config=_CONFIG
)
