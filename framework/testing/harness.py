"""Run an app on a private in-memory broker and capture every message put on its exchanges.

::

    app = build_app()
    async with Harness(app) as harness:
        await harness.app.send(PlaceOrder(...))
        await harness.settle()
    harness.assert_consumers_accept()

Each captured message records which service emitted it (the handler that was running), or
``None`` for the test itself. ``consumer_problems`` then checks every captured message against
every handler that consumes its wire name — in this app or in others — by decoding its exact
bytes the way that handler's pipeline would (strictly, through the upcasters), and checks that
each service emitted only what it declares in ``Service(sends=...)``.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from framework import envelope
from framework.app import App
from framework.errors import DecodeFailure
from framework.handlers import HandlerSpec
from framework.transport.base import (
    Consumer,
    Delivery,
    DeliveryCallback,
    OutgoingMessage,
    QueueInfo,
    Topology,
    Transport,
)
from framework.transport.memory import MemoryBroker, MemoryTransport

__all__ = ["Captured", "Harness"]

_running_queue: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "leveret_harness_queue", default=None
)


@dataclass(frozen=True, slots=True)
class Captured:
    """A message put on a command, event or query exchange, exactly as it went on the wire.

    Args:
        emitter: the service whose handler emitted it; None when the test itself did.
        handler: that handler's name (``service.function``).
    """

    emitter: str | None
    handler: str | None
    exchange: str
    routing_key: str
    wire: OutgoingMessage

    @property
    def wire_name(self) -> str:
        return self.wire.type or ""

    @property
    def version(self) -> int:
        """The ``leveret-version`` header (1 when absent, -1 when unreadable)."""
        value = self.wire.headers.get(envelope.VERSION, 1)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        try:
            return int(value)
        except (TypeError, ValueError):
            return -1

    def describe(self) -> str:
        """``orders.order_placed v1 from orders.place_order``."""
        source = self.handler or "the test"
        return f"{self.wire_name} v{self.version} from {source}"


class Harness:
    """An app on a private in-memory broker, with every message it emits captured.

    The harness points the app at its own ``MemoryBroker`` for the ``async with`` block and
    back afterwards, so give it an app that is not running (a fresh one per test).

    Args:
        app: the app under test.
        settle_timeout: seconds ``settle`` waits before it fails.
    """

    def __init__(self, app: App, *, settle_timeout: float = 10.0) -> None:
        self.app = app
        self.settle_timeout = settle_timeout
        self.broker = MemoryBroker()
        self.captured: list[Captured] = []
        self._handlers: dict[str, HandlerSpec] = {p.queue: p.spec for p in app.pipelines}
        naming = app.naming
        self._exchanges = {naming.commands, naming.events, naming.queries}
        self._watched = [p.queue for p in app.pipelines] + [
            q.name for q in app.topology.queues if q.dead_letter_exchange == naming.retry
        ]
        self._transport = _CapturingTransport(MemoryTransport(self.broker), self)
        self._original: Transport | None = None

    async def __aenter__(self) -> Harness:
        self._original = self.app.transport
        self.app.use_transport(self._transport)
        try:
            await self.app.start()
        except BaseException:
            self._restore()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.app.stop()
        finally:
            self._restore()

    def _restore(self) -> None:
        if self._original is not None:
            self.app.use_transport(self._original)

    def _capture(self, message: OutgoingMessage, exchange: str, routing_key: str) -> None:
        if exchange not in self._exchanges:
            return  # retries, dead letters and replies are the framework's, not a service's
        queue = _running_queue.get()
        spec = self._handlers.get(queue) if queue is not None else None
        self.captured.append(
            Captured(
                emitter=spec.service if spec else None,
                handler=spec.name if spec else None,
                exchange=exchange,
                routing_key=routing_key,
                wire=message,
            )
        )

    async def settle(self, timeout: float | None = None) -> None:
        """Wait until no handler runs and no message waits in a handler or retry queue.

        Saga deadlines armed for later are not waited for — unless a deadline equals one of
        the retry delays, whose queue it then shares.

        Raises:
            TimeoutError: still busy after ``timeout`` (default ``settle_timeout``) seconds.
        """
        transport = self._transport
        async with asyncio.timeout(self.settle_timeout if timeout is None else timeout):
            while True:
                transport.started.clear()
                busy = {t for t in transport.running if not t.done()}
                if busy:
                    await asyncio.wait(busy)
                    continue
                # A handler settles its delivery only after its own publishes, so nothing
                # unsettled and nothing queued means nothing more can happen.
                depths = [await transport.queue_depth(q) for q in self._watched]
                if not transport.inner.unsettled() and not any(depths):
                    return
                # Deliveries handed out but not started yet, or a delayed retry due later.
                await transport.started.wait()

    def emitted_by(self, service: str | None) -> list[Captured]:
        """The messages one service emitted (``None``: the test itself)."""
        return [c for c in self.captured if c.emitter == service]

    def consumer_problems(self, *consumers: App) -> list[str]:
        """Every captured message that a consuming handler could not read, and every message a
        service emitted without declaring it in ``Service(sends=...)``.

        Args:
            consumers: the apps whose handlers consume the messages (default: this app).
        """
        apps = consumers or (self.app,)
        services = {s.name: s for s in self.app.services}
        problems: list[str] = []
        for message in self.captured:
            for app in apps:
                for pipeline in app.pipelines:
                    target = pipeline.spec.message_type
                    if target.__wire_name__ != message.wire_name:
                        continue
                    try:
                        app.codec.decode(
                            message.wire.body,
                            wire_name=message.wire.type,
                            version=message.wire.headers.get(envelope.VERSION),
                            content_type=message.wire.content_type,
                            into=target,
                        )
                    except DecodeFailure as exc:
                        problems.append(
                            f"{message.describe()}: {pipeline.spec.name} (reads version "
                            f"{target.__wire_version__}) cannot read it: {exc.reason}"
                        )
            service = services.get(message.emitter) if message.emitter else None
            if service is not None and service.sends:
                declared = {(c.__wire_name__, c.__wire_version__) for c in service.sends}
                if (message.wire_name, message.version) not in declared:
                    problems.append(
                        f"{message.describe()}: service {service.name!r} does not declare it in "
                        "Service(sends=...)"
                    )
        return list(dict.fromkeys(problems))

    def assert_consumers_accept(self, *consumers: App) -> None:
        """Fail with every problem ``consumer_problems`` finds.

        Raises:
            AssertionError: one line per problem.
        """
        problems = self.consumer_problems(*consumers)
        if problems:
            raise AssertionError(
                f"{len(problems)} emitted message(s) do not fit their consumers:\n"
                + "\n".join(f"  {p}" for p in problems)
            )


class _CapturingTransport(Transport):
    """Delegates to a memory transport; records publishes and tracks running deliveries."""

    def __init__(self, inner: MemoryTransport, harness: Harness) -> None:
        self.inner = inner
        self.harness = harness
        self.running: set[asyncio.Task[Any]] = set()
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
        self.harness._capture(message, exchange, routing_key)

    async def consume(self, queue: str, callback: DeliveryCallback, *, prefetch: int) -> Consumer:
        return await self.inner.consume(queue, self._tracked(queue, callback), prefetch=prefetch)

    def _tracked(
        self, queue: str, callback: Callable[[Delivery], Awaitable[None]]
    ) -> DeliveryCallback:
        async def run(delivery: Delivery) -> None:
            task = asyncio.current_task()
            if task is not None:
                self.running.add(task)
                task.add_done_callback(self.running.discard)
            self.started.set()
            token = _running_queue.set(queue)
            try:
                await callback(delivery)
            finally:
                _running_queue.reset(token)

        return run

    async def request(
        self, message: OutgoingMessage, *, exchange: str, routing_key: str, timeout: float
    ) -> Delivery:
        self.harness._capture(message, exchange, routing_key)
        return await self.inner.request(
            message, exchange=exchange, routing_key=routing_key, timeout=timeout
        )

    async def close(self) -> None:
        await self.inner.close()

    async def queue_depth(self, name: str) -> int:
        return await self.inner.queue_depth(name)

    async def queue_info(self, name: str) -> QueueInfo:
        return await self.inner.queue_info(name)
