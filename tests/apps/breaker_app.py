"""An app with circuit breakers, for ``leveret breakers`` tests.

``LEVERET_TEST_URL`` (default ``memory://``) and ``LEVERET_TEST_PREFIX`` (default
``breakerapp``) come from the environment, so the command under test finds the same control
exchange as the app a test runs.
"""

from __future__ import annotations

import os

from contracts.orders import PlaceOrder
from framework import App, AppConfig, Service
from framework.resilience import BreakerConfig, Breakers, CachedReply, Downstream, WhenOpen

__all__ = ["app", "build_app"]


def build_app(url: str, prefix: str) -> App:
    """A fresh app of the ``orders`` service guarding two downstreams."""
    orders = Service("orders")

    @orders.command
    async def place_order(cmd: PlaceOrder) -> None:
        return None

    breakers = Breakers(
        [
            Downstream(
                "inventory",
                config=BreakerConfig(window_size=20, minimum_calls=5),
                when_open=WhenOpen.WAIT,
            ),
            Downstream("reports", routes=("reports.#",), fallback=CachedReply(max_age=60)),
        ]
    )
    return App([orders], url=url, config=AppConfig(prefix=prefix), breakers=breakers)


app = build_app(
    os.environ.get("LEVERET_TEST_URL", "memory://"),
    os.environ.get("LEVERET_TEST_PREFIX", "breakerapp"),
)
