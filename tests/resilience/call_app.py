"""An in-memory app with a call breaker, for ``leveret breakers`` listing its declarations."""

from __future__ import annotations

from framework import App, Service
from framework.resilience import Breakers, Downstream, ExternalCall

__all__ = ["app"]

app = App(
    [Service("orders")],
    url="memory://",
    breakers=Breakers([Downstream("inventory"), ExternalCall("payment-gateway", timeout=2.0)]),
)
