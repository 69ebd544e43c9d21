"""``AppConfig(queue_type="quorum")``: every durable queue an app owns is a quorum queue, with a
delivery limit and at-least-once dead-lettering; and ``leveret queues migrate`` moves existing
queues to the declared type without losing a message."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from contracts.orders import PlaceOrder
from framework import AppConfig, ConfigurationError, Context, RetryPolicy, Service
from framework.messages import MessageKind
from framework.queues import migrate
from framework.routing import Naming
from framework.transport.base import Delivery, OutgoingMessage
from handlers.app import build_app
from tests.app.conftest import Backend
from tests.support.broker import rabbitmqctl, vhost_of

PLACE = PlaceOrder.__wire_name__


def order(order_id: str) -> PlaceOrder:
    return PlaceOrder(order_id=order_id, customer_id="c", address="a", items=[])


def test_quorum_naming_declares_every_durable_queue_as_a_quorum_queue() -> None:
    """Handler queue, DLQ and delay queue are quorum queues; the handler queue and the delay
    queue dead-letter at least once, and a DLQ has no delivery limit (it has nowhere to send)."""
    naming = Naming("q", queue_type="quorum", delivery_limit=7)
    topology = naming.base_topology([1000]) + naming.handler_topology(
        "q.orders.x", MessageKind.COMMAND, "x"
    )
    specs = {q.name: q for q in topology.queues}
    assert specs["q.orders.x"].arguments() == {
        "x-dead-letter-exchange": "q.dlx",
        "x-dead-letter-routing-key": "q.orders.x",
        "x-overflow": "reject-publish",
        "x-queue-type": "quorum",
        "x-delivery-limit": 7,
        "x-dead-letter-strategy": "at-least-once",
    }
    assert specs["q.orders.x.dlq"].arguments() == {"x-queue-type": "quorum"}
    assert specs["q.delay.1000"].arguments() == {
        "x-dead-letter-exchange": "q.retry",
        "x-overflow": "reject-publish",
        "x-queue-type": "quorum",
        "x-message-ttl": 1000,
        "x-dead-letter-strategy": "at-least-once",
    }


def test_classic_naming_is_what_it_always_was() -> None:
    """The single-node default declares the same queues, with the same arguments, as before."""
    topology = Naming("c").base_topology([500]) + Naming("c").handler_topology(
        "c.orders.x", MessageKind.COMMAND, "x"
    )
    assert {q.name: q.arguments() for q in topology.queues} == {
        "c.delay.500": {"x-dead-letter-exchange": "c.retry"},
        "c.orders.x": {
            "x-dead-letter-exchange": "c.dlx",
            "x-dead-letter-routing-key": "c.orders.x",
        },
        "c.orders.x.dlq": {},
    }


def test_an_unknown_queue_type_is_a_configuration_error() -> None:
    """A typo in queue_type says which values exist."""
    with pytest.raises(ConfigurationError, match="use 'classic'"):
        AppConfig(queue_type="qourum")


async def test_a_quorum_app_retries_through_its_delay_queue_then_dead_letters(
    backend: Backend,
) -> None:
    """On quorum queues a failing handler is retried after its delay (x-message-ttl) and then
    dead-lettered with its reason; a good message is handled."""
    orders = Service("orders")
    attempts: list[int] = []
    handled: asyncio.Queue[str] = asyncio.Queue()

    @orders.command(retry=RetryPolicy(immediate=0, delays=(0.2,)))
    async def place(cmd: PlaceOrder, ctx: Context) -> None:
        if cmd.order_id == "bad":
            attempts.append(ctx.attempt)
            raise ValueError("always")
        handled.put_nowait(cmd.order_id)

    app = await backend.app([orders], queue_type="quorum")
    dead = await backend.collect(app.naming.dlq(app.naming.handler_queue("orders", PLACE)))
    await app.send(order("bad"))
    await app.send(order("good"))
    async with asyncio.timeout(15):
        assert await handled.get() == "good"
        got = await dead.get()
    assert got.headers["leveret-dead-reason"] == "handler_failed: ValueError"
    assert attempts == [0, 1]
    if backend.kind == "amqp":
        assert amqp_url_types(backend) == {
            app.naming.handler_queue("orders", PLACE): "quorum",
            app.naming.dlq(app.naming.handler_queue("orders", PLACE)): "quorum",
            app.naming.delay(200): "quorum",
        }


def amqp_url_types(backend: Backend) -> dict[str, str]:
    """``{queue: type}`` of the backend's prefix, as the broker reports them."""
    assert backend.amqp_url is not None
    out = rabbitmqctl(
        "list_queues", "-p", vhost_of(backend.amqp_url), "-q", "--no-table-headers", "name", "type"
    )
    types = dict(line.split("\t") for line in out.splitlines())
    return {name: kind for name, kind in types.items() if name.startswith(backend.prefix + ".")}


