"""``Breakers``: the circuit breakers of one app, wired to its bus, its transport and its logs.

Give an app its breakers with ``App(services, breakers=Breakers([...]))``. The app then routes
every send, publish and query through them (publish middleware, innermost), runs the handlers
that need it under ``HandlerGuard`` (consume middleware, outermost), and at start-up the
breakers listen for the broker blocking the connection and, if asked, join the control exchange
their sibling workers share. Breakers of external calls (``ExternalCall``) guard whatever the
app awaits through ``Breakers.call`` and ``Breakers.guard``.
"""

from __future__ import annotations

import math
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import structlog

from framework.errors import BreakerOpen, ConfigurationError
from framework.messages import MessageKind
from framework.middleware import Incoming
from framework.resilience.breaker import CircuitBreaker, Clock
from framework.resilience.calls import CallGate, ExternalCall, GuardedCall, ResultFallback
from framework.resilience.control import BreakerControl
from framework.resilience.downstream import Downstream
from framework.resilience.events import (
    BreakerEvent,
    BreakerMetrics,
    State,
    StateTransition,
    TransitionReason,
)
from framework.resilience.gate import Gate, LiveBreaker
from framework.resilience.middleware import (
    BreakerMiddleware,
    Deferral,
    HandlerGuard,
    deferral_of,
)
from framework.routing import Naming
from framework.transport.base import OutgoingMessage, Transport

if TYPE_CHECKING:
    from framework.app import App
    from framework.handlers import HandlerSpec

__all__ = ["DEFERRALS", "Breakers", "control_secret"]

# Header counting how often a message was deferred by ``defer_when_open`` (not an attempt).
DEFERRALS = "leveret-deferrals"
SECRET_ENV = "LEVERET_SECRET"

_log = structlog.get_logger("leveret.breakers")
_GROUP_WORD = "app"

P = ParamSpec("P")
R = TypeVar("R")


