"""Bad input published as raw bytes with aio-pika goes to the DLQ once, with a reason.

Every case runs on the real broker: the handler never runs, the worker keeps going, and the
next good message is processed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest
from pamqp.commands import Basic

from contracts.orders import LineItem, PlaceOrder
from framework import App, AppConfig, Context, Service
from framework import envelope as env
from framework.transport.amqp import AmqpTransport
from framework.transport.base import Delivery
from tests.support.raw_amqp import publish_raw

pytestmark = pytest.mark.rabbitmq

GOOD = (
    b'{"order_id":"o-1","customer_id":"c","address":"a",'
    b'"items":[{"sku":"apple","qty":1,"unit_price_cents":5}]}'
)
WIRE = "orders.place_order"


def props(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "message_id": "bad-1",
        "type": WIRE,
        "content_type": "application/json",
        "headers": {env.VERSION: 1},
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


CASES = [
    ("malformed_json", GOOD[:-5], props()),
    ("invalid_utf8", b'{"order_id":"\xff\xfe","customer_id":"c"}', props()),
    ("unknown_type: 'orders.refund_everything'", GOOD, props(type="orders.refund_everything")),
    ("unsupported_version: 'orders.place_order' version 9", GOOD, props(headers={env.VERSION: 9})),
    ("missing_message_id", GOOD, props(message_id=None)),
    ("missing_type", GOOD, props(type=None)),
    (
        "unsupported_content_type: 'application/x-python-pickle'",
        b"\x80\x04K\x01.",
        props(content_type="application/x-python-pickle"),
    ),
    # Rejected to the broker's dead-lettering unread: no copy, so the broker's reason.
    ("broker: rejected", b'{"pad":"' + b"x" * 4990 + b'"}', props()),
    (
        "validation_error: $.items[0].qty expected int, got str",
        GOOD.replace(b'"qty":1', b'"qty":"1"'),
        props(),
    ),
]


class Shop:
    def __init__(self, app: App, probe: AmqpTransport) -> None:
        self.app = app
        self.probe = probe
        self.handled: asyncio.Queue[PlaceOrder] = asyncio.Queue()
        self.dead: asyncio.Queue[Delivery] = asyncio.Queue()


@pytest.fixture
async def shop(amqp_url: str, prefix: str) -> AsyncIterator[Shop]:
    """A running orders app, the orders it handled, and the messages of its DLQ."""
    orders = Service("orders")
    handled: asyncio.Queue[PlaceOrder] = asyncio.Queue()

    @orders.command
    async def place_order(cmd: PlaceOrder, ctx: Context) -> None:
        handled.put_nowait(cmd)

    app = App([orders], url=amqp_url, config=AppConfig(prefix=prefix, max_body_size=4096))
    await app.start()
    probe = AmqpTransport(amqp_url)
    await probe.connect()
    shop = Shop(app, probe)
    shop.handled = handled

    async def on_dead(d: Delivery) -> None:
        await d.ack()
        shop.dead.put_nowait(d)

    queue = app.naming.handler_queue("orders", WIRE)
    await probe.consume(app.naming.dlq(queue), on_dead, prefetch=10)
    try:
        yield shop
    finally:
        await app.stop(grace=0)
        await probe.close()


@pytest.mark.parametrize(
    ("reason", "body", "properties"), CASES, ids=[c[0].split(":")[0] for c in CASES]
)
async def test_bad_input_goes_to_dlq_once(
    shop: Shop, amqp_url: str, reason: str, body: bytes, properties: dict[str, Any]
) -> None:
    """A bad message lands in the DLQ once with its reason; the next good one is handled."""
    app = shop.app
    queue = app.naming.handler_queue("orders", WIRE)
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        if "message_id" in properties:
            exchange = await channel.get_exchange(app.naming.commands)
            await exchange.publish(aio_pika.Message(body, **properties), routing_key=WIRE)
        else:
            # aiormq adds a message_id to every publish, so send this one below it.
            await publish_raw(
                amqp_url,
                exchange=app.naming.commands,
                routing_key=WIRE,
                body=body,
                properties=Basic.Properties(
                    message_type=properties.get("type"),
                    content_type=properties.get("content_type"),
                    headers=properties.get("headers"),
                ),
            )
        good = PlaceOrder(
            order_id="o-good",
            customer_id="c",
            address="a",
            items=[LineItem(sku="apple", qty=1, unit_price_cents=5)],
        )
        await app.send(good)
        async with asyncio.timeout(15):
            got = await shop.dead.get()
            assert await shop.handled.get() == good
        await app.stop(grace=5)
        # Nothing can be dead-lettered any more; a marker put into the DLQ now arrives after
        # any duplicate would have.
        await channel.default_exchange.publish(
            aio_pika.Message(b"{}", message_id="marker"), routing_key=app.naming.dlq(queue)
        )
        async with asyncio.timeout(15):
            marker = await shop.dead.get()
        assert marker.message_id == "marker", "the bad message was dead-lettered twice"
        text = got.headers.get(env.DEAD_REASON) or f"broker: {got.headers['x-death'][0]['reason']}"
        text = text.decode() if isinstance(text, bytes) else text
        assert text.startswith(reason), text
        assert got.body == body
        assert shop.handled.empty()
    finally:
        await connection.close()
