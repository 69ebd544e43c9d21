"""RabbitMQ-only behaviour of AmqpTransport: connection failures, redaction and recovery."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import pytest
from structlog.testing import capture_logs

from framework.errors import BrokerUnreachable, ConfigurationError, PublishNacked, PublishTimeout
from framework.transport.amqp import AmqpConfig, AmqpTransport
from framework.transport.base import Delivery, OutgoingMessage, QueueSpec, Topology
from tests.support.broker import close_all_connections, rabbitmqctl_available, vhost_of

pytestmark = pytest.mark.rabbitmq

WAIT = 30.0  # generous: a loaded 2-core machine slows reconnect handling a lot
SECRET = "s3cret-Pa55word"
FAST = AmqpConfig(
    connect_timeout=5.0,
    publish_timeout=5.0,
    declare_timeout=5.0,
    heartbeat=5,
    reconnect_interval=0.2,
    consumer_verify_timeout=10.0,
)


def with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    netloc = f"{parts.username or 'guest'}:{password}@{parts.hostname}:{parts.port or 5672}"
    return urlunsplit(parts._replace(netloc=netloc))


def message(body: bytes = b"{}") -> OutgoingMessage:
    return OutgoingMessage(body=body, message_id=uuid.uuid4().hex)


@pytest.fixture
async def amqp(amqp_url: str) -> AsyncIterator[AmqpTransport]:
    transport = AmqpTransport(amqp_url, config=FAST)
    await transport.connect()
    yield transport
    await transport.close()


@pytest.fixture(scope="session")
def needs_rabbitmqctl() -> None:
    if not rabbitmqctl_available():
        pytest.skip("rabbitmqctl is not available to force-close connections")


@pytest.fixture
async def silent_server() -> AsyncIterator[int]:
    """A TCP port that accepts connections and never says anything."""
    held: list[asyncio.StreamWriter] = []

    async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    for writer in held:
        writer.close()
    server.close()
    await server.wait_closed()


def assert_hidden(error: BaseException) -> None:
    for text in (str(error), repr(error), error.args[0], getattr(error, "reason", "")):
        assert SECRET not in text


async def test_refused_port_raises_broker_unreachable_without_password() -> None:
    """A refused connection raises BrokerUnreachable quickly, with the password redacted."""
    transport = AmqpTransport(f"amqp://app:{SECRET}@127.0.0.1:1/", config=FAST)
    started = time.monotonic()
    with pytest.raises(BrokerUnreachable) as caught:
        await transport.connect()
    assert time.monotonic() - started < FAST.connect_timeout
    assert caught.value.url == "amqp://app:***@127.0.0.1:1/"
    assert_hidden(caught.value)


async def test_silent_broker_times_out(silent_server: int) -> None:
    """A peer that never answers the handshake raises BrokerUnreachable at connect_timeout."""
    config = AmqpConfig(connect_timeout=0.5)
    transport = AmqpTransport(f"amqp://app:{SECRET}@127.0.0.1:{silent_server}/", config=config)
    started = time.monotonic()
    with pytest.raises(BrokerUnreachable, match=r"within 0\.5s") as caught:
        await transport.connect()
    assert time.monotonic() - started < 3.0
    assert_hidden(caught.value)


async def test_wrong_password_is_unreachable_and_never_logged(amqp_url: str) -> None:
    """Refused credentials raise BrokerUnreachable; neither it nor any log holds the password."""
    transport = AmqpTransport(with_password(amqp_url, SECRET), config=FAST)
    with capture_logs() as logs, pytest.raises(BrokerUnreachable) as caught:
        await transport.connect()
    assert_hidden(caught.value)
    assert SECRET not in repr(logs)


def test_repr_hides_password() -> None:
    """The transport's repr shows the URL with its password redacted."""
    transport = AmqpTransport(f"amqp://app:{SECRET}@rabbit:5672/shop")
    assert repr(transport) == "<AmqpTransport amqp://app:***@rabbit:5672/shop new>"


async def publish_retrying(transport: AmqpTransport, sent: OutgoingMessage, queue: str) -> None:
    """Publish as an application does: a publish cut off by the connection loss is retried."""
    for _ in range(3):
        with contextlib.suppress(PublishTimeout):
            await transport.publish(sent, exchange="", routing_key=queue)
            return
    raise AssertionError("publish kept failing after the reconnect")


@pytest.mark.usefixtures("needs_rabbitmqctl")
async def test_consumer_is_back_after_connections_are_closed(
    amqp: AmqpTransport, amqp_url: str, prefix: str
) -> None:
    """After the broker drops every connection, the consumer is restored and receives again."""
    queue = f"{prefix}.q"
    await amqp.declare(Topology(queues=(QueueSpec(queue),)))
    received: asyncio.Queue[Delivery] = asyncio.Queue()

    async def on_message(delivery: Delivery) -> None:
        await delivery.ack()
        received.put_nowait(delivery)

    await amqp.consume(queue, on_message, prefetch=5)
    failed = asyncio.ensure_future(amqp.wait_failed())
    try:
        with capture_logs() as logs:
            close_all_connections(vhost_of(amqp_url))
            sent = message(b"after")
            await publish_retrying(amqp, sent, queue)
            async with asyncio.timeout(WAIT):
                while (await received.get()).message_id != sent.message_id:
                    pass
        assert "broker_connection_lost" in [e["event"] for e in logs]
        assert not failed.done()
    finally:
        failed.cancel()
        await asyncio.gather(failed, return_exceptions=True)


