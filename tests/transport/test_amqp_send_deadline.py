"""``app.send(..., timeout=)`` from a client process: a send survives a reconnect shorter than
its deadline, and one that outlives it says whether the message may have been delivered.

The client reaches the broker through the suite's fault proxy; the service consumes directly.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest
from structlog.testing import capture_logs

from framework import App, AppConfig, Command, Context, Service
from framework.errors import PublishTimeout
from framework.transport.amqp import AmqpConfig, AmqpTransport
from tests.support.fault_proxy import FaultProxy, ProxyMode, fault_proxy
from tests.support.poll import until

pytestmark = pytest.mark.rabbitmq


class Ping(Command):
    __wire_name__ = "deadline.ping"
    __wire_version__ = 1

    n: int


# Short enough that a reconnect is quick, long enough not to time out on a busy machine.
CLIENT = AmqpConfig(
    connect_timeout=5.0,
    publish_timeout=2.0,
    declare_timeout=5.0,
    heartbeat=1,
    reconnect_interval=0.2,
)


@pytest.fixture
async def proxy(amqp_url: str) -> AsyncIterator[FaultProxy]:
    parts = urlsplit(amqp_url)
    async with fault_proxy(parts.hostname or "127.0.0.1", parts.port or 5672) as started:
        yield started


@pytest.fixture
async def pings(amqp_url: str, prefix: str) -> AsyncIterator[Counter[str]]:
    """A service on the broker that counts the message ids of the pings it handles."""
    seen: Counter[str] = Counter()
    service = Service("deadline")

    @service.command
    async def ping(cmd: Ping, ctx: Context) -> None:
        seen[ctx.message_id] += 1

    async with App([service], url=amqp_url, config=AppConfig(prefix=prefix)):
        yield seen


@pytest.fixture
async def client(proxy: FaultProxy, amqp_url: str, prefix: str) -> AsyncIterator[App]:
    """A send-only app that reaches the broker through ``proxy``."""
    url = proxy.url_for(amqp_url)
    app = App([], url=url, config=AppConfig(prefix=prefix))
    app.use_transport(AmqpTransport(url, config=CLIENT))
    await app.start(consume=False)
    try:
        yield app
    finally:
        proxy.set_mode(ProxyMode.PASS)
        await app.stop()


async def test_send_waits_for_the_connection_and_is_delivered_once(
    client: App, proxy: FaultProxy, pings: Counter[str]
) -> None:
    """A send made while the connection is cut returns once it is back (within the send's
    deadline, longer than publish_timeout), and the service handles the message once."""
    proxy.set_mode(ProxyMode.RESET)  # the connection is reset and reconnects are refused
    message_id = "ping-" + secrets.token_hex(4)
    sending = asyncio.create_task(client.send(Ping(n=1), timeout=30, message_id=message_id))
    await asyncio.sleep(3)  # longer than publish_timeout: the default deadline would have passed
    assert not sending.done(), sending
    proxy.set_mode(ProxyMode.PASS)
    assert await asyncio.wait_for(sending, 30) == message_id
    await until(lambda: pings[message_id] >= 1, timeout=15, what="the ping handled")
    await asyncio.sleep(0.5)  # a copy sent twice would be handled by now
    assert pings[message_id] == 1


async def test_send_past_its_deadline_without_a_connection_was_not_sent(
    client: App, proxy: FaultProxy, pings: Counter[str]
) -> None:
    """No connection for the whole deadline: PublishTimeout says nothing was delivered."""
    with capture_logs() as logs:
        proxy.set_mode(ProxyMode.RESET)
        await until(
            lambda: any(e["event"] == "broker_connection_lost" for e in logs),
            timeout=5,
            what="the client to see its connection lost",
        )
        with pytest.raises(PublishTimeout) as raised:
            await client.send(Ping(n=2), timeout=1.5)
    assert raised.value.may_be_delivered is False
    assert "not sent" in str(raised.value)
    assert "nothing was delivered" in str(raised.value)
    assert not pings


async def test_send_whose_confirm_never_comes_may_have_been_delivered(
    client: App, proxy: FaultProxy, pings: Counter[str]
) -> None:
    """The publish reaches the broker but its confirm never comes back: past a deadline shorter
    than publish_timeout, PublishTimeout says the message may have been delivered."""
    proxy.set_mode(ProxyMode.DROP_SERVER_TO_CLIENT)
    message_id = "ping-" + secrets.token_hex(4)
    with pytest.raises(PublishTimeout) as raised:
        await client.send(Ping(n=3), timeout=0.5, message_id=message_id)
    assert raised.value.may_be_delivered is True
    assert "may have been delivered" in str(raised.value)
    await until(lambda: pings[message_id] >= 1, timeout=15, what="the ping handled anyway")


async def test_a_deadline_must_be_positive(client: App) -> None:
    """``timeout=0`` is refused before anything is sent."""
    with pytest.raises(ValueError, match="timeout must be a positive"):
        await client.send(Ping(n=4), timeout=0)