@pytest.mark.rabbitmq
async def test_the_delivery_limit_dead_letters_a_message_nobody_settles(
    amqp_url: str, prefix: str
) -> None:
    """A message requeued past quorum_delivery_limit (a worker crashing on it every time) is
    dead-lettered by the broker with reason delivery_limit."""
    backend = Backend("amqp", prefix, amqp_url)
    orders = Service("orders")

    @orders.command
    async def place(cmd: PlaceOrder) -> None: ...

    app = await backend.app([orders], start=False, queue_type="quorum", quorum_delivery_limit=2)
    transport = await backend.connected()
    await transport.declare(app.topology)
    queue = app.naming.handler_queue("orders", PLACE)
    dead = await backend.collect(app.naming.dlq(queue))
    deliveries = 0

    async def crash(delivery: Delivery) -> None:
        nonlocal deliveries
        deliveries += 1
        await delivery.nack(requeue=True)  # what a worker dying mid-handler amounts to

    await transport.consume(queue, crash, prefetch=1)
    sender = await backend.app([], queue_type="quorum")
    await sender.send(order("poison"), message_id="poison-1")
    async with asyncio.timeout(15):
        got = await dead.get()
    assert got.message_id == "poison-1"
    assert got.headers["x-death"][0]["reason"] == "delivery_limit"
    assert deliveries == 3  # limit 2: the first delivery and two redeliveries
    await backend.close()


@pytest.mark.rabbitmq
async def test_migrate_moves_classic_queues_to_quorum_keeping_every_message(
    amqp_url: str, prefix: str
) -> None:
    """A classic app's handler queue, DLQ and delay queue hold messages; a quorum app is refused
    with the way out; migrate re-creates them as quorum queues with every message, and the
    quorum app then handles what waited."""
    backend = Backend("amqp", prefix, amqp_url)
    orders = Service("orders")
    handled: asyncio.Queue[str] = asyncio.Queue()

    @orders.command(retry=RetryPolicy(immediate=0, delays=(30.0,)))
    async def place(cmd: PlaceOrder) -> None:
        handled.put_nowait(cmd.order_id)

    classic = await backend.app([orders], start=False)
    transport = await backend.connected()
    await transport.declare(classic.topology)
    queue = classic.naming.handler_queue("orders", PLACE)
    sender = await backend.app([])
    for i in range(5):
        await sender.send(order(f"o-{i}"), message_id=f"m-{i}")
    body = b'{"order_id":"x","customer_id":"c","address":"a","items":[]}'
    await transport.publish(
        OutgoingMessage(body=body, message_id="d-1", type=PLACE),
        exchange=classic.naming.dlx,
        routing_key=queue,
    )
    await transport.publish(  # waiting for a retry in the delay tier
        OutgoingMessage(body=body, message_id="w-1", type=PLACE, expiration_ms=30_000),
        exchange=classic.naming.delay(30_000),
        routing_key=queue,
    )

    quorum = await backend.app([orders], start=False, queue_type="quorum")
    with pytest.raises(ConfigurationError, match="leveret queues migrate"):
        await quorum.start()
    await quorum.stop(grace=0)

    done = await migrate(transport, quorum.topology)
    assert {m.queue: m.messages for m in done} == {
        queue: 5,
        classic.naming.dlq(queue): 1,
        classic.naming.delay(30_000): 1,
    }
    assert set(amqp_url_types(backend).values()) == {"quorum"}
    assert await migrate(transport, quorum.topology) == []  # nothing left to do
    quorum = await backend.app([orders], queue_type="quorum")
    async with asyncio.timeout(15):
        got = {await handled.get() for _ in range(5)}
    assert got == {f"o-{i}" for i in range(5)}
    assert (await transport.queue_info(classic.naming.dlq(queue))).messages == 1
    assert (await transport.queue_info(classic.naming.delay(30_000))).messages == 1
    await backend.close()


@pytest.mark.rabbitmq
@pytest.mark.slow
async def test_leveret_queues_migrate_moves_the_shop_to_quorum(amqp_url: str, prefix: str) -> None:
    """The command a user runs: the shop's classic queues (one with a message) become quorum
    queues; a second run finds nothing to do."""
    backend = Backend("amqp", prefix, amqp_url)
    shop = build_app(amqp_url, prefix=prefix)
    transport = await backend.connected()
    await transport.declare(shop.topology)
    queue = shop.naming.handler_queue("orders", PLACE)
    await transport.publish(
        OutgoingMessage(body=b"{}", message_id="kept", type=PLACE),
        exchange="",
        routing_key=queue,
    )
    env = {
        **os.environ,
        "LEVERET_SHOP_URL": amqp_url,
        "LEVERET_SHOP_PREFIX": prefix,
        "LEVERET_LOG_LEVEL": "warning",
    }
    command = [sys.executable, "-m", "framework", "queues", "migrate", "handlers.app:app"]
    first = await asyncio.to_thread(
        subprocess.run, [*command, "--to", "quorum"], env=env, capture_output=True, text=True
    )
    assert first.returncode == 0, first.stderr
    assert f"re-created {queue} (quorum), 1 message(s) kept" in first.stdout
    assert set(amqp_url_types(backend).values()) == {"quorum"}
    assert (await transport.queue_info(queue)).messages == 1
    again = await asyncio.to_thread(
        subprocess.run, [*command, "--to", "quorum"], env=env, capture_output=True, text=True
    )
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("0 of ")
    await backend.close()
