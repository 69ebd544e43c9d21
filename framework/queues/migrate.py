"""Re-create an app's queues as it declares them now, keeping their messages.

RabbitMQ never changes a queue's type or arguments: declaring ``orders.place_order`` as a quorum
queue where a classic one exists is refused (``PRECONDITION_FAILED - inequivalent arg
'x-queue-type'``), and so is a new delivery limit or a DLQ bound. ``migrate`` handles every queue
of the app's topology whose declaration is refused so:

1. its messages move, each confirmed before it is acked, to a holding queue
   ``<queue>.migrating`` of the target type;
2. the queue is deleted and declared anew, as the app declares it;
3. the messages move back, and the holding queue is deleted;
4. the whole topology is declared again, which restores the queue's bindings.

Nothing is lost at any point: a message leaves a queue only once the broker has confirmed its
copy in the next one. If the run stops half-way, the next run finds the holding queue and
finishes the move. The app's workers must be stopped (a queue with consumers is refused): a
message routed to the queue while it is deleted comes back to its publisher as unroutable, which
the outbox and ``send`` treat as a failed publish to try again. A message in a delay queue waits
its whole delay again after the move. A message whose headers could not be decoded (see
``leveret dlq``) cannot be copied faithfully: the migration stops and names the queue.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from framework.dlq.scan import undecodable_reason
from framework.errors import ConfigurationError
from framework.transport.base import Delivery, QueueSpec, Topology, Transport

__all__ = ["HOLDING_SUFFIX", "Migrated", "migrate"]

_log = structlog.get_logger("leveret.queues")

HOLDING_SUFFIX = ".migrating"
_DELAY = re.compile(r"\.delay\.(\d+)$")


@dataclass(frozen=True, slots=True)
class Migrated:
    """A queue that was re-created, and how many messages it kept."""

    queue: str
    messages: int


async def migrate(
    transport: Transport,
    topology: Topology,
    *,
    idle: float = 10.0,
    on_migrated: Callable[[Migrated], None] | None = None,
) -> list[Migrated]:
    """Re-create every queue of ``topology`` that exists with other arguments, keeping its
    messages (see the module docstring); returns the queues re-created.

    Args:
        transport: a connected transport (RabbitMQ: the memory broker has nothing to migrate).
        topology: what the app declares (``App.topology``, or ``App.topology_for(...)``).
        idle: seconds a move waits for the next message before it gives up.
        on_migrated: told about each queue as soon as it is done.

    Raises:
        ConfigurationError: a queue to re-create has consumers (stop the workers), holds a
            message that cannot be copied, or a move stalled; re-run once it is fixed.
    """
    await transport.declare(Topology(exchanges=topology.exchanges))
    done: list[Migrated] = []
    for spec in topology.queues:
        moved = await _migrate_one(transport, spec, idle)
        if moved is not None:
            done.append(moved)
            _log.info("queue_migrated", queue=spec.name, messages=moved.messages)
            if on_migrated is not None:
                on_migrated(moved)
    await transport.declare(topology)  # the bindings of every queue deleted and re-created
    return done


async def _migrate_one(transport: Transport, spec: QueueSpec, idle: float) -> Migrated | None:
    holding = QueueSpec(spec.name + HOLDING_SUFFIX, quorum=spec.quorum)
    left_over = await _depth(transport, holding.name)  # a run that stopped half-way
    try:
        await transport.declare(Topology(queues=(spec,)))
    except ConfigurationError as exc:
        if "inequivalent" not in str(exc):
            raise
    else:
        if left_over is None:
            return None  # as declared already: nothing to do
        moved = await _move(transport, holding.name, spec, idle)
        await transport.delete_queue(holding.name)
        return Migrated(spec.name, moved)
    info = await transport.queue_info(spec.name)
    if info.consumers:
        raise ConfigurationError(
            f"queue {spec.name!r} has {info.consumers} consumer(s): stop the app's workers "
            "before migrating its queues"
        )
    await transport.declare(Topology(queues=(holding,)))
    await _move(transport, spec.name, holding, idle)
    await transport.delete_queue(spec.name)
    await transport.declare(Topology(queues=(spec,)))
    moved = await _move(transport, holding.name, spec, idle)
    await transport.delete_queue(holding.name)
    return Migrated(spec.name, moved)


async def _depth(transport: Transport, queue: str) -> int | None:
    """Ready messages of ``queue``, or None when it does not exist."""
    try:
        return (await transport.queue_info(queue)).messages
    except ConfigurationError:
        return None


async def _move(transport: Transport, source: str, target: QueueSpec, idle: float) -> int:
    """Move every message of ``source`` to ``target`` (each confirmed, then acked)."""
    expected = (await transport.queue_info(source)).messages
    if not expected:
        return 0
    delay = _DELAY.search(target.name)
    # A delay queue's messages carry their wait as a per-message TTL; a quorum one has its own.
    expiration = int(delay.group(1)) if delay and target.message_ttl_ms is None else None
    moved = 0
    finished = asyncio.Event()
    failure: list[BaseException] = []

    async def copy(delivery: Delivery) -> None:
        nonlocal moved
        reason = undecodable_reason(delivery.headers)
        if reason is not None:
            await delivery.nack(requeue=True)
            failure.append(
                ConfigurationError(
                    f"queue {source!r} holds a message whose headers could not be decoded "
                    f"({reason}), which cannot be copied faithfully: look at it with "
                    f"`leveret dlq show`, remove it, then migrate again"
                )
            )
            finished.set()
            return
        copy = delivery.to_outgoing(expiration_ms=expiration)
        try:
            await transport.publish(copy, exchange="", routing_key=target.name)
        except Exception as exc:
            await delivery.nack(requeue=True)
            failure.append(exc)
            finished.set()
            return
        await delivery.ack()
        moved += 1
        if moved >= expected:
            finished.set()

    consumer = await transport.consume(source, copy, prefetch=50)
    try:
        while not finished.is_set():
            before = moved
            try:
                async with asyncio.timeout(idle):
                    await finished.wait()
            except TimeoutError:
                if moved == before:
                    break
    finally:
        await consumer.cancel()
    if failure:
        raise failure[0]
    if moved < expected or (await transport.queue_info(source)).messages:
        raise ConfigurationError(
            f"moved {moved} of {expected} messages from {source!r} to {target.name!r} before "
            f"the move stalled ({idle:g}s without a message): nothing was lost; run the "
            "migration again to finish it"
        )
    return moved
