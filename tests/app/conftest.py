"""Fixtures that build apps on either transport: every test here runs on memory and RabbitMQ."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from framework import App, AppConfig, Service
from framework.transport.base import Delivery, Transport
from framework.transport.memory import MemoryBroker, MemoryTransport


class Backend:
    """Makes transports and apps for one test on one kind of broker."""

    def __init__(self, kind: str, prefix: str, amqp_url: str | None) -> None:
        self.kind = kind
        self.prefix = prefix
        self.amqp_url = amqp_url
        self.broker = MemoryBroker()
        self._apps: list[App] = []
        self._transports: list[Transport] = []

    def transport(self) -> Transport:
        if self.kind == "memory":
            return MemoryTransport(self.broker)
        from framework.transport.amqp import AmqpTransport

        assert self.amqp_url is not None
        return AmqpTransport(self.amqp_url)

    async def app(
        self,
        services: Sequence[Service],
        *,
        start: bool = True,
        middleware: Sequence[Any] = (),
        publish_middleware: Sequence[Any] = (),
        upcasters: Sequence[Any] = (),
        contracts: Sequence[Any] = (),
        **config: Any,
    ) -> App:
        """An app on this backend with the test's prefix, started unless ``start=False``."""
        config.setdefault("prefix", self.prefix)
        app = App(
            services,
            transport=self.transport(),
            config=AppConfig(**config),
            middleware=middleware,
            publish_middleware=publish_middleware,
            upcasters=upcasters,
            contracts=contracts,
        )
        self._apps.append(app)
        if start:
            await app.start()
        return app

    async def connected(self) -> Transport:
        """A separate connected transport, to look at queues from outside an app."""
        transport = self.transport()
        await transport.connect()
        self._transports.append(transport)
        return transport

    async def collect(self, queue: str) -> asyncio.Queue[Delivery]:
        """Consume ``queue`` (acking each message) into an asyncio queue."""
        transport = await self.connected()
        received: asyncio.Queue[Delivery] = asyncio.Queue()

        async def on_message(delivery: Delivery) -> None:
            await delivery.ack()
            received.put_nowait(delivery)

        await transport.consume(queue, on_message, prefetch=50)
        return received

    async def close(self) -> None:
        for app in self._apps:
            await app.stop(grace=0)
        for transport in self._transports:
            await transport.close()


@pytest.fixture(params=["memory", pytest.param("amqp", marks=pytest.mark.rabbitmq)])
async def backend(request: pytest.FixtureRequest, prefix: str) -> AsyncIterator[Backend]:
    """A Backend per transport kind."""
    url = request.getfixturevalue("amqp_url") if request.param == "amqp" else None
    b = Backend(request.param, prefix, url)
    try:
        yield b
    finally:
        await b.close()


async def next_item(queue: asyncio.Queue[Any], timeout: float = 10.0) -> Any:
    """The next item of ``queue``, failing the test after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        return await queue.get()
