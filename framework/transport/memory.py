"""An in-process broker with RabbitMQ's semantics, and the transport that talks to it.

``MemoryBroker`` holds exchanges and queues; each ``MemoryTransport`` on it behaves like one
connection. Routing (default, direct, topic, fanout), mandatory returns, publisher nacks of full
``reject-publish`` queues, prefetch, round-robin between consumers, requeue, dead-lettering with
``x-death`` headers, per-message TTL, quorum delivery limits and direct reply-to follow RabbitMQ
3.10. A publish is refused for what AMQP cannot carry, with the AMQP transport's error, and
headers reach consumers as the wire returns them (``framework.transport.wire``). Nothing here
touches the network, and no state lives outside a broker object.

TTLs run on the broker's clock: the event loop's by default, or one a test moves by hand
(``framework.testing.VirtualClock``), so that delayed retries and saga deadlines come due
without real waiting.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import uuid
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, NamedTuple, Protocol

import msgspec
import structlog

from framework.errors import (
    AccessRefused,
    ConfigurationError,
    PublishFailed,
    PublishNacked,
    TransportClosed,
    Unroutable,
)
from framework.transport import base
from framework.transport.base import Delivery, ExchangeType, OutgoingMessage, QueueSpec, Topology
from framework.transport.wire import as_delivered, check_encodable

__all__ = ["BrokerClock", "Browsed", "MemoryBroker", "MemoryTransport", "Timer"]

log = structlog.get_logger(__name__)

REPLY_TO = "amq.rabbitmq.reply-to"
DEFAULT_USER = "guest"  # the user every MemoryTransport connects as, unless told otherwise


class Timer(Protocol):
    """A callback armed on a ``BrokerClock``."""

    def cancel(self) -> None: ...


class BrokerClock(Protocol):
    """The time a ``MemoryBroker`` expires messages by, in seconds (any origin)."""

    def now(self) -> float: ...

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` once ``now()`` reaches ``when``."""
        ...