@pytest.mark.usefixtures("needs_rabbitmqctl")
async def test_ack_on_dead_channel_is_dropped_and_message_redelivered(
    amqp: AmqpTransport, amqp_url: str, prefix: str
) -> None:
    """Acking a delivery whose channel died logs and returns; the broker redelivers it."""
    queue = f"{prefix}.q"
    await amqp.declare(Topology(queues=(QueueSpec(queue),)))
    received: asyncio.Queue[Delivery] = asyncio.Queue()

    async def hold(delivery: Delivery) -> None:
        received.put_nowait(delivery)

    await amqp.consume(queue, hold, prefetch=1)
    await amqp.publish(message(b"once"), exchange="", routing_key=queue)
    async with asyncio.timeout(WAIT):
        before = await received.get()
        with capture_logs() as logs:
            close_all_connections(vhost_of(amqp_url))
            again = await received.get()
            await before.ack()
    assert (again.message_id, again.redelivered) == (before.message_id, True)
    assert "ack_dropped_channel_closed" in [e["event"] for e in logs]
    await again.ack()


@pytest.mark.usefixtures("needs_rabbitmqctl")
async def test_requests_work_after_connections_are_closed(
    amqp: AmqpTransport, amqp_url: str, prefix: str
) -> None:
    """Direct reply-to is consumed again on the reopened channel, so requests keep working."""
    queue = f"{prefix}.rpc"
    await amqp.declare(Topology(queues=(QueueSpec(queue),)))

    async def answer(delivery: Delivery) -> None:
        assert delivery.reply_to is not None
        reply = OutgoingMessage(
            body=b"pong", message_id=uuid.uuid4().hex, correlation_id=delivery.correlation_id
        )
        await amqp.publish(reply, exchange="", routing_key=delivery.reply_to)
        await delivery.ack()

    await amqp.consume(queue, answer, prefetch=5)

    async def ask() -> Delivery:
        request = OutgoingMessage(
            body=b"ping", message_id=uuid.uuid4().hex, correlation_id=uuid.uuid4().hex
        )
        return await amqp.request(request, exchange="", routing_key=queue, timeout=WAIT)

    assert (await ask()).body == b"pong"
    close_all_connections(vhost_of(amqp_url))
    for _ in range(3):  # a request cut off by the drop times out; the next one goes through
        with contextlib.suppress(TimeoutError, PublishTimeout):
            assert (await ask()).body == b"pong"
            return
    raise AssertionError("requests kept failing after the reconnect")


async def test_consumer_lost_for_good_marks_transport_failed(
    amqp: AmqpTransport, amqp_url: str, prefix: str
) -> None:
    """A consumer that cannot come back (queue deleted) makes wait_failed() return in time."""
    queue = f"{prefix}.q"
    await amqp.declare(Topology(queues=(QueueSpec(queue),)))
    config = AmqpConfig(reconnect_interval=0.2, consumer_verify_timeout=1.0)
    victim = AmqpTransport(amqp_url, config=config)
    await victim.connect()
    try:

        async def ignore(delivery: Delivery) -> None:
            await delivery.ack()

        await victim.consume(queue, ignore, prefetch=1)
        await amqp.delete_queue(queue)
        async with asyncio.timeout(WAIT):
            error = await victim.wait_failed()
        assert isinstance(error, BrokerUnreachable)
        assert queue in str(error)
    finally:
        await victim.close()


async def test_declare_conflict_keeps_long_lived_channels(amqp: AmqpTransport, prefix: str) -> None:
    """A refused redeclare happens on a throwaway channel: consumers keep their deliveries."""
    queue = f"{prefix}.q"
    await amqp.declare(Topology(queues=(QueueSpec(queue, max_length=3),)))
    received: asyncio.Queue[Delivery] = asyncio.Queue()

    async def hold(delivery: Delivery) -> None:
        received.put_nowait(delivery)

    await amqp.consume(queue, hold, prefetch=1)
    await amqp.publish(message(), exchange="", routing_key=queue)
    async with asyncio.timeout(WAIT):
        held = await received.get()
    with pytest.raises(ConfigurationError, match="inequivalent arg 'x-max-length'"):
        await amqp.declare(Topology(queues=(QueueSpec(queue, max_length=4),)))
    await held.ack()  # would fail with "unknown delivery tag" had the channel been reopened
    await amqp.publish(message(), exchange="", routing_key=queue)
    async with asyncio.timeout(WAIT):
        second = await received.get()
    assert not second.redelivered
    await second.ack()


async def test_a_flood_of_nacked_publishes_leaves_no_channels_behind(
    amqp: AmqpTransport, prefix: str
) -> None:
    """Each nacked publish is tried again on a fresh channel of its own, which is closed at once
    once the broker has answered: 200 concurrent publishes to a full queue all end as
    ``PublishNacked``, and the connection keeps only its usual channels."""
    queue = f"{prefix}.full"
    await amqp.declare(
        Topology(queues=(QueueSpec(queue, max_length=1, overflow="reject-publish"),))
    )
    await amqp.publish(message(), exchange="", routing_key=queue)
    connection = amqp._link.require().transport
    assert connection is not None
    before = len(connection.connection.channels)
    results = await asyncio.gather(
        *(amqp.publish(message(), exchange="", routing_key=queue) for _ in range(200)),
        return_exceptions=True,
    )
    assert all(isinstance(r, PublishNacked) for r in results), {type(r) for r in results}
    await asyncio.sleep(0.5)  # the closes of the last fresh channels
    assert len(connection.connection.channels) <= before
    assert await amqp.queue_depth(queue) == 1
    await amqp.delete_queue(queue)
