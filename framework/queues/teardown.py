"""Removing an app's queues and exchanges from the broker: the end of a throwaway run.

RabbitMQ cannot list queues over AMQP, so what an app owns is worked out from the app itself:
its declared topology (handler queues, their DLQs, the retry delay tiers, the exchanges), the
delay tiers its sagas' deadlines and compensation waits use (declared by the outbox the first
time a deadline is armed), its breakers' deferral tiers and control exchange. A saga whose
``on()`` rules arm deadlines of their own may use further delay tiers; those are not known here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from framework.resilience.control import control_exchange
from framework.transport.base import ExchangeSpec, ExchangeType, Topology, Transport

if TYPE_CHECKING:
    from framework.app import App
    from framework.saga.definition import Saga

__all__ = ["Deleted", "delete_topology", "owned_topology"]


@dataclass(frozen=True, slots=True)
class Deleted:
    """What ``delete_topology`` removed (names; those that did not exist included)."""

    queues: tuple[str, ...]
    exchanges: tuple[str, ...]


def _saga_deadlines(saga: Saga[Any]) -> set[float]:
    """Every deadline the step form arms: step timeouts, retry backoffs, compensation waits."""
    seconds: set[float] = set()
    for step in saga.steps:
        if step.timeout is not None:
            seconds.add(step.timeout)
        seconds.update(step.retry.delay(attempt) for attempt in range(1, step.retry.attempts + 1))
        if step.compensate is not None:
            attempts = saga.compensation_retry.attempts + 1
            seconds.update(saga._compensation_wait(step, a) for a in range(1, attempts + 1))
    return seconds


def owned_topology(app: App) -> Topology:
    """The queues and exchanges ``app`` declares under its prefix (see the module docstring)."""
    naming = app.naming
    topology = app.topology
    delays: set[int] = set()
    for runner in app.sagas.values():
        # The runner rounds a deadline the same way (framework.saga.runner).
        delays.update(max(1, round(s * 1000)) for s in _saga_deadlines(runner.saga))
    if app.breakers is not None:
        delays.update(app.breakers.defer_tiers_ms)
        control = control_exchange(naming.prefix, app.breakers.group)
        topology = topology + Topology(exchanges=(ExchangeSpec(control, ExchangeType.FANOUT),))
    for ms in sorted(delays):
        topology = topology + naming.delay_topology(ms)
    return topology


async def delete_topology(app: App, *, transport: Transport | None = None) -> Deleted:
    """Delete every queue (with its messages) and exchange ``app`` owns; see ``owned_topology``.

    Stop the app's workers first: a running worker's connection declares its queues again when
    it recovers. Names that do not exist are skipped by the broker, so this is idempotent.

    Args:
        app: the app whose topology goes (it need not be started).
        transport: a connected transport to delete through (default: the app's, connected).
    """
    transport = transport if transport is not None else app.transport
    topology = owned_topology(app)
    queues = tuple(q.name for q in topology.queues)
    exchanges = tuple(e.name for e in topology.exchanges)
    for queue in queues:
        await transport.delete_queue(queue)
    for exchange in exchanges:
        await transport.delete_exchange(exchange)
    return Deleted(queues=queues, exchanges=exchanges)