class _LoopClock:
    """The running event loop's clock: real time."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        return asyncio.get_running_loop().call_at(when, callback)


class Browsed(NamedTuple):
    """A message a queue holds, seen without taking it (``MemoryBroker.browse``).

    Args:
        delivery: the message as a consumer would get it (already settled: it cannot be acked).
        expires_at: when its TTL ends on the broker's clock; None without a TTL.
    """

    delivery: Delivery
    expires_at: float | None


class _Entry:
    """One message as one queue holds it; ``returns`` counts deliveries handed back."""

    __slots__ = ("deadline", "exchange", "message", "redelivered", "returns", "routing_key", "seq")

    def __init__(self, message: OutgoingMessage, exchange: str, key: str, seq: int = 0) -> None:
        self.message, self.exchange, self.routing_key, self.seq = message, exchange, key, seq
        self.redelivered = False
        self.returns = 0
        self.deadline: float | None = None


class _Queue:
    def __init__(self, broker: MemoryBroker, spec: QueueSpec) -> None:
        self.broker = broker
        self.spec = spec
        self.ready: deque[_Entry] = deque()
        self.consumers: list[_MemoryConsumer] = []
        self.next_consumer = 0
        self.timer: Timer | None = None
        self.deleted = False

    def offer(self, entry: _Entry) -> bool:
        """Enqueue; False when the queue is full and rejects publishes."""
        limit = self.spec.max_length
        byte_limit = self.spec.max_length_bytes
        full = limit is not None and len(self.ready) >= limit
        if byte_limit is not None and not full:
            full = self._ready_bytes() + len(entry.message.body) > byte_limit
        if full and self.spec.overflow == "reject-publish":
            return False
        self.ready.append(entry)
        while limit is not None and len(self.ready) > limit:
            self.broker.dead_letter(self, self.ready.popleft(), "maxlen")
        if byte_limit is not None:
            size = self._ready_bytes()
            while self.ready and size > byte_limit:
                dropped = self.ready.popleft()
                size -= len(dropped.message.body)
                self.broker.dead_letter(self, dropped, "maxlen")
        self.dispatch()
        return True

    def _ready_bytes(self) -> int:
        return sum(len(e.message.body) for e in self.ready)  # only for queues with a byte bound

    def give_back(self, entries: list[_Entry]) -> None:
        """Return unsettled deliveries to the head of the queue, in their original order."""
        limit = self.spec.delivery_limit if self.spec.quorum else None
        for entry in sorted(entries, key=lambda e: e.seq, reverse=True):
            entry.redelivered = True
            entry.returns += 1
            if limit is not None and entry.returns > limit:
                self.broker.dead_letter(self, entry, "delivery_limit")
            elif not self.deleted:
                self.ready.appendleft(entry)
        self.dispatch()

    def dispatch(self) -> None:
        """Hand ready messages to consumers with spare prefetch, round-robin; expire heads."""
        now = self.broker.clock.now()
        while self.ready:
            head = self.ready[0]
            if head.deadline is not None and head.deadline <= now:
                self.broker.dead_letter(self, self.ready.popleft(), "expired")
                continue
            consumer = self._idle_consumer()
            if consumer is None:
                break
            consumer.deliver(self.ready.popleft())
        self._arm_timer()

    def _idle_consumer(self) -> _MemoryConsumer | None:
        count = len(self.consumers)
        for step in range(count):
            consumer = self.consumers[(self.next_consumer + step) % count]
            if consumer.has_capacity():
                self.next_consumer = (self.next_consumer + step + 1) % count
                return consumer
        return None

    def _arm_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        # Like RabbitMQ, a message expires only once it reaches the head of its queue.
        if self.ready and self.ready[0].deadline is not None and not self.deleted:
            self.timer = self.broker.clock.call_at(self.ready[0].deadline, self.dispatch)

    def remove_consumer(self, consumer: _MemoryConsumer) -> None:
        if consumer in self.consumers:
            self.consumers.remove(consumer)
            self.next_consumer = 0
            if self.spec.auto_delete and not self.consumers and not self.deleted:
                self.broker.delete_queue(self.spec.name)


class MemoryBroker:
    """Exchanges, queues and bindings shared by the ``MemoryTransport`` objects that use it.

    Args:
        clock: what message TTLs run on; the event loop's clock (real time) by default.
    """

    def __init__(self, *, clock: BrokerClock | None = None) -> None:
        self.clock: BrokerClock = clock if clock is not None else _LoopClock()
        self.exchanges: dict[str, base.ExchangeSpec] = {}
        self.queues: dict[str, _Queue] = {}
        self.bindings: dict[str, set[tuple[str, str]]] = {}  # exchange -> {(queue, key)}
        self.reply_routes: dict[str, MemoryTransport] = {}
        self._seq = itertools.count()

    # Resource alarms, for circuit-breaker tests: connected transports hear it like
    # RabbitMQ's connection.blocked / unblocked (publishes are not held back here).
    def block(self, reason: str = "low on memory") -> None:
        """Raise a resource alarm: every connected transport is told it is blocked."""
        for transport in list(self.reply_routes.values()):
            transport._flow(True, reason)

    def unblock(self) -> None:
        """Clear the alarm: every connected transport is told it is unblocked."""
        for transport in list(self.reply_routes.values()):
            transport._flow(False, None)

    def declare(self, topology: Topology) -> None:
        for exchange in topology.exchanges:
            _same("exchange", self.exchanges.setdefault(exchange.name, exchange), exchange)
            self.bindings.setdefault(exchange.name, set())
        for spec in topology.queues:
            if spec.quorum and (not spec.durable or spec.auto_delete):
                raise ConfigurationError(
                    f"quorum queue {spec.name!r} must be durable, not auto-delete"
                )
            _same("queue", self.queues.setdefault(spec.name, _Queue(self, spec)).spec, spec)
        for binding in topology.bindings:
            what = f"cannot bind queue {binding.queue!r} to exchange {binding.exchange!r}: "
            if binding.exchange not in self.exchanges:
                raise ConfigurationError(what + f"no exchange {binding.exchange!r}")
            if binding.queue not in self.queues:
                raise ConfigurationError(what + f"no queue {binding.queue!r}")
            self.bindings[binding.exchange].add((binding.queue, binding.routing_key))

    def browse(self, queue: str) -> list[Browsed]:
        """The messages ``queue`` holds ready, in order, left where they are (what RabbitMQ's
        management UI shows with "get messages, requeue"); unacked deliveries are not among them.

        Raises:
            ConfigurationError: no such queue.
        """
        target = self.queues.get(queue)
        if target is None:
            raise ConfigurationError(f"queue {queue!r} does not exist")
        return [Browsed(_MemoryDelivery(e), e.deadline) for e in target.ready]

    def unbind(self, binding: base.BindingSpec) -> None:
        bound = self.bindings.get(binding.exchange)
        if bound is not None:
            bound.discard((binding.queue, binding.routing_key))

    def delete_queue(self, name: str) -> None:
        queue = self.queues.pop(name, None)
        if queue is None:
            return
        queue.deleted = True
        queue.ready.clear()
        queue.consumers.clear()  # the broker cancels them, as RabbitMQ does
        queue._arm_timer()
        for bound in self.bindings.values():
            bound.difference_update({b for b in bound if b[0] == name})

    def route(self, exchange: str, routing_key: str) -> list[_Queue] | None:
        """The queues a message reaches, or None when the exchange does not exist."""
        if exchange == "":
            queue = self.queues.get(routing_key)
            return [queue] if queue is not None else []
        spec = self.exchanges.get(exchange)
        if spec is None:
            return None
        names: set[str] = set()
        words = routing_key.split(".")
        for queue_name, key in self.bindings[exchange]:
            if (
                spec.type is ExchangeType.FANOUT
                or (spec.type is ExchangeType.DIRECT and key == routing_key)
                or (spec.type is ExchangeType.TOPIC and base.topic_match(key.split("."), words))
            ):
                names.add(queue_name)
        return [self.queues[name] for name in sorted(names)]

    def publish(
        self, message: OutgoingMessage, exchange: str, routing_key: str, mandatory: bool
    ) -> None:
        if exchange == "" and routing_key.startswith(REPLY_TO + "."):
            # Replies are never mandatory: RabbitMQ returns every mandatory one, delivered or not.
            transport = self.reply_routes.get(routing_key)
            if transport is not None:
                transport._on_reply(message, routing_key)
            return
        queues = self.route(exchange, routing_key)
        where = {"exchange": exchange, "routing_key": routing_key}
        if queues is None:
            raise PublishFailed(f"exchange {exchange!r} does not exist; declare it first", **where)
        if not queues and mandatory:
            raise Unroutable(f"no queue is bound to {exchange!r} for {routing_key!r}", **where)
        # As a consumer on RabbitMQ reads them (tuples as lists...), and not the caller's dict.
        message = msgspec.structs.replace(message, headers=as_delivered(message.headers))
        if not all([self._offer(q, message, exchange, routing_key) for q in queues]):
            raise PublishNacked(f"a full queue refused the message for {routing_key!r}", **where)

    def _offer(self, queue: _Queue, message: OutgoingMessage, exchange: str, key: str) -> bool:
        entry = _Entry(message, exchange, key, next(self._seq))
        ttls = [t for t in (message.expiration_ms, queue.spec.message_ttl_ms) if t is not None]
        if ttls:  # the per-message and the queue's TTL: the shorter wins, as on RabbitMQ
            entry.deadline = self.clock.now() + min(ttls) / 1000
        return queue.offer(entry)

    def dead_letter(self, queue: _Queue, entry: _Entry, reason: str) -> None:
        """Republish a rejected, expired or dropped message through the queue's DLX, if any."""
        spec = queue.spec
        if spec.dead_letter_exchange is None:
            return
        message = entry.message
        headers = _add_death(message, entry, spec.name, reason)
        dead = msgspec.structs.replace(message, headers=headers, expiration_ms=None)
        key = spec.dead_letter_routing_key or entry.routing_key
        deaths = headers["x-death"]
        for target in self.route(spec.dead_letter_exchange, key) or []:
            # RabbitMQ drops a message that cycles back to a queue without any rejection.
            cycle = any(d["queue"] == target.spec.name for d in deaths)
            if cycle and all(d["reason"] != "rejected" for d in deaths):
                continue
            self._offer(target, dead, spec.dead_letter_exchange, key)


