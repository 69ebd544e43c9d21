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

Time: on a ``VirtualClock`` (``Harness(app, clock=VirtualClock())``) the broker's TTLs — delayed
retries, saga deadlines — wait until ``advance(seconds)`` moves the clock past them; on the
default, real clock ``settle()`` waits out delayed retries (not saga deadlines).
``saga(saga_id)``, ``dead_letters(queue)`` and ``timers()`` read what a test checks;
``publish_raw`` sends the bytes of a poison message.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from framework import envelope
from framework.app import App
from framework.dlq import DeadLetterInfo, describe
from framework.errors import ConfigurationError, DecodeFailure
from framework.handlers import HandlerSpec
from framework.messages import Message
from framework.saga.definition import SagaTimeout
from framework.testing._capture import CapturingTransport, running_queue
from framework.testing.clock import VirtualClock
from framework.testing.views import PendingTimer, SagaView, SettleTimeout
from framework.transport.base import OutgoingMessage, Transport
from framework.transport.memory import MemoryBroker, MemoryTransport

__all__ = ["Captured", "Harness"]


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
        clock: a ``VirtualClock`` for the broker's TTLs, moved by ``advance``; real time when
            omitted.
    """

    def __init__(
        self, app: App, *, settle_timeout: float = 10.0, clock: VirtualClock | None = None
    ) -> None:
        self.app = app
        self.settle_timeout = settle_timeout
        self.clock = clock
        self.broker = MemoryBroker(clock=clock)
        self.captured: list[Captured] = []
        self._handlers: dict[str, HandlerSpec] = {p.queue: p.spec for p in app.pipelines}
        naming = app.naming
        self._exchanges = {naming.commands, naming.events, naming.queries}
        # Where saga deadlines are delivered: settle() does not wait for those.
        self._deadline_queues = frozenset(
            p.queue for p in app.pipelines if issubclass(p.spec.message_type, SagaTimeout)
        )
        self._transport = CapturingTransport(MemoryTransport(self.broker), self._capture)
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
        queue = running_queue.get()
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

    # -- waiting -------------------------------------------------------------------------------

    async def settle(self, timeout: float | None = None) -> None:
        """Wait until no handler runs and no message waits in a handler queue.

        On the real clock it also waits for delayed retries to come back and run; saga
        deadlines are not waited for. On a ``VirtualClock`` nothing in a delay queue is waited
        for: ``advance`` delivers it.

        Raises:
            SettleTimeout: (a ``TimeoutError``) still busy after ``timeout`` (default
                ``settle_timeout``) seconds; it lists the busy queues and pending timers.
        """
        seconds = self.settle_timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(seconds):
                await self._settled()
        except TimeoutError:
            raise SettleTimeout(
                seconds,
                busy=await self._busy(),
                timers=await self.timers(),
                virtual=self.clock is not None,
            ) from None

    async def _settled(self) -> None:
        transport = self._transport
        while True:
            transport.started.clear()
            busy = {t for t in transport.running if not t.done()}
            if busy:
                await asyncio.wait(busy)
                continue
            # A handler settles its delivery only after its own publishes, so nothing
            # unsettled and nothing queued means nothing more can happen.
            if not transport.inner.unsettled() and not await self._waiting():
                return
            # Deliveries handed out but not started yet, or a delayed retry due later.
            await transport.started.wait()

    async def _waiting(self) -> bool:
        """Whether a message waits that settle() must see handled."""
        for queue in self._handlers:
            if await self._transport.queue_depth(queue):
                return True
        if self.clock is not None:
            return False
        return any(t.kind != "deadline" for t in self._timers())

    async def _busy(self) -> list[str]:
        """One line per handler queue that is not idle."""
        lines = []
        for queue, spec in self._handlers.items():
            running = sum(1 for q in self._transport.running.values() if q == queue)
            handed = self._transport.inner.unsettled(queue) - running
            ready = await self._transport.queue_depth(queue)
            parts = [
                f"{n} {what}"
                for n, what in (
                    (running, "running"),
                    (handed, "delivered, not started"),
                    (ready, "ready"),
                )
                if n > 0
            ]
            if parts:
                lines.append(f"{queue} ({spec.name}): {', '.join(parts)}")
        return lines

    async def advance(self, seconds: float) -> None:
        """Move the virtual clock ``seconds`` on, delivering each message whose time comes
        (delayed retries, saga deadlines) and letting the app settle after each instant, so a
        timer armed meanwhile within the window fires too; then settle.

        Raises:
            ConfigurationError: the harness runs on the real clock.
            ValueError: ``seconds`` is negative.
            SettleTimeout: the app did not settle (see ``settle``).
        """
        clock = self.clock
        if clock is None:
            raise ConfigurationError(
                "advance() needs a virtual clock: Harness(app, clock=VirtualClock())"
            )
        if not seconds >= 0:
            raise ValueError(f"advance() takes seconds >= 0, not {seconds!r}")
        target = clock.now() + seconds
        await self.settle()
        while clock.fire_until(target):
            await self.settle()
        await self.settle()

    async def timers(self) -> list[PendingTimer]:
        """What waits in the delay queues for its time, soonest first."""
        return self._timers()

    def _timers(self) -> list[PendingTimer]:
        now = self.broker.clock.now()
        retry = self.app.naming.retry
        found: list[PendingTimer] = []
        for name, queue in list(self.broker.queues.items()):
            if queue.spec.dead_letter_exchange != retry:
                continue
            for delivery, expires_at in self.broker.browse(name):
                target = delivery.routing_key or ""
                headers = delivery.headers
                if target in self._deadline_queues:
                    kind = "deadline"
                elif envelope.ATTEMPT in headers:
                    kind = "retry"
                else:
                    kind = "delayed"
                saga_id = headers.get(envelope.SAGA_ID)
                found.append(
                    PendingTimer(
                        due_in=0.0 if expires_at is None else max(0.0, expires_at - now),
                        kind=kind,
                        queue=target,
                        type=delivery.type,
                        message_id=delivery.message_id,
                        saga_id=saga_id if isinstance(saga_id, str) else None,
                        delay_queue=name,
                    )
                )
        return sorted(found, key=lambda t: t.due_in)

    # -- reading what happened -------------------------------------------------------------------

    async def saga(self, saga_id: str) -> SagaView:
        """A saga instance as its store holds it, with its data decoded and its timeline.

        Args:
            saga_id: ``<saga name>-<key>``, e.g. ``order-o-1``.

        Raises:
            ConfigurationError: the app runs no saga.
            LookupError: there is no such instance (yet).
        """
        store = self.app.store
        if store is None or not self.app.sagas:
            raise ConfigurationError("this app runs no saga: there is no saga to look up")
        record = await store.get_saga(saga_id)
        if record is None:
            names = ", ".join(f"{name}-<key>" for name in sorted(self.app.sagas))
            raise LookupError(f"no saga {saga_id!r} in the store (this app's saga ids: {names})")
        runner = self.app.sagas.get(record.saga)
        if runner is None:
            raise LookupError(f"saga {saga_id!r} belongs to {record.saga!r}, not run by this app")
        instance = runner.instance(record)
        return SagaView(
            saga_id=record.saga_id,
            saga=record.saga,
            status=record.status,
            state=record.state,
            data=instance.data,
            completed=instance.completed,
            reason=record.reason,
            version=record.version,
            timeline=tuple(await store.history(saga_id)),
        )

    async def dead_letters(self, queue: str | type[Message] | None = None) -> list[DeadLetterInfo]:
        """The messages in dead-letter queues, left where they are, oldest first per queue.

        Args:
            queue: a handler queue, its DLQ (``<queue>.dlq``), or a contract class (the DLQs
                of its handlers); every DLQ of the app when omitted.

        Raises:
            ConfigurationError: ``queue`` names none of the app's handler queues or contracts.
        """
        found: list[DeadLetterInfo] = []
        for dlq in self._dlqs(queue):
            if dlq not in self.broker.queues:
                continue  # declared when the app starts
            for position, (delivery, _) in enumerate(self.broker.browse(dlq), start=1):
                found.append(describe(delivery, queue=dlq, position=position))
        return found

    async def publish_raw(
        self,
        type: str,
        body: bytes,
        *,
        message_id: str | None = None,
        headers: Mapping[str, Any] | None = None,
        content_type: str | None = "application/json",
    ) -> str:
        """Publish ``body`` as any AMQP client could — not checked, not encoded by leveret — to
        the exchange of the handlers of wire name ``type``: how a test sends a poison message.
        Returns its message id.

        Args:
            message_id: a new random id by default; ``""`` sends none.
            headers: its AMQP headers (``leveret-version`` among them, 1 when absent).

        Raises:
            ConfigurationError: no handler of this app takes ``type``.
        """
        kinds = {
            p.spec.kind for p in self.app.pipelines if p.spec.message_type.__wire_name__ == type
        }
        if not kinds:
            raise ConfigurationError(f"no handler of this app takes {type!r}")
        chosen = uuid.uuid4().hex if message_id is None else message_id
        message = OutgoingMessage(
            body=body,
            message_id=chosen,
            type=type,
            content_type=content_type,
            headers=dict(headers or {}),
        )
        exchange = self.app.naming.exchange_for(kinds.pop())
        await self._transport.publish(message, exchange=exchange, routing_key=type)
        return chosen

    def _dlqs(self, queue: str | type[Message] | None) -> list[str]:
        naming = self.app.naming
        handlers = list(self._handlers.items())
        if queue is None:
            chosen = [q for q, _ in handlers]
        elif isinstance(queue, str):
            chosen = [q for q, _ in handlers if queue in (q, naming.dlq(q))]
        else:
            wire_name = getattr(queue, "__wire_name__", None)
            chosen = [q for q, spec in handlers if spec.message_type.__wire_name__ == wire_name]
        if not chosen:
            known = ", ".join(sorted(q for q, _ in handlers))
            raise ConfigurationError(
                f"{queue!r} is neither a handler queue of this app, nor its DLQ, nor a contract "
                f"one of its handlers takes; its handler queues: {known}"
            )
        return [naming.dlq(q) for q in chosen]

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
