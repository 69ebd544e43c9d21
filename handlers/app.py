"""The reference shop wired into one App: ``leveret run handlers.app:app``.

``LEVERET_SHOP_URL`` (default ``memory://``) and ``LEVERET_SHOP_PREFIX`` (default ``shop``) pick
the broker and the name prefix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from framework import App, AppConfig
from handlers.inventory import Stock, build_inventory
from handlers.notifications import Outbox, build_notifications
from handlers.orders import OrderBook, build_orders
from handlers.payment import Ledger, build_payment
from handlers.shipping import Shipments, build_shipping

__all__ = ["Shop", "app", "build_app", "shop"]


def _default_stock() -> dict[str, int]:
    return {"apple": 1_000, "pear": 1_000, "plum": 1_000, "rare-truffle": 1}


@dataclass
class Shop:
    """The in-memory state of every shop service."""

    book: OrderBook = field(default_factory=OrderBook)
    stock: Stock = field(default_factory=lambda: Stock(on_hand=_default_stock()))
    ledger: Ledger = field(default_factory=Ledger)
    shipments: Shipments = field(default_factory=Shipments)
    outbox: Outbox = field(default_factory=Outbox)


def build_app(
    url: str = "memory://", *, prefix: str = "shop", config: AppConfig | None = None
) -> tuple[App, Shop]:
    """A fresh shop app and its state."""
    state = Shop()
    services = [
        build_orders(state.book),
        build_inventory(state.stock),
        build_payment(state.ledger),
        build_shipping(state.shipments),
        build_notifications(state.outbox),
    ]
    cfg = config or AppConfig(prefix=prefix)
    return App(services, url=url, config=cfg), state


app, shop = build_app(
    os.environ.get("LEVERET_SHOP_URL", "memory://"),
    prefix=os.environ.get("LEVERET_SHOP_PREFIX", "shop"),
)
