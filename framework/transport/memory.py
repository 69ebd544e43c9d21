"""An in-process broker with RabbitMQ's semantics, and the transport that talks to it.

``MemoryBroker`` holds exchanges and queues; each ``MemoryTransport`` on it behaves like one
connection. Routing (default, direct, topic, fanout), mandatory returns, publisher nacks of full
``reject-publish`` queues, prefetch, round-robin between consumers, requeue, dead-lettering with
``x-death`` headers, per-message TTL, quorum delivery limits and direct reply-to follow RabbitMQ
3.10. Nothing here touches the network, and no state lives outside a broker object.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import uuid
from collections import deque
from datetime import UTC, datetime
from typing import Any

import msgspec
import structlog

from framework.errors import (
    ConfigurationError,
    PublishFailed,
    PublishNacked,
    TransportClosed,
    Unroutable,
)
from framework.transport.base import (
    Consumer,
    Delivery,
    DeliveryCallback,
    ExchangeSpec,
    ExchangeType,
    OutgoingMessage,
    QueueSpec,
    Topology,
    Transport,
)

__all__ = ["MemoryBroker", "MemoryTransport"]

log = structlog.get_logger(__name__)

REPLY_TO = "amq.rabbitmq.reply-to"


def topic_matches(pattern: str, routing_key: str) -> bool:
    """Whether a topic binding key (``*`` one word, ``#`` zero or more) matches a routing key."""
    return _match(pattern.split("."), routing_key.split("."))


def _match(pattern: list[str], words: list[str]) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_match(rest, words[i:]) for i in range(len(words) + 1))
    return bool(words) and head in ("*", words[0]) and _match(rest, words[1:])


class _Entry:
    """One message as one queue holds it."""

    __slots__ = ("deadline", "exchange", "message", "redelivered", "returns", "routing_key", "seq")

    def __init__(
        self, message: OutgoingMessage, exchange: str, routing_key: str, seq: int, now: float
    ) -> None:
        self.message = message
        self.exchange = exchange
        self.routing_key = routing_key
        self.seq = seq
        self.redelivered = False
        self.returns = 0  # quorum queues count deliveries handed back
        ttl = message.expiration_ms
        self.deadline = None if ttl is None else now + ttl / 1000


class _Queue:
    def __init__(self, broker: MemoryBroker, spec: QueueSpec) -> None:
        self.broker = broker
        self.spec = spec
        self.ready: deque[_Entry] = deque()
        self.consumers: list[_MemoryConsumer] = []
        self.next_consumer = 0
        self.timer: asyncio.TimerHandle | None = None
        self.deleted = False

    def offer(self, entry: _Entry) -> bool:
        """Enqueue; False when the queue is full and rejects publishes."""
        limit = self.spec.max_length
        rejects = self.spec.overflow in ("reject-publish", "reject-publish-dlx")
        if rejects and limit is not None and len(self.ready) >= limit:
            if self.spec.overflow == "reject-publish-dlx":
                self.broker.dead_letter(self, entry, "rejected")
            return False
        self.ready.append(entry)
        while limit is not None and len(self.ready) > limit:
            self.broker.dead_letter(self, self.ready.popleft(), "maxlen")
        self.dispatch()
        return True

    def give_back(self, entries: list[_Entry]) -> None:
        """Return unsettled deliveries to the head of the queue, in their original order."""
        for entry in sorted(entries, key=lambda e: e.seq, reverse=True):
            entry.redelivered = True
            limit = self.spec.delivery_limit if self.spec.quorum else None
            entry.returns += 1
            if limit is not None and entry.returns > limit:
                self.broker.dead_letter(self, entry, "delivery_limit")
            elif not self.deleted:
                self.ready.appendleft(entry)
        self.dispatch()

    def dispatch(self) -> None:
        """Hand ready messages to consumers with spare prefetch, round-robin; expire heads."""
        now = asyncio.get_running_loop().time()
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
            loop = asyncio.get_running_loop()
            self.timer = loop.call_at(self.ready[0].deadline, self.dispatch)

    def remove_consumer(self, consumer: _MemoryConsumer) -> None:
        if consumer in self.consumers:
            self.consumers.remove(consumer)
            self.next_consumer = 0
            if self.spec.auto_delete and not self.consumers and not self.deleted:
                self.broker.delete_queue(self.spec.name)


