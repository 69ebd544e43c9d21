"""The shop's order flow, choreographed: no coordinator, services react to each other's events.

``leveret run handlers.choreography:app`` serves it. The flow, each arrow an event on the events
exchange (every handler ``transactional=True``: its tables, inbox row and emitted messages commit
together)::

    PlaceOrder -> orders -> OrderPlaced -> inventory -> InventoryReserved -> payment
        -> PaymentCharged -> shipping -> OrderShipped -> orders -> OrderCompleted
    failures:  InventoryRejected -> orders (cancelled, nothing to undo)
               PaymentDeclined -> inventory releases -> InventoryReleased -> orders (cancelled)
               ShippingFailed -> payment refunds -> PaymentRefunded -> inventory releases
                   -> InventoryReleased -> orders (cancelled)

Payment and shipping also take ``OrderPlaced`` (the customer and amount, the address) and act
once they have both halves. The services share the orchestrated shop's contracts, aggregates,
payment gateway and breaker, tables, notifications and read side (``orders_view``: ``GetOrder``
and ``ListOrders`` answer for both flows), so one set of invariants checks both. What the flow
adds is the ``order_trail`` service (``handlers.choreography.trail``): the operator's view of
orders that no saga holds, which replaces ``leveret sagas``.

``LEVERET_SHOP_URL`` (default ``memory://``), ``LEVERET_SHOP_DB_URL`` (default
``sqlite:///leveret-shop-choreography.sqlite3``) and ``LEVERET_SHOP_PREFIX`` (default
``shop-choreography``) pick the broker, database and name prefix, as for ``handlers.app``. Give
the two flows different prefixes and databases: their services have the same names and tables.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence

import contracts
from framework import App, AppConfig, Service
from framework.middleware import Middleware
from framework.resilience import Breakers
from framework.store import Store, store_from_url
from framework.transport.base import Transport
from handlers.app import DEFAULT_STOCK, shop_breakers
from handlers.choreography.inventory import build_inventory
from handlers.choreography.orders import build_orders
from handlers.choreography.payment import build_payment
from handlers.choreography.shipping import build_shipping
from handlers.choreography.trail import build_trail
from handlers.gateway import PaymentGateway
from handlers.notifications import build_notifications
from handlers.orders import build_read_side

__all__ = ["DEFAULT_DB_URL", "DEFAULT_PREFIX", "app", "build_choreography_app", "services"]

DEFAULT_DB_URL = "sqlite:///leveret-shop-choreography.sqlite3"
DEFAULT_PREFIX = "shop-choreography"


def services(
    store: Store,
    *,
    stock: Mapping[str, int] = DEFAULT_STOCK,
    gateway: PaymentGateway | None = None,
    breakers: Breakers | None = None,
    clock: Callable[[], float] = time.time,
) -> list[Service]:
    """The services of the choreographed flow, the read side and the order trail included.

    Args:
        store: the store the read side and the trail answer queries from (the app's).
        stock: each SKU's starting stock.
        gateway: the payment gateway (default: an in-process ``FakeGateway``).
        breakers: the app's breakers, whose ``payment-gateway`` call breaker guards the
            gateway; give the app the same object.
        clock: Unix seconds, for the orders' and the trail's times.
    """
    return [
        build_orders(clock=clock),
        build_read_side(store),
        build_inventory(stock),
        build_payment(gateway=gateway, breakers=breakers),
        build_shipping(),
        build_notifications(),
        build_trail(store, clock=clock),
    ]


def build_choreography_app(
    url: str = "memory://",
    *,
    db_url: str = DEFAULT_DB_URL,
    store: Store | None = None,
    prefix: str = DEFAULT_PREFIX,
    config: AppConfig | None = None,
    stock: Mapping[str, int] = DEFAULT_STOCK,
    transport: Transport | None = None,
    middleware: Sequence[Middleware] = (),
    gateway: PaymentGateway | None = None,
    breakers: Breakers | None = None,
) -> App:
    """A fresh choreographed shop: the flow's services, the read side and the trail on one store.

    Its arguments mean what ``handlers.app.build_app``'s do; ``breakers`` default to
    ``shop_breakers()``. Its contracts are the shop's (``contracts.ALL``), so the snapshots
    that ``leveret contracts check handlers.app:app`` compares cover them.
    """
    store = store or store_from_url(db_url)
    breakers = breakers if breakers is not None else shop_breakers()
    return App(
        services(store, stock=stock, gateway=gateway, breakers=breakers),
        url=url,
        transport=transport,
        middleware=middleware,
        config=config or AppConfig(prefix=prefix),
        store=store,
        breakers=breakers,
        contracts=contracts.ALL,
    )


_CONFIG = AppConfig(
    prefix=os.environ.get("LEVERET_SHOP_PREFIX", DEFAULT_PREFIX),
    queue_type=os.environ.get("LEVERET_SHOP_QUEUE_TYPE", "classic"),
)
app = build_choreography_app(
    os.environ.get("LEVERET_SHOP_URL", "memory://"),
    db_url=os.environ.get("LEVERET_SHOP_DB_URL", DEFAULT_DB_URL),
    config=_CONFIG,
)
