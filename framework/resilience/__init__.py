"""Circuit breakers that gate publishing and calls to external APIs, with fallbacks that never
drop a message.

Declare one ``Downstream`` per destination (and one ``ExternalCall`` per external API) and give
the app its ``Breakers``::

    from framework.resilience import Breakers, BreakerConfig, CachedReply, Downstream, WhenOpen

    app = App(
        [orders],
        breakers=Breakers(
            [
                Downstream("inventory", config=BreakerConfig(failure_rate_threshold=50)),
                Downstream("reports", fallback=CachedReply(max_age=300)),
                ExternalCall("payment-gateway", timeout=2.0),
            ],
            shared=True,
        ),
    )

Guard a block with ``async with breakers.call("payment-gateway"):``, or a function that returns
a value with ``@breakers.guard("payment-gateway", fallback=CachedResult(max_age=60))``.

See docs/breakers.md for the semantics.
"""

from framework.errors import BreakerOpen
from framework.resilience.breaker import CircuitBreaker, Clock, Listener, Outcome
from framework.resilience.calls import (
    CachedResult,
    DefaultResult,
    ExternalCall,
    GuardedCall,
    ResultFallback,
)
from framework.resilience.config import Backoff, BreakerConfig, WindowType
from framework.resilience.downstream import (
    CachedReply,
    DefaultReply,
    Downstream,
    Fallback,
    WhenOpen,
)
from framework.resilience.events import (
    BreakerClosed,
    BreakerDisabled,
    BreakerEvent,
    BreakerForcedOpen,
    BreakerHalfOpened,
    BreakerMetrics,
    BreakerOpened,
    BreakerReset,
    CallNotPermitted,
    State,
    StateTransition,
    TransitionReason,
)
from framework.resilience.gate import fail_fast
from framework.resilience.middleware import (
    BreakerMiddleware,
    Deferral,
    HandlerGuard,
    defer_when_open,
)
from framework.resilience.registry import DEFERRALS, Breakers

__all__ = [
    "DEFERRALS",
    "Backoff",
    "BreakerClosed",
    "BreakerConfig",
    "BreakerDisabled",
    "BreakerEvent",
    "BreakerForcedOpen",
    "BreakerHalfOpened",
    "BreakerMetrics",
    "BreakerMiddleware",
    "BreakerOpen",
    "BreakerOpened",
    "BreakerReset",
    "Breakers",
    "CachedReply",
    "CachedResult",
    "CallNotPermitted",
    "CircuitBreaker",
    "Clock",
    "DefaultReply",
    "DefaultResult",
    "Deferral",
    "Downstream",
    "ExternalCall",
    "Fallback",
    "GuardedCall",
    "HandlerGuard",
    "Listener",
    "Outcome",
    "ResultFallback",
    "State",
    "StateTransition",
    "TransitionReason",
    "WhenOpen",
    "WindowType",
    "defer_when_open",
    "fail_fast",
]
