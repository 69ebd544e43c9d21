"""RabbitMQ-only: a binding AmqpTransport removed stays removed when aio-pika restores topology."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

import pytest

from framework.errors import LeveretError, Unroutable
from framework.transport.amqp import AmqpConfig, AmqpTransport
from framework.transport.base import (
    BindingSpec,
    ExchangeSpec,
    ExchangeType,
    OutgoingMessage,
    QueueSpec,
    Topology,
)
from tests.support.broker import close_all_connections, rabbitmqctl_available, vhost_of
from tests.support.poll import until

pytestmark = pytest.mark.rabbitmq

WAIT = 30.0  # generous: a loaded 2-core machine slows reconnect handling a lot
FAST = AmqpConfig(
    connect_timeout=5.0,
    publish_timeout=5.0,
    declare_timeout=5.0,
    heartbeat=5,
    reconnect_interval=0.2,
    consumer_verify_timeout=10.0,
)


def message() -> OutgoingMessage:
    return OutgoingMessage(body=b"{}", message_id=uuid.uuid4().hex)


@pytest.fixture
async def connect(amqp_url: str) -> AsyncIterator[list[AmqpTransport]]:
    """Two connected transports on the test's vhost, closed afterwards."""
    made = [AmqpTransport(amqp_url, config=FAST) for _ in range(2)]
    for transport in made:
        await transport.connect()
    yield made
    for transport in made:
        await transport.close()


async def test_unbound_binding_is_not_restored_after_a_reconnect(
    connect: list[AmqpTransport], amqp_url: str, prefix: str
) -> None:
    """A binding the transport declared and then unbound is not bound again when the queue is
    restored after the broker dropped the connection; its other bindings are."""
    if not rabbitmqctl_available():
        pytest.skip("rabbitmqctl is not available to force-close connections")
    amqp, other = connect
    queue, ex = f"{prefix}.q", f"{prefix}.ex"
    await amqp.declare(
        Topology(
            exchanges=(ExchangeSpec(ex, ExchangeType.DIRECT),),
            queues=(QueueSpec(queue),),
            bindings=(BindingSpec(queue, ex, "old"), BindingSpec(queue, ex, "kept")),
        )
    )
    await amqp.unbind(BindingSpec(queue, ex, "old"))
    # With the queue gone, only aio-pika's restore can bind it again after the reconnect.
    await other.delete_queue(queue)
    close_all_connections(vhost_of(amqp_url))

    async def restored() -> bool:
        with contextlib.suppress(LeveretError):
            await other.publish(message(), exchange=ex, routing_key="kept")
            return True
        return False

    await until(restored, timeout=WAIT, what="the queue's restored binding", interval=0.1)
    with pytest.raises(Unroutable):
        await other.publish(message(), exchange=ex, routing_key="old")
