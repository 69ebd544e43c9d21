"""A RabbitMQ resource alarm blocks the connection and every breaker opens until it is lifted.

Runs on a node of its own (the alarm would block every other test on the shared broker).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator

import pytest

from contracts.inventory import ReserveInventory
from contracts.orders import LineItem
from framework import App, AppConfig, PublishTimeout
from framework.errors import BreakerOpen
from framework.resilience import (
    BreakerHalfOpened,
    BreakerOpened,
    Breakers,
    Downstream,
    State,
    TransitionReason,
)
from framework.transport.amqp import AmqpConfig, AmqpTransport
from framework.transport.base import BindingSpec, QueueSpec, Topology
from tests.support.broker import RabbitmqctlError
from tests.support.second_node import SecondNode, second_node

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow, pytest.mark.timeout(180)]

ITEMS = [LineItem(sku="apple", qty=1, unit_price_cents=100)]
RESERVE = ReserveInventory.__wire_name__


@pytest.fixture(scope="module")
def node() -> Iterator[SecondNode]:
    """A RabbitMQ node for this module only."""
    try:
        with second_node() as started:
            yield started
    except RabbitmqctlError as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"cannot start a second RabbitMQ node: {exc}")
        pytest.skip(f"cannot start a second RabbitMQ node: {exc}")


async def test_a_memory_alarm_opens_every_breaker_until_lifted(node: SecondNode) -> None:
    """connection.blocked opens all breakers (no probe while it lasts); unblocked half-opens."""
    breakers = Breakers([Downstream("inventory"), Downstream("payment")], status=False)
    transport = AmqpTransport(node.url, config=AmqpConfig(publish_timeout=3.0, heartbeat=5))
    app = App([], transport=transport, config=AppConfig(prefix="alarm"), breakers=breakers)
    await app.start()
    blocked, unblocked = asyncio.Event(), asyncio.Event()

    def on_transition(event: object) -> None:
        if isinstance(event, BreakerOpened) and event.reason is TransitionReason.CONNECTION_BLOCKED:
            blocked.set()
        if isinstance(event, BreakerHalfOpened):
            assert event.reason is TransitionReason.CONNECTION_UNBLOCKED
            unblocked.set()

    breakers["inventory"].subscribe(on_transition)
    try:
        await transport.declare(
            Topology(
                queues=(QueueSpec("alarm.inventory"),),
                bindings=(BindingSpec("alarm.inventory", app.naming.commands, RESERVE),),
            )
        )
        await app.send(ReserveInventory(order_id="o-1", items=ITEMS))
        node.ctl("set_vm_memory_high_watermark", "0.000001")
        # RabbitMQ blocks a connection (and says so) when it next publishes during the alarm.
        stuck = asyncio.create_task(app.send(ReserveInventory(order_id="o-2", items=ITEMS)))
        async with asyncio.timeout(30):
            await blocked.wait()
        assert breakers.blocked == "low on memory"
        assert [b.state for b in breakers] == [State.OPEN, State.OPEN]
        with pytest.raises(BreakerOpen, match=r"\(connection_blocked\)"):
            await app.send(ReserveInventory(order_id="o-3", items=ITEMS))
        node.ctl("set_vm_memory_high_watermark", "0.4")
        async with asyncio.timeout(30):
            await unblocked.wait()
        assert [b.state for b in breakers] == [State.HALF_OPEN, State.HALF_OPEN]
        with contextlib.suppress(PublishTimeout):
            await stuck  # confirmed after the alarm, or timed out during it: either is honest
        await app.send(ReserveInventory(order_id="o-4", items=ITEMS))  # a probe, accepted
        assert breakers.blocked is None
    finally:
        with contextlib.suppress(RabbitmqctlError):
            node.ctl("set_vm_memory_high_watermark", "0.4")
        await app.stop(grace=0)
