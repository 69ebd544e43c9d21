"""The harness's transport: a memory transport that reports every publish and knows which
handler deliveries are running."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from typing import Any

from framework.transport.base import (
    Consumer,
    Delivery,
    DeliveryCallback,
    OutgoingMessage,
    QueueInfo,
    Topology,
    Transport,
)
from framework.transport.memory import MemoryTransport

__all__ = ["CapturingTransport", "running_queue"]

# The handler queue whose delivery the current task is handling (None: the test itself).
running_queue: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "leveret_harness_queue", default=None
)

OnPublish = Callable[[OutgoingMessage, str, str], None]


class CapturingTransport(Transport):
    """Delegates to a memory transport; reports publishes and tracks running deliveries.

    Args:
        inner: the memory transport that does the work.
        on_publish: told ``(message, exchange, routing_key)`` of every publish and request
            the broker took.
    """

    def __init__(self, inner: MemoryTransport, on_publish: OnPublish) -> None:
        self.inner = inner
        self._on_publish = on_publish
        self.running: dict[asyncio.Task[Any], str] = {}  # delivery task -> its queue
        self.started = asyncio.Event()

    @property
    def user(self) -> str | None:
        return self.inner.user  # breaker control notes are admitted by it

    async def connect(self) -> None:
        await self.inner.connect()

    async def declare(self, topology: Topology) -> None:
        await self.inner.declare(topology)

    async def delete_queue(self, name: str) -> None:
        await self.inner.delete_queue(name)

    async def publish(
        self,
        message: OutgoingMessage,
        *,
        exchange: str,
        routing_key: str,
        mandatory: bool = True,
        timeout: float | None = None,
    ) -> None:
        await self.inner.publish(
            message,
            exchange=exchange,
            routing_key=routing_key,
            mandatory=mandatory,
            timeout=timeout,
        )
        self._on_publish(message, exchange, routing_key)

    async def consume(self, queue: str, callback: DeliveryCallback, *, prefetch: int) -> Consumer:
        return await self.inner.consume(queue, self._tracked(queue, callback), prefetch=prefetch)

    def _tracked(
        self, queue: str, callback: Callable[[Delivery], Awaitable[None]]
    ) -> DeliveryCallback:
        async def run(delivery: Delivery) -> None:
            task = asyncio.current_task()
            if task is not None:
                self.running[task] = queue
                task.add_done_callback(self._finished)
            self.started.set()
            token = running_queue.set(queue)
            try:
                await callback(delivery)
            finally:
                running_queue.reset(token)

        return run

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self.running.pop(task, None)

    async def request(
        self, message: OutgoingMessage, *, exchange: str, routing_key: str, timeout: float
    ) -> Delivery:
        self._on_publish(message, exchange, routing_key)
        return await self.inner.request(
            message, exchange=exchange, routing_key=routing_key, timeout=timeout
        )

    async def close(self) -> None:
        await self.inner.close()

    async def queue_depth(self, name: str) -> int:
        return await self.inner.queue_depth(name)

    async def queue_info(self, name: str) -> QueueInfo:
        return await self.inner.queue_info(name)
