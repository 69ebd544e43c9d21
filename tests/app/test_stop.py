"""``App.stop`` cancels its consumers all at once, so a dead connection costs one deadline."""

from __future__ import annotations

import asyncio

from framework import App, AppConfig, Command, Context, Service
from framework.transport.base import Consumer, DeliveryCallback
from framework.transport.memory import MemoryTransport


class Ping(Command):
    __wire_name__ = "stop.ping"


class Pong(Command):
    __wire_name__ = "stop.pong"


class Tick(Command):
    __wire_name__ = "stop.tick"


class HangingConsumer(Consumer):
    """A consumer whose cancel waits (like a cancel on a dead connection) until released."""

    def __init__(self, inner: Consumer, transport: HangingTransport) -> None:
        self.queue = inner.queue
        self._inner = inner
        self._transport = transport

    async def cancel(self) -> None:
        self._transport.cancelling += 1
        if self._transport.cancelling == 3:  # the test app has three consumers
            self._transport.all_cancelling.set()
        await self._transport.release.wait()
        await self._inner.cancel()
        raise TimeoutError("no answer to basic.cancel")


class HangingTransport(MemoryTransport):
    def __init__(self) -> None:
        super().__init__()
        self.cancelling = 0
        self.all_cancelling = asyncio.Event()
        self.release = asyncio.Event()

    async def consume(self, queue: str, callback: DeliveryCallback, *, prefetch: int) -> Consumer:
        return HangingConsumer(await super().consume(queue, callback, prefetch=prefetch), self)


async def test_stop_cancels_every_consumer_concurrently() -> None:
    """Every consumer's cancel is under way before any returns; failed cancels are logged and
    the app still stops."""
    service = Service("stopper")

    @service.command
    async def ping(cmd: Ping, ctx: Context) -> None:
        return None

    @service.command
    async def pong(cmd: Pong, ctx: Context) -> None:
        return None

    @service.command
    async def tick(cmd: Tick, ctx: Context) -> None:
        return None

    transport = HangingTransport()
    app = App([service], transport=transport, config=AppConfig(prefix="stop"))
    await app.start()
    stopping = asyncio.create_task(app.stop(grace=0))
    # One after the other, the first cancel would block the rest: this would time out.
    await asyncio.wait_for(transport.all_cancelling.wait(), 10)
    transport.release.set()
    await asyncio.wait_for(stopping, 10)
    assert transport.cancelling == 3
