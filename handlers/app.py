"""The reference shop wired into one App: ``leveret run handlers.app:app``.

``LEVERET_SHOP_URL`` (default ``memory://``), ``LEVERET_SHOP_DB_URL`` (default
``sqlite:///leveret-shop.sqlite3``) and ``LEVERET_SHOP_PREFIX`` (default ``shop``) pick the broker,
the database and the name prefix.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import contracts
from framework import App, AppConfig
from framework.store import Store, store_from_url
from handlers.inventory import build_inventory
from handlers.notifications import build_notifications
from handlers.orders import build_orders, build_read_side
from handlers.payment import build_payment
from handlers.shipping import build_shipping

__all__ = ["DEFAULT_STOCK", "app", "build_app"]

DEFAULT_STOCK: Mapping[str, int] = {
    "apple": 1_000_000_000,
    "pear": 1_000_000_000,
    "plum": 1_000_000_000,
    "discontinued": 0,
}


def build_app(
    url: str = "memory://",
    *,
    db_url: str = "sqlite:///leveret-shop.sqlite3",
    store: Store | None = None,
    prefix: str = "shop",
    config: AppConfig | None = None,
    stock: Mapping[str, int] = DEFAULT_STOCK,
    step_timeout: float | None = 60.0,
) -> App:
    """A fresh shop app: five services and the order saga on one store."""
    store = store or store_from_url(db_url)
    services = [
        build_orders(step_timeout=step_timeout),
        build_read_side(store),
        build_inventory(stock),
        build_payment(),
        build_shipping(),
        build_notifications(),
    ]
    return App(
        services,
        url=url,
        config=config or AppConfig(prefix=prefix),
        store=store,
        contracts=contracts.ALL,
    )


app = build_app(
    os.environ.get("LEVERET_SHOP_URL", "memory://"),
    db_url=os.environ.get("LEVERET_SHOP_DB_URL", "sqlite:///leveret-shop.sqlite3"),
    prefix=os.environ.get("LEVERET_SHOP_PREFIX", "shop"),
)