def _add_death(message: OutgoingMessage, entry: _Entry, queue: str, reason: str) -> dict[str, Any]:
    headers = dict(message.headers)
    deaths = [dict(d) for d in headers.get("x-death", [])]
    now = datetime.now(UTC).replace(microsecond=0)
    for index, death in enumerate(deaths):
        if death.get("queue") == queue and death.get("reason") == reason:
            death["count"] = death.get("count", 0) + 1
            death["time"] = now
            deaths.insert(0, deaths.pop(index))
            break
    else:
        death = {"count": 1, "reason": reason, "queue": queue, "time": now}
        death.update({"exchange": entry.exchange, "routing-keys": [entry.routing_key]})
        if reason == "expired" and message.expiration_ms is not None:
            death["original-expiration"] = str(message.expiration_ms)
        deaths.insert(0, death)
    headers["x-death"] = deaths
    headers.setdefault("x-first-death-exchange", entry.exchange)
    headers.setdefault("x-first-death-queue", queue)
    headers.setdefault("x-first-death-reason", reason)
    return headers


def _same(
    kind: str, current: QueueSpec | base.ExchangeSpec, wanted: QueueSpec | base.ExchangeSpec
) -> None:
    """Raise like RabbitMQ's PRECONDITION_FAILED when a redeclaration differs."""
    if current != wanted:
        differences = ", ".join(
            f"{f.name} is {getattr(current, f.name)!r}, declared {getattr(wanted, f.name)!r}"
            for f in dataclasses.fields(current)
            if getattr(current, f.name) != getattr(wanted, f.name)
        )
        raise ConfigurationError(
            f"{kind} {wanted.name!r} exists with other settings ({differences}); "
            "declare it as it is or delete it first"
        )


