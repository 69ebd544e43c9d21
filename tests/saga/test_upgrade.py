"""Upgrading a broker that ran a leveret from before the saga trust model, on memory and RabbitMQ.

That leveret bound each saga's timeout queue to the public commands exchange; declaring never
removes a binding, so the app removes it when it starts.
"""

from __future__ import annotations

import pytest

from framework import envelope
from framework.errors import Unroutable
from framework.transport.base import BindingSpec, Topology
from tests.saga.conftest import Backend, MakeShop


async def test_start_removes_the_old_public_binding_of_the_timeout_queue(
    make_shop: MakeShop, backend: Backend
) -> None:
    """A timeout published on the commands exchange reaches the timeout queue through the old
    binding before the app starts, and is unroutable once it has started."""
    app = await make_shop(start=False)
    timeout_type = app.sagas["order"].saga.timeout_type
    wire = timeout_type.__wire_name__
    queue = app.naming.handler_queue("orders", wire)
    old = BindingSpec(queue, app.naming.commands, wire)
    assert old not in app.topology.bindings
    outsider = await backend.connected()
    await outsider.declare(app.topology + Topology(bindings=(old,)))
    forged = timeout_type(saga_id="order-victim", state="charge", armed_version=1)
    message = envelope.build(forged, app.codec.encode(forged), message_id="through-the-old-one")
    await outsider.publish(message, exchange=app.naming.commands, routing_key=wire)
    assert await outsider.queue_depth(queue) == 1

    await app.start()
    with pytest.raises(Unroutable):
        await outsider.publish(message, exchange=app.naming.commands, routing_key=wire)
    with pytest.raises(Unroutable):
        await app.send(forged)
