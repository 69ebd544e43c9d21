"""An app on a three-node cluster with quorum queues: a node's loss is a reconnect to another.

The app gets every node's URL (comma-separated) and connects to the first; the node is then
SIGKILLed or stopped gracefully while commands flow. The app must be back on another node within
seconds with its consumers verified, every command sent (before, during and after) handled, and
nothing lost; a query in flight when the node went fails at once with ``ReplyLost``.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable

import pytest
from structlog.testing import capture_logs

from contracts.orders import GetOrder, OrderView, PlaceOrder
from framework import App, AppConfig, Context, QueryContext, ReplyLost, Service
from framework.health import readiness
from framework.transport.amqp import AmqpConfig, AmqpTransport
from framework.transport.base import OutgoingMessage, QueueSpec, Topology
from tests.support.cluster import Cluster, ClusterNode

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow]

CONFIG = AmqpConfig(
    connect_timeout=10,
    publish_timeout=20,
    heartbeat=2,
    reconnect_interval=0.5,
    shuffle_nodes=False,
)


def order(order_id: str) -> PlaceOrder:
    return PlaceOrder(order_id=order_id, customer_id="c", address="a", items=[])


class Handled:
    """The order ids handled so far, and a way to wait for more."""

    def __init__(self) -> None:
        self.ids: set[str] = set()
        self._event = asyncio.Event()

    def add(self, order_id: str) -> None:
        self.ids.add(order_id)
        self._event.set()

    async def changed(self, timeout: float) -> None:
        """Wait until another id is handled, or ``timeout`` seconds."""
        self._event.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._event.wait()

    async def all_of(self, ids: list[str]) -> None:
        while not set(ids) <= self.ids:
            await self.changed(1.0)


def shop(urls: str, handled: Handled, slow_query: float = 0.0) -> App:
    orders = Service("orders")

    @orders.command
    async def place(cmd: PlaceOrder, ctx: Context) -> None:
        handled.add(cmd.order_id)

    @orders.query
    async def get(q: GetOrder, ctx: QueryContext) -> OrderView:
        await asyncio.sleep(slow_query)
        return OrderView(order_id=q.order_id, customer_id="c", status="placed", total_cents=1)

    return App(
        [orders],
        transport=AmqpTransport(urls, config=CONFIG),
        config=AppConfig(prefix="c" + secrets.token_hex(4), queue_type="quorum"),
    )


async def failover(nodes: Cluster, take_down: Callable[[ClusterNode], None]) -> None:
    handled = Handled()
    app = shop(nodes.urls, handled)
    sent: list[str] = []
    with capture_logs() as logs:
        await app.start()
        try:
            for i in range(20):
                await app.send(order(f"before-{i}"), message_id=f"before-{i}")
                sent.append(f"before-{i}")
            down = nodes.nodes[0]
            started = time.monotonic()
            await asyncio.to_thread(take_down, down)
            # Sends keep going while the client moves to another node: none may fail.
            for i in range(40):
                await app.send(order(f"after-{i}"), message_id=f"after-{i}")
                sent.append(f"after-{i}")
            async with asyncio.timeout(30):
                await handled.all_of(sent)
            recovered = time.monotonic() - started
            async with asyncio.timeout(30):  # the watchdog's check that consumers are back
                while "consumers_verified" not in [e["event"] for e in logs]:
                    await handled.changed(0.2)
        finally:
            await app.stop(grace=1)
    events = [e["event"] for e in logs]
    assert "broker_reconnected" in events
    lost = [e for e in logs if e["event"] == "broker_connection_lost"]
    assert len(lost) == 1
    assert str(down.port) in lost[0]["node"]
    back = next(e for e in logs if e["event"] == "broker_reconnected")
    assert str(down.port) not in back["node"]  # another node
    assert recovered < 20, f"took {recovered:.1f} s"


async def test_sigkill_of_the_connected_node_moves_the_app_to_another(nodes: Cluster) -> None:
    """SIGKILL of the node the app is on: it reconnects to another node, its consumers are
    verified, and all 60 commands — 40 sent during the failover — are handled."""
    await failover(nodes, lambda node: node.kill())


async def test_graceful_stop_of_the_connected_node_moves_the_app_to_another(
    nodes: Cluster,
) -> None:
    """``rabbitmqctl stop`` of the node the app is on (the client sees CONNECTION_FORCED): the
    same as a crash, with nothing lost."""
    await failover(nodes, lambda node: node.stop())


async def test_a_query_in_flight_when_the_node_dies_fails_at_once(nodes: Cluster) -> None:
    """The reply to a query can only come on the connection it was sent on: when that node
    dies, the caller gets ReplyLost naming the node, long before its timeout."""
    app = shop(nodes.urls, Handled(), slow_query=3.0)
    await app.start()
    try:
        asking = asyncio.create_task(app.request(GetOrder(order_id="o-1"), timeout=30))
        await asyncio.sleep(0.5)
        started = time.monotonic()
        await asyncio.to_thread(nodes.nodes[0].kill)
        with pytest.raises(ReplyLost, match=str(nodes.nodes[0].port)):
            await asking
        assert time.monotonic() - started < 10
    finally:
        await app.stop(grace=1)


async def test_a_publish_that_meets_a_leaderless_quorum_queue_is_taken_once_it_has_one(
    nodes: Cluster,
) -> None:
    """A channel whose first publish to a quorum queue comes while the queue's leader node is
    dead (RabbitMQ 3.10 then nacks that queue on it for good) is replaced: the publishes made
    right after the kill are confirmed, and the queue holds each of them once."""
    queue = "c" + secrets.token_hex(4) + ".leaderless"
    leader, other = nodes.nodes[0], nodes.nodes[1]
    declaring = AmqpTransport(leader.url, config=CONFIG)
    await declaring.connect()
    try:
        await declaring.declare(
            Topology(queues=(QueueSpec(queue, quorum=True, delivery_limit=20),))
        )
    finally:
        await declaring.close()
    await asyncio.to_thread(leader.kill)
    # At once, before the election is over: the first publishes of a new channel meet no leader.
    publisher = AmqpTransport(other.url, config=CONFIG)
    await publisher.connect()
    try:
        with capture_logs() as logs:
            async with asyncio.timeout(CONFIG.publish_timeout):
                for i in range(10):
                    await publisher.publish(
                        OutgoingMessage(body=b"{}", message_id=f"m-{i}"),
                        exchange="",
                        routing_key=queue,
                    )
        assert await publisher.queue_depth(queue) == 10
    finally:
        await publisher.delete_queue(queue)
        await publisher.close()
    renewed = [e for e in logs if e["event"] == "publish_channel_renewed"]
    assert len(renewed) <= 1  # when the election was not over yet: one new channel, not more


async def test_without_a_majority_readiness_says_publishing_is_stalled(nodes: Cluster) -> None:
    """Two of three nodes down: the app's node still answers queue declarations, but confirms
    nothing; ``/ready``'s publishing check fails after the stall bound, and all is ready again,
    the send confirmed, once a majority is back."""
    handled = Handled()
    app = shop(nodes.urls, handled)
    await app.start()
    try:
        assert (await readiness(app, timeout=2.0, publish_stall=1.0)).ready
        await asyncio.gather(*(asyncio.to_thread(n.kill) for n in nodes.nodes[1:]))
        sending = asyncio.create_task(app.send(order("during"), message_id="during"))
        async with asyncio.timeout(15):
            while True:
                report = await readiness(app, timeout=2.0, publish_stall=1.0)
                stalled = [c for c in report.checks if c.name == "publishing"]
                if stalled:
                    break
                await asyncio.sleep(0.3)
        assert not report.ready
        assert not stalled[0].ok
        assert "nothing confirmed" in stalled[0].detail
        assert not sending.done()  # publishes block without a majority
        await asyncio.to_thread(nodes.ensure_all_running)
        await sending
        async with asyncio.timeout(30):
            await handled.all_of(["during"])
        assert (await readiness(app, timeout=2.0, publish_stall=1.0)).ready
    finally:
        await app.stop(grace=1)