class _MemoryDelivery(base.Delivery):
    __slots__ = ("_consumer", "_entry", "_settled")

    def __init__(self, entry: _Entry, consumer: _MemoryConsumer | None = None) -> None:
        message = entry.message
        headers = dict(message.headers)
        if consumer is not None and consumer.queue_ref.spec.quorum:
            headers["x-delivery-count"] = entry.returns
        super().__init__(
            body=message.body,
            message_id=message.message_id,
            type=message.type,
            correlation_id=message.correlation_id,
            content_type=message.content_type,
            headers=headers,
            reply_to=message.reply_to,
            redelivered=entry.redelivered,
            exchange=entry.exchange,
            routing_key=entry.routing_key,
            timestamp=message.timestamp,
            user_id=message.user_id or None,  # an empty user_id is not on the wire
            session=consumer,  # a consumer's deliveries are its own, as on a channel of its own
        )
        self._consumer = consumer
        self._entry = entry
        self._settled = consumer is None  # replies arrive already settled (no-ack)

    async def ack(self) -> None:
        if not self._settled and self._consumer is not None:
            self._settled = True
            self._consumer.settled(self).dispatch()

    async def nack(self, *, requeue: bool) -> None:
        if not self._settled and self._consumer is not None:
            self._settled = True
            queue = self._consumer.settled(self)
            if requeue:
                queue.give_back([self._entry])
            else:
                queue.broker.dead_letter(queue, self._entry, "rejected")
                queue.dispatch()


class _MemoryConsumer(base.Consumer):
    def __init__(self, queue: _Queue, callback: base.DeliveryCallback, prefetch: int) -> None:
        self.queue = queue.spec.name
        self.queue_ref = queue
        self._callback = callback
        self._prefetch = prefetch
        self.unacked: dict[_MemoryDelivery, None] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def has_capacity(self) -> bool:
        return self._prefetch <= 0 or len(self.unacked) < self._prefetch

    def deliver(self, entry: _Entry) -> None:
        delivery = _MemoryDelivery(entry, self)
        self.unacked[delivery] = None
        task = asyncio.get_running_loop().create_task(self._run(delivery))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, delivery: _MemoryDelivery) -> None:
        try:
            await self._callback(delivery)
        except Exception:
            # Left unsettled, as with a real broker: it returns when the consumer goes away.
            log.exception("consumer_callback_failed", queue=self.queue)

    def settled(self, delivery: _MemoryDelivery) -> _Queue:
        self.unacked.pop(delivery, None)
        return self.queue_ref

    async def cancel(self) -> None:
        self.queue_ref.remove_consumer(self)

    async def shut_down(self) -> None:
        """Connection closed: return unsettled deliveries and cancel the running callbacks."""
        self.queue_ref.remove_consumer(self)
        returned, self.unacked = list(self.unacked), {}
        for delivery in returned:
            delivery._settled = True  # a late ack or nack from the callback changes nothing
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.queue_ref.give_back([d._entry for d in returned])


