"""The broker user of a transport: the ``user_id`` its publishes may carry, on memory and RabbitMQ.

The breakers' control plane trusts a delivery's ``user_id`` because the broker refuses a publish
that claims another user than the connection's; this pins that, on both transports.
"""

from __future__ import annotations

import pytest

from framework.errors import AccessRefused
from framework.transport.base import OutgoingMessage, QueueSpec, Topology
from tests.resilience.conftest import Backend, next_item


async def test_a_publish_with_another_users_user_id_is_refused(backend: Backend) -> None:
    """The transport knows its user; the broker delivers that user_id and refuses any other
    (RabbitMQ: PRECONDITION_FAILED, raised as AccessRefused), and publishing goes on after."""
    transport = await backend.connected()
    queue = f"{backend.prefix}.user-ids"
    await transport.declare(Topology(queues=(QueueSpec(queue),)))
    received = await backend.collect(queue)
    own = OutgoingMessage(body=b"own", message_id="m-1", user_id=transport.user)
    await transport.publish(own, exchange="", routing_key=queue)
    with pytest.raises(AccessRefused) as refused:
        await transport.publish(
            OutgoingMessage(body=b"other", message_id="m-2", user_id=f"{transport.user}-not"),
            exchange="",
            routing_key=queue,
        )
    assert refused.value.user == transport.user
    await transport.publish(
        OutgoingMessage(body=b"none", message_id="m-3"), exchange="", routing_key=queue
    )
    got = [await next_item(received), await next_item(received)]
    assert [(d.body, d.user_id) for d in got] == [(b"own", transport.user), (b"none", None)]
