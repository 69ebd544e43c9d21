"""leveret and FastStream services share a broker: each reads what the other writes."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest
from faststream.rabbit import ExchangeType, RabbitBroker, RabbitExchange, RabbitMessage, RabbitQueue

from contracts.orders import LineItem, OrderPlaced, PlaceOrder
from framework import App, AppConfig, Context, Service
from framework import envelope as env

pytestmark = pytest.mark.rabbitmq


async def test_faststream_subscriber_reads_leveret_event(amqp_url: str, prefix: str) -> None:
    """A FastStream subscriber bound to leveret's event exchange decodes a leveret event."""
    app = App([], url=amqp_url, config=AppConfig(prefix=prefix))
    broker = RabbitBroker(amqp_url, logger=None)
    received: asyncio.Future[tuple[OrderPlaced, RabbitMessage]] = asyncio.Future()

    @broker.subscriber(
        RabbitQueue(
            f"{prefix}.faststream.placed", routing_key="orders.order_placed", auto_delete=True
        ),
        RabbitExchange(app.naming.events, type=ExchangeType.TOPIC, durable=True),
    )
    async def on_placed(body: dict[str, Any], message: RabbitMessage) -> None:
        # The body is the contract's plain JSON: the shared contract class decodes it.
        received.set_result((msgspec.convert(body, OrderPlaced), message))

    await app.start()
    await broker.start()
    try:
        event = OrderPlaced(
            order_id="o-1",
            customer_id="c",
            total_cents=500,
            address="a",
            items=[LineItem(sku="apple", qty=2, unit_price_cents=250)],
        )
        message_id = await app.publish(event, correlation_id="corr-1")
        async with asyncio.timeout(10):
            decoded, message = await received
        assert decoded == event
        assert message.message_id == message_id
        assert message.correlation_id == "corr-1"
        assert message.raw_message.type == "orders.order_placed"
        assert message.content_type == "application/json"
        assert message.headers[env.VERSION] == 1
    finally:
        await broker.stop()
        await app.stop(grace=0)


async def test_leveret_handles_faststream_command(amqp_url: str, prefix: str) -> None:
    """A command published by FastStream as plain JSON with DESIGN.md's properties is handled."""
    orders = Service("orders")
    handled: asyncio.Future[tuple[PlaceOrder, Context]] = asyncio.Future()

    @orders.command
    async def place_order(cmd: PlaceOrder, ctx: Context) -> None:
        handled.set_result((cmd, ctx))

    app = App([orders], url=amqp_url, config=AppConfig(prefix=prefix))
    broker = RabbitBroker(amqp_url, logger=None)
    await app.start()
    await broker.start()
    try:
        await broker.publish(
            {
                "order_id": "o-9",
                "customer_id": "c",
                "address": "1 Main St",
                "items": [{"sku": "pear", "qty": 3, "unit_price_cents": 100}],
            },
            exchange=RabbitExchange(app.naming.commands, type=ExchangeType.DIRECT, durable=True),
            routing_key="orders.place_order",
            message_id="fs-1",
            message_type="orders.place_order",
            correlation_id="fs-corr",
            headers={env.VERSION: 1},
            persist=True,
        )
        async with asyncio.timeout(10):
            cmd, ctx = await handled
        assert cmd == PlaceOrder(
            order_id="o-9",
            customer_id="c",
            address="1 Main St",
            items=[LineItem(sku="pear", qty=3, unit_price_cents=100)],
        )
        assert ctx.message_id == "fs-1"
        assert ctx.correlation_id == "fs-corr"
    finally:
        await broker.stop()
        await app.stop(grace=0)
