"""Fixtures for breaker tests: the app-level ``backend`` (memory and RabbitMQ) and helpers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from framework import App, AppConfig, Service
from framework.resilience import Breakers
from framework.store import Store
from tests.app.conftest import Backend, backend, next_item

__all__ = ["Backend", "backend", "next_item", "start_app"]


async def start_app(
    backend: Backend,
    services: Sequence[Service],
    *,
    breakers: Breakers | None = None,
    start: bool = True,
    store: Store | None = None,
    **config: Any,
) -> App:
    """An app with ``breakers`` (and ``store``) on the test's backend, stopped after the test."""
    config.setdefault("prefix", backend.prefix)
    app = App(
        services,
        transport=backend.transport(),
        config=AppConfig(**config),
        breakers=breakers,
        store=store,
    )
    backend._apps.append(app)
    if start:
        await app.start()
    return app