class MemoryTransport(base.Transport):
    """A connection to a ``MemoryBroker``.

    Args:
        broker: the broker to use; several transports on one broker act like several
            connections to one RabbitMQ. A new private broker when omitted.
        user: the user it connects as (``user``); a publish with another ``user_id`` is
            refused, as RabbitMQ refuses it.
    """

    def __init__(self, broker: MemoryBroker | None = None, *, user: str = DEFAULT_USER) -> None:
        self.broker = broker if broker is not None else MemoryBroker()
        self._user = user
        self._open = False
        self._closed = False
        self._consumers: list[_MemoryConsumer] = []
        self._pending: dict[str, asyncio.Future[Delivery]] = {}
        self._reply_address = f"{REPLY_TO}.{uuid.uuid4().hex}"
        self._flow_listeners: list[base.FlowListener] = []

    def __repr__(self) -> str:
        return f"<MemoryTransport broker={id(self.broker):#x} open={self._open}>"

    @property
    def user(self) -> str:
        return self._user

    def _check_user_id(self, message: OutgoingMessage, exchange: str, routing_key: str) -> None:
        if message.user_id and message.user_id != self._user:
            # RabbitMQ closes the channel with PRECONDITION_FAILED; the amqp transport raises this.
            raise AccessRefused(
                f"user_id property set to {message.user_id!r} but the connection's user is "
                f"{self._user!r}: publish with user_id={self._user!r} or without one",
                exchange=exchange,
                routing_key=routing_key,
                user=self._user,
            )

    def add_flow_listener(self, listener: base.FlowListener) -> None:
        self._flow_listeners.append(listener)

    def _flow(self, blocked: bool, reason: str | None) -> None:
        for listener in list(self._flow_listeners):
            listener(blocked, reason)

    def _check_open(self) -> None:
        if not self._open:
            raise TransportClosed("the memory transport is not connected (or already closed)")

    async def connect(self) -> None:
        if self._closed:
            raise TransportClosed("a closed transport cannot reconnect; create a new one")
        self._open = True
        self.broker.reply_routes[self._reply_address] = self

    async def declare(self, topology: Topology) -> None:
        self._check_open()
        self.broker.declare(topology)

    async def unbind(self, binding: base.BindingSpec) -> None:
        """Remove ``binding``; nothing happens when it, its queue or its exchange is missing."""
        self._check_open()
        self.broker.unbind(binding)

    async def delete_queue(self, name: str) -> None:
        self._check_open()
        self.broker.delete_queue(name)

    async def publish(
        self,
        message: OutgoingMessage,
        *,
        exchange: str,
        routing_key: str,
        mandatory: bool = True,
        timeout: float | None = None,
    ) -> None:
        # In memory a publish is taken or refused at once: there is nothing to wait for.
        self._check_open()
        check_encodable(message, exchange=exchange, routing_key=routing_key)  # as on RabbitMQ
        self._check_user_id(message, exchange, routing_key)
        self.broker.publish(message, exchange, routing_key, mandatory)

    async def consume(
        self, queue: str, callback: base.DeliveryCallback, *, prefetch: int
    ) -> base.Consumer:
        self._check_open()
        target = self.broker.queues.get(queue)
        if target is None:
            raise ConfigurationError(f"cannot consume from queue {queue!r}: it does not exist")
        consumer = _MemoryConsumer(target, callback, prefetch)
        self._consumers.append(consumer)
        target.consumers.append(consumer)
        target.dispatch()
        return consumer

    async def request(
        self, message: OutgoingMessage, *, exchange: str, routing_key: str, timeout: float
    ) -> Delivery:
        self._check_open()
        correlation_id = message.correlation_id
        if not correlation_id:
            raise ValueError("a request needs a unique correlation_id")
        check_encodable(message, exchange=exchange, routing_key=routing_key)
        self._check_user_id(message, exchange, routing_key)
        future: asyncio.Future[Delivery] = asyncio.get_running_loop().create_future()
        self._pending[correlation_id] = future
        try:
            async with asyncio.timeout(timeout):
                request = msgspec.structs.replace(message, reply_to=self._reply_address)
                self.broker.publish(request, exchange, routing_key, True)
                return await future
        finally:
            self._pending.pop(correlation_id, None)

    def _on_reply(self, message: OutgoingMessage, address: str) -> None:
        future = self._pending.get(message.correlation_id or "")
        if future is not None and not future.done():
            future.set_result(_MemoryDelivery(_Entry(message, "", address)))

    async def close(self) -> None:
        if self._closed:
            return
        self._open = False
        self._closed = True
        self.broker.reply_routes.pop(self._reply_address, None)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(TransportClosed("the transport closed before the reply"))
        consumers, self._consumers = self._consumers, []
        for consumer in consumers:
            await consumer.shut_down()

    async def queue_depth(self, name: str) -> int:
        self._check_open()
        queue = self.broker.queues.get(name)
        if queue is None:
            raise ConfigurationError(f"queue {name!r} does not exist")
        return len(queue.ready)

    async def queue_info(self, name: str) -> base.QueueInfo:
        self._check_open()
        queue = self.broker.queues.get(name)
        if queue is None:
            raise ConfigurationError(f"queue {name!r} does not exist")
        return base.QueueInfo(messages=len(queue.ready), consumers=len(queue.consumers))

    def unsettled(self, queue: str | None = None) -> int:
        """Deliveries handed to this connection's consumers (of ``queue``, or of any) and not
        yet acked or nacked, including those whose callback has not started (the test harness
        waits on it)."""
        return sum(
            len(consumer.unacked)
            for consumer in self._consumers
            if queue is None or consumer.queue == queue
        )