class Breakers:
    """One circuit breaker per downstream and per external call, for one app.

    Args:
        downstreams: the guarded destinations (the first ``Downstream`` that matches a message
            gates it) and the guarded external calls (``ExternalCall``, used through ``call``
            and ``guard``).
        shared: share transitions with the other workers of the same service over a fanout
            control exchange (counting stays local to each worker).
        group: who shares: the control exchange is ``<prefix>.breakers.<group>``; by default
            the app's service names, sorted and joined with ``.``.
        status: answer ``leveret breakers`` status requests over the same exchange.
        defer_delays: seconds a message deferred by ``defer_when_open`` may wait; the smallest
            one at least as long as the breaker's remaining wait is used (the longest when that
            is unknown). Each becomes one TTL queue.
        clock: monotonic seconds for every breaker (a fake one in tests).

    Raises:
        ConfigurationError: two breakers share a name, or a delay is not positive.
    """

    def __init__(
        self,
        downstreams: Sequence[Downstream | ExternalCall],
        *,
        shared: bool = False,
        group: str | None = None,
        status: bool = True,
        defer_delays: Sequence[float] = (1.0, 5.0, 30.0),
        clock: Clock = time.monotonic,
    ) -> None:
        for declared in downstreams:
            if not isinstance(declared, Downstream | ExternalCall):
                raise ConfigurationError(
                    "Breakers takes Downstream(...) and ExternalCall(...) declarations, "
                    f"got {declared!r}"
                )
        names = [d.name for d in downstreams]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigurationError(f"two breakers are named {duplicates[0]!r}: rename one")
        if not defer_delays or any(not d > 0 for d in defer_delays):
            raise ConfigurationError(f"defer_delays={tuple(defer_delays)!r}: use seconds > 0")
        self.shared = shared
        self.status = status
        self.clock = clock
        self._group = group
        self._defer_ms = tuple(sorted({max(1, round(d * 1000)) for d in defer_delays}))
        self._gates: dict[str, LiveBreaker] = {}
        for declared in downstreams:
            breaker = CircuitBreaker(declared.name, declared.config, clock=clock)
            gate: LiveBreaker
            if isinstance(declared, ExternalCall):
                gate = CallGate(declared, breaker, clock)
            else:
                gate = Gate(declared, breaker, clock)
            self._gates[declared.name] = gate
            breaker.subscribe(self._listener(gate), transitions_only=True)
        # Publishes go through downstream gates only; external calls through call() and guard().
        self._downstreams = [g for g in self._gates.values() if isinstance(g, Gate)]
        self.publish_middleware = BreakerMiddleware(self._downstreams)
        self.consume_middleware = HandlerGuard(self)
        self.worker_id = f"{socket.gethostname()}:{uuid.uuid4().hex[:8]}"
        self._bound: object | None = None
        self._naming: Naming | None = None
        self._transport: Transport | None = None
        self._control: BreakerControl | None = None
        self._blocked: str | None = None

    def __repr__(self) -> str:
        return f"Breakers({list(self._gates)})"

    # -- reading -----------------------------------------------------------------------------

    def __iter__(self) -> Iterator[CircuitBreaker]:
        return (gate.breaker for gate in self._gates.values())

    def __len__(self) -> int:
        return len(self._gates)

    def __getitem__(self, name: str) -> CircuitBreaker:
        """The breaker named ``name`` (a downstream's or an external call's).

        Raises:
            KeyError: no breaker has that name.
        """
        return self._gates[name].breaker

    def downstream(self, name: str) -> Downstream:
        """The declaration of downstream ``name``.

        Raises:
            KeyError: no downstream has that name.
        """
        gate = self._gates[name]
        if not isinstance(gate, Gate):
            raise KeyError(name)
        return gate.downstream

    def declaration(self, name: str) -> Downstream | ExternalCall:
        """The declaration of breaker ``name``: a downstream or an external call.

        Raises:
            KeyError: no breaker has that name.
        """
        gate = self._gates[name]
        return gate.downstream if isinstance(gate, Gate) else self._call_gate(name).declared

    # -- guarding external calls -------------------------------------------------------------

    def call(self, name: str, *, timeout: float | None = None) -> GuardedCall:
        """Guard a block by the breaker of external call ``name``::

            async with breakers.call("payment-gateway"):
                await client.charge(...)

        Entering raises ``BreakerOpen`` while the breaker refuses (the block does not run);
        leaving counts how the block went. The block is cancelled after ``timeout`` seconds
        (None: the declaration's) and raises ``TimeoutError``, a failure.

        Raises:
            ConfigurationError: no ``ExternalCall`` has that name.
        """
        return self._call_gate(name).attempt(timeout)

    def guard(
        self,
        name: str,
        *,
        fallback: ResultFallback | tuple[ResultFallback, ...] | None = None,
        fallback_on_failure: bool = True,
        timeout: float | None = None,
    ) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Coroutine[Any, Any, R]]]:
        """Decorate an async function so that every call goes through breaker ``name``::

            @breakers.guard("payment-gateway", fallback=CachedResult(max_age=60))
            async def exchange_rate(currency: str) -> Decimal: ...

        While the breaker refuses, the fallbacks answer in order (``CachedResult``: the last
        good result for the same arguments; ``DefaultResult``: a value); without an answer the
        call raises ``BreakerOpen``, which a ``defer_when_open`` handler turns into a deferral.

        Args:
            name: the ``ExternalCall`` whose breaker guards the function.
            fallback: a fallback, or several tried in order.
            fallback_on_failure: also answer from the fallbacks when a call fails in a way the
                breaker counts (exception, timeout), not only when it is refused.
            timeout: seconds per call (None: the declaration's).

        Raises:
            ConfigurationError: no ``ExternalCall`` has that name, a bad fallback, or the
                decorated function is not ``async def``.
        """
        gate = self._call_gate(name)

        def decorate(func: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
            return gate.guard(
                func,
                fallback=fallback,
                fallback_on_failure=fallback_on_failure,
                timeout=timeout,
            )

        return decorate

    def _call_gate(self, name: str) -> CallGate:
        gate = self._gates.get(name)
        if not isinstance(gate, CallGate):
            what = "a downstream, for publishes" if gate is not None else "not declared"
            raise ConfigurationError(
                f"breaker {name!r} is {what}: declare ExternalCall({name!r}, ...) in "
                "Breakers([...]) to guard calls with it"
            )
        return gate

    def consume_middleware_for(self, spec: HandlerSpec) -> HandlerGuard | None:
        """The consume middleware handler ``spec`` needs, or None when it would do nothing.

        ``HandlerGuard`` does two things: it defers the message of a ``defer_when_open``
        command or event handler, and it makes refused sends inside a handler raise instead of
        waiting — which only changes anything when a downstream waits (``WhenOpen.WAIT``).
        Elsewhere it would be one more layer per delivery for nothing.
        """
        deferred = spec.kind is not MessageKind.QUERY and deferral_of(spec.func) is not None
        if deferred or any(gate.wait_sends for gate in self._downstreams):
            return self.consume_middleware
        return None

    def breaker_for(self, routing_key: str, *, is_event: bool = False) -> CircuitBreaker | None:
        """The breaker gating ``routing_key``, or None (for tools and an outbox relay)."""
        gate = self.publish_middleware.route(routing_key, is_event=is_event)
        return gate.breaker if gate is not None else None

    def metrics(self) -> list[BreakerMetrics]:
        """A snapshot of every breaker, in declaration order."""
        return [gate.breaker.metrics() for gate in self._gates.values()]

    @property
    def defer_tiers_ms(self) -> tuple[int, ...]:
        """The delay tiers (milliseconds) that messages deferred by ``defer_when_open`` wait in."""
        return self._defer_ms

    @property
    def group(self) -> str:
        """The name shared by the workers whose transitions are shared."""
        return self._group or _GROUP_WORD

    @property
    def control(self) -> BreakerControl | None:
        """This worker's end of the control exchange while the app runs (shared or status)."""
        return self._control

    @property
    def blocked(self) -> str | None:
        """The broker's reason while it blocks this app's connection (resource alarm)."""
        return self._blocked

    def tick(self) -> None:
        """Make due time-driven transitions now and wake waiting sends.

        An app arms loop timers for this; call it yourself after advancing a fake clock.
        """
        for gate in self._gates.values():
            gate.breaker.tick()
            gate.wake()

    async def publish_guarded(
        self,
        transport: Transport,
        message: OutgoingMessage,
        *,
        exchange: str,
        routing_key: str,
        mandatory: bool,
    ) -> None:
        """Publish a ready wire message through its breaker, refusing at once when it is open.

        The entry point for an outbox relay, which holds rows rather than contracts: the
        outcome is counted like any publish (a nack, a confirm timeout, a return). Only the
        app's command and event exchanges are gated; anything else (delay queues) goes straight
        to the transport.

        Raises:
            BreakerOpen: the destination's breaker refused; nothing was published. Park the row
                (and the later rows for ``exc.breaker``) until ``wait_permitted`` says so.
            PublishFailed: as ``Transport.publish``.
        """
        naming = self._naming
        gate = None
        if naming is not None and exchange in (naming.commands, naming.events):
            gate = self.publish_middleware.gate_for(exchange, routing_key)
        if gate is None:
            await transport.publish(
                message, exchange=exchange, routing_key=routing_key, mandatory=mandatory
            )
            return
        breaker, clock = gate.breaker, gate.clock
        permit = breaker.try_acquire()
        if permit is None:
            raise breaker.refusal(exchange=exchange, routing_key=routing_key)
        started = clock()
        try:
            await transport.publish(
                message, exchange=exchange, routing_key=routing_key, mandatory=mandatory
            )
        except Exception as exc:
            breaker.on_error(permit, clock() - started, exc)
            raise
        except BaseException:
            gate.cancelled(permit)
            raise
        breaker.on_success(permit, clock() - started)

    async def wait_permitted(self, name: str, *, timeout: float) -> bool:
        """Wait until breaker ``name`` would permit a call, at most ``timeout`` clock seconds.

        Does not take a permit. For a relay that parks messages while the breaker is open.
        """
        gate = self._gates[name]
        deadline = self.clock() + timeout
        while True:
            after = gate.breaker.retry_after()
            if after == 0.0:
                return True
            if self.clock() >= deadline:
                return False
            await gate.wait_change(deadline)

    # -- wiring into an app ------------------------------------------------------------------

    def bind(self, app: App) -> None:
        """Adopt ``app`` (called by ``App``); a Breakers object serves one app only.

        Raises:
            ConfigurationError: already bound to another app.
        """
        if self._bound is not None and self._bound is not app:
            raise ConfigurationError(
                "these Breakers already belong to another App: give each App its own Breakers"
            )
        self._bound = app
        if self._group is None:
            self._group = ".".join(sorted(s.name for s in app.services)) or _GROUP_WORD
        self._naming = app.naming
        self.publish_middleware.bind(app.naming.events)

    async def start(self, app: App) -> None:
        """Declare deferral queues, listen for blocked connections, join the control exchange."""
        self._transport = transport = app.transport
        naming = self._naming = app.naming
        if any(deferral_of(spec.func) is not None for spec in app.handlers):
            await transport.declare(naming.base_topology(self._defer_ms))
        transport.add_flow_listener(self._on_flow)
        if self.shared or self.status:
            self._control = BreakerControl(
                self,
                transport,
                naming.prefix,
                self.group,
                share=self.shared,
                secret=control_secret(app),
            )
            await self._control.start()
        _log.info(
            "breakers_started",
            breakers=list(self._gates),
            shared=self.shared,
            group=self.group,
            worker=self.worker_id,
        )

    async def stop(self) -> None:
        """Leave the control exchange, cancel timers, wake waiting sends."""
        if self._control is not None:
            control, self._control = self._control, None
            await control.stop()
        for gate in self._gates.values():
            gate.cancel_timer()
            gate.wake()
        self._transport = None

    # -- events ------------------------------------------------------------------------------

    def _listener(self, gate: LiveBreaker) -> Callable[[BreakerEvent], None]:
        def on_event(event: BreakerEvent) -> None:
            if not isinstance(event, StateTransition):
                return
            gate.arm_timer()
            gate.wake()
            _log_transition(event)
            control = self._control
            if control is not None and event.origin is None:
                control.transitioned(event)

        return on_event

    def _on_flow(self, blocked: bool, reason: str | None) -> None:
        """The broker blocked (resource alarm) or unblocked this app's connection."""
        if blocked:
            self._blocked = reason or "resource alarm"
            _log.warning("broker_blocked_publishing", reason=self._blocked)
            for gate in self._downstreams:  # external calls do not go through the broker
                breaker = gate.breaker
                if breaker.state not in (State.FORCED_OPEN, State.DISABLED):
                    breaker.transition_to_open(TransitionReason.CONNECTION_BLOCKED, wait=math.inf)
            return
        if self._blocked is None:
            return
        self._blocked = None
        _log.info("broker_unblocked_publishing")
        for gate in self._downstreams:
            breaker = gate.breaker
            if breaker.open_reason is TransitionReason.CONNECTION_BLOCKED:
                breaker.transition_to_half_open(TransitionReason.CONNECTION_UNBLOCKED)

    # -- deferring a handler's message -------------------------------------------------------

    async def defer(self, msg: Incoming, refusal: BreakerOpen, deferral: Deferral) -> bool:
        """Re-queue ``msg`` after the breaker's wait; False when it must fail instead."""
        transport, naming = self._transport, self._naming
        if transport is None or naming is None:
            return False
        delivery = msg.delivery
        count = delivery.headers.get(DEFERRALS, 0)
        count = count if isinstance(count, int) and not isinstance(count, bool) else 0
        limit = deferral.max_deferrals
        if limit is not None and count >= limit:
            _log.warning(
                "message_deferral_limit_reached",
                handler=msg.handler.name,
                message_id=delivery.message_id,
                deferrals=count,
            )
            return False
        ms = self._defer_delay_ms(refusal.retry_after)
        spec = msg.handler
        queue = naming.handler_queue(spec.service, spec.message_type.__wire_name__)
        headers = dict(delivery.headers)
        headers[DEFERRALS] = count + 1
        try:
            await transport.publish(
                delivery.to_outgoing(headers=headers, expiration_ms=ms),
                exchange=naming.delay(ms),
                routing_key=queue,
            )
        except Exception as exc:
            _log.error(
                "message_deferral_failed",
                handler=spec.name,
                message_id=delivery.message_id,
                exc_info=exc,
            )
            return False
        _log.info(
            "message_deferred",
            handler=spec.name,
            message_id=delivery.message_id,
            correlation_id=delivery.correlation_id,
            breaker=refusal.breaker,
            delay_ms=ms,
            deferrals=count + 1,
        )
        return True

    def _defer_delay_ms(self, retry_after: float | None) -> int:
        if retry_after is None:
            return self._defer_ms[-1]
        wanted = retry_after * 1000
        for ms in self._defer_ms:
            if ms >= wanted:
                return ms
        return self._defer_ms[-1]


def control_secret(app: App) -> str | None:
    """The secret that signs the breakers' control messages: ``AppConfig.secret``, else
    ``LEVERET_SECRET``; None when neither is set (then ``user_id`` alone authenticates)."""
    secret = app.config.secret
    return secret if secret is not None else os.environ.get(SECRET_ENV) or None


def _log_transition(event: StateTransition) -> None:
    metrics = event.metrics
    fields: dict[str, object] = {
        "breaker": event.breaker,
        "from_state": event.from_state.value,
        "reason": event.reason.value,
    }
    if metrics is not None:
        fields.update(
            failure_rate=metrics.failure_rate,
            slow_call_rate=metrics.slow_call_rate,
            window=metrics.window,
            buffered=metrics.buffered,
            failed=metrics.failed,
            slow=metrics.slow,
        )
    if event.wait is not None:
        fields["wait"] = None if math.isinf(event.wait) else round(event.wait, 3)
    if event.origin is not None:
        fields["origin"] = event.origin
    level = _log.warning if event.to_state in (State.OPEN, State.FORCED_OPEN) else _log.info
    level(event.log_event, **fields)