class MemoryBroker:
    """Exchanges, queues and bindings shared by the ``MemoryTransport`` objects that use it."""

    def __init__(self) -> None:
        self.exchanges: dict[str, ExchangeSpec] = {}
        self.queues: dict[str, _Queue] = {}
        self.bindings: dict[str, set[tuple[str, str]]] = {}  # exchange -> {(queue, key)}
        self.reply_routes: dict[str, MemoryTransport] = {}
        self._seq = itertools.count()

    def declare(self, topology: Topology) -> None:
        for exchange in topology.exchanges:
            current = self.exchanges.setdefault(exchange.name, exchange)
            if current != exchange:
                raise ConfigurationError(
                    f"exchange {exchange.name!r} already exists with other settings: "
                    f"{_diff(current, exchange)}; delete it or declare it as it is"
                )
            self.bindings.setdefault(exchange.name, set())
        for spec in topology.queues:
            if spec.quorum and (not spec.durable or spec.auto_delete):
                raise ConfigurationError(
                    f"quorum queue {spec.name!r} must be durable, not auto-delete"
                )
            queue = self.queues.setdefault(spec.name, _Queue(self, spec))
            if queue.spec != spec:
                raise ConfigurationError(
                    f"queue {spec.name!r} already exists with other settings: "
                    f"{_diff(queue.spec, spec)}; delete it or declare it as it is"
                )
        for binding in topology.bindings:
            if binding.exchange not in self.exchanges:
                raise ConfigurationError(
                    f"cannot bind queue {binding.queue!r}: no exchange {binding.exchange!r}"
                )
            if binding.queue not in self.queues:
                raise ConfigurationError(
                    f"cannot bind to exchange {binding.exchange!r}: no queue {binding.queue!r}"
                )
            self.bindings[binding.exchange].add((binding.queue, binding.routing_key))

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
        for queue_name, key in self.bindings[exchange]:
            if (
                spec.type is ExchangeType.FANOUT
                or (spec.type is ExchangeType.DIRECT and key == routing_key)
                or (spec.type is ExchangeType.TOPIC and topic_matches(key, routing_key))
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
        if queues is None:
            raise PublishFailed(
                f"exchange {exchange!r} does not exist; declare it before publishing",
                exchange=exchange,
                routing_key=routing_key,
            )
        if not queues:
            if mandatory:
                raise Unroutable(
                    f"no queue is bound to exchange {exchange!r} for {routing_key!r}",
                    exchange=exchange,
                    routing_key=routing_key,
                )
            return
        message = msgspec.structs.replace(message, headers=dict(message.headers))
        if not all([self._offer(q, message, exchange, routing_key) for q in queues]):
            raise PublishNacked(
                f"a full queue refused the message ({', '.join(q.spec.name for q in queues)})",
                exchange=exchange,
                routing_key=routing_key,
            )

    def _offer(self, queue: _Queue, message: OutgoingMessage, exchange: str, key: str) -> bool:
        now = asyncio.get_running_loop().time()
        return queue.offer(_Entry(message, exchange, key, next(self._seq), now))

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
        death = {
            "count": 1,
            "reason": reason,
            "queue": queue,
            "time": now,
            "exchange": entry.exchange,
            "routing-keys": [entry.routing_key],
        }
        if reason == "expired" and message.expiration_ms is not None:
            death["original-expiration"] = str(message.expiration_ms)
        deaths.insert(0, death)
    headers["x-death"] = deaths
    headers.setdefault("x-first-death-exchange", entry.exchange)
    headers.setdefault("x-first-death-queue", queue)
    headers.setdefault("x-first-death-reason", reason)
    return headers


def _diff(current: QueueSpec | ExchangeSpec, wanted: QueueSpec | ExchangeSpec) -> str:
    names = [f.name for f in dataclasses.fields(current)]
    return ", ".join(
        f"{name} is {getattr(current, name)!r}, declared {getattr(wanted, name)!r}"
        for name in names
        if getattr(current, name) != getattr(wanted, name)
    )


class _MemoryDelivery(Delivery):
    __slots__ = ("_consumer", "_entry", "_settled")

    def __init__(self, consumer: _MemoryConsumer | None, entry: _Entry, queue: _Queue | None):
        message = entry.message
        headers = dict(message.headers)
        if queue is not None and queue.spec.quorum:
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
        )
        self._consumer = consumer
        self._entry = entry
        self._settled = consumer is None  # replies arrive already settled (no-ack)

    async def ack(self) -> None:
        if not self._settled and self._consumer is not None:
            self._settled = True
            self._consumer.settled(self)
            self._consumer.queue_ref.dispatch()

    async def nack(self, *, requeue: bool) -> None:
        if self._settled or self._consumer is None:
            return
        self._settled = True
        consumer = self._consumer
        consumer.settled(self)
        if requeue:
            consumer.queue_ref.give_back([self._entry])
        else:
            consumer.queue_ref.broker.dead_letter(consumer.queue_ref, self._entry, "rejected")
            consumer.queue_ref.dispatch()


class _MemoryConsumer(Consumer):
    def __init__(self, queue: _Queue, callback: DeliveryCallback, prefetch: int) -> None:
        self.queue = queue.spec.name
        self.queue_ref = queue
        self._callback = callback
        self._prefetch = prefetch
        self.unacked: dict[_MemoryDelivery, None] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def has_capacity(self) -> bool:
        return self._prefetch <= 0 or len(self.unacked) < self._prefetch

    def deliver(self, entry: _Entry) -> None:
        delivery = _MemoryDelivery(self, entry, self.queue_ref)
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

    def settled(self, delivery: _MemoryDelivery) -> None:
        self.unacked.pop(delivery, None)

    async def cancel(self) -> None:
        self.queue_ref.remove_consumer(self)

    async def shut_down(self) -> None:
        """Connection closed: return unsettled deliveries and cancel the running callbacks."""
        self.queue_ref.remove_consumer(self)
        returned = list(self.unacked)
        self.unacked.clear()
        for delivery in returned:
            delivery._settled = True
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.queue_ref.give_back([d._entry for d in returned])


class MemoryTransport(Transport):
    """A connection to a ``MemoryBroker``.

    Args:
        broker: the broker to use; several transports on one broker act like several
            connections to one RabbitMQ. A new private broker when omitted.
    """

    def __init__(self, broker: MemoryBroker | None = None) -> None:
        self.broker = broker if broker is not None else MemoryBroker()
        self._open = False
        self._closed = False
        self._consumers: list[_MemoryConsumer] = []
        self._pending: dict[str, asyncio.Future[Delivery]] = {}
        self._reply_address = f"{REPLY_TO}.{uuid.uuid4().hex}"

    def __repr__(self) -> str:
        return f"<MemoryTransport broker={id(self.broker):#x} open={self._open}>"

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
    ) -> None:
        self._check_open()
        self.broker.publish(message, exchange, routing_key, mandatory)

    async def consume(self, queue: str, callback: DeliveryCallback, *, prefetch: int) -> Consumer:
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
            entry = _Entry(message, "", address, 0, 0.0)
            entry.deadline = None
            future.set_result(_MemoryDelivery(None, entry, None))

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
