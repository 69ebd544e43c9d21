"""The reference shop plus a ``flaky`` service whose handler fails on purpose, for metrics tests.

``Work(n, fail_first=True)`` fails its first run and succeeds on the retry; ``Work(n,
poison=True)`` fails every run and is dead-lettered after one immediate retry. Everything comes
from the environment, so ``leveret run tests.apps.metrics_app:app`` workers can be pointed at a
test's own vhost, prefix and database:

* ``LEVERET_TEST_URL`` (default ``memory://``), ``LEVERET_TEST_PREFIX`` (default
  ``metricsapp``) and ``LEVERET_TEST_DB_URL`` (default ``memory://``).
"""

from __future__ import annotations

import os

import contracts
from framework import App, AppConfig, Command, Context, Service
from framework.retry import RetryPolicy
from framework.store import store_from_url
from handlers.app import DEFAULT_STOCK
from handlers.inventory import build_inventory
from handlers.notifications import build_notifications
from handlers.orders import build_orders, build_read_side
from handlers.payment import build_payment
from handlers.shipping import build_shipping

__all__ = ["FLAKY_HANDLER", "Work", "app", "build_app"]

FLAKY_HANDLER = "flaky.work"


class Work(Command):
    __wire_name__ = "flaky.work"

    n: int
    fail_first: bool = False
    poison: bool = False


def build_flaky() -> Service:
    """One immediate retry, then the DLQ."""
    service = Service("flaky", retry=RetryPolicy(immediate=1, delays=()))

    @service.command
    async def work(cmd: Work, ctx: Context) -> None:
        if cmd.poison or (cmd.fail_first and ctx.attempt == 0):
            raise ValueError(f"work {cmd.n} failed on attempt {ctx.attempt + 1}")

    return service


def build_app(
    *, url: str = "memory://", prefix: str = "metricsapp", db_url: str = "memory://"
) -> App:
    """The shop's services and the flaky one in one app, on one store."""
    store = store_from_url(db_url)
    return App(
        [
            build_orders(step_timeout=60.0),
            build_read_side(store),
            build_inventory(DEFAULT_STOCK),
            build_payment(),
            build_shipping(),
            build_notifications(),
            build_flaky(),
        ],
        url=url,
        config=AppConfig(prefix=prefix),
        store=store,
        contracts=contracts.ALL,
    )


app = build_app(
    url=os.environ.get("LEVERET_TEST_URL", "memory://"),
    prefix=os.environ.get("LEVERET_TEST_PREFIX", "metricsapp"),
    db_url=os.environ.get("LEVERET_TEST_DB_URL", "memory://"),
)
