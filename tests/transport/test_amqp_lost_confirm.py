"""A publish whose connection dies before its confirm fails as a publish, not a cancellation.

aiormq cancels the confirmations of a connection it gives up on (no frame from the broker for
three heartbeats). Re-raised as ``CancelledError``, that ended whatever task was publishing —
the outbox sweeper among them — although nobody had cancelled it.
"""

from __future__ import annotations

import asyncio
import gc
import secrets
from urllib.parse import urlsplit

import pytest

from framework.errors import LeveretError
from framework.transport.amqp import AmqpConfig, AmqpTransport
from framework.transport.base import OutgoingMessage, QueueSpec, Topology
from tests.support.fault_proxy import ProxyMode, fault_proxy


# The robust connection's reconnect attempt, started while the proxy still drops the server's
# frames, is abandoned half-open by close(); its socket objects are only freed by the garbage
# collector. Collected here (not in whichever later test the collector happens to run in), and
# known: the proxy has reset both ends by then, so no connection stays open.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_confirm_lost_with_the_connection_is_a_publish_error(amqp_url: str) -> None:
    """The broker's answers stop (heartbeats too) until the client gives the connection up:
    the publish is tried again on the reconnecting connection until its deadline, then raises
    a leveret error (its outcome is unknown), and the publishing task is not cancelled."""
    parts = urlsplit(amqp_url)
    queue = f"lost-confirm-{secrets.token_hex(4)}"
    config = AmqpConfig(connect_timeout=5, publish_timeout=10, heartbeat=1, declare_timeout=5)
    async with fault_proxy(parts.hostname or "127.0.0.1", parts.port or 5672) as proxy:
        transport = AmqpTransport(proxy.url_for(amqp_url), config=config)
        await transport.connect()
        try:
            await transport.declare(Topology(queues=(QueueSpec(queue, auto_delete=True),)))
            proxy.set_mode(ProxyMode.DROP_SERVER_TO_CLIENT)
            message = OutgoingMessage(body=b"{}", message_id="m-1")
            publishing = asyncio.create_task(
                transport.publish(message, exchange="", routing_key=queue)
            )
            done, _ = await asyncio.wait({publishing}, timeout=25)
            assert done, "the publish outlived the connection"
            assert not publishing.cancelled()
            assert isinstance(publishing.exception(), LeveretError), publishing.exception()
        finally:
            proxy.set_mode(ProxyMode.PASS)
            await transport.close()
    await asyncio.sleep(0)
    gc.collect()
