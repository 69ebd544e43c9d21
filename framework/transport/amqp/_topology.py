"""Topology on RabbitMQ: declaring, unbinding, deleting and probing queues and exchanges.

Topology is checked on a throwaway channel first, so a ``PRECONDITION_FAILED`` never kills a
long-lived channel; then it is declared once more on the robust topology channel, where aio-pika
keeps every declared object and restores it (queues, exchanges, bindings) after a reconnect.
"""

from __future__ import annotations

from aio_pika.abc import AbstractRobustQueue
from aiormq.exceptions import ChannelClosed, ChannelNotFoundEntity

from framework.errors import ConfigurationError
from framework.transport.amqp._connection import AmqpConnection
from framework.transport.amqp._errors import broker_text
from framework.transport.base import BindingSpec, QueueInfo, QueueSpec, Topology

__all__ = ["AmqpTopology"]


class AmqpTopology:
    """What this transport declared, kept (and restored by aio-pika) for its lifetime.

    Args:
        link: the connection (its topology and scratch channels).
        exchanges: names of exchanges known to exist, shared with the publisher; every
            declared exchange is added.
    """

    def __init__(self, link: AmqpConnection, *, exchanges: set[str]) -> None:
        self._link = link
        self._exchanges = exchanges
        # Strong references: aio-pika restores only what is still referenced (aio-pika #536).
        self._queues: dict[str, AbstractRobustQueue] = {}
        self._declared: dict[str, object] = {}  # "queue:NAME"/"exchange:NAME" -> spec

    def dead_letters(self, queue: str) -> bool:
        """Whether the broker dead-letters what ``queue`` rejects (as declared here)."""
        spec = self._declared.get(f"queue:{queue}")
        return isinstance(spec, QueueSpec) and spec.dead_letter_exchange is not None

    async def declare(self, topology: Topology) -> None:
        """Declare ``topology`` (see ``AmqpTransport.declare``)."""
        self._link.require()
        async with self._link.deadline("declaring topology"):
            await self._check(topology)
            await self._declare_robust(topology)

    async def _check(self, topology: Topology) -> None:
        what = ""
        try:
            async with self._link.scratch_channel() as channel:
                for exchange in topology.exchanges:
                    what = f"exchange {exchange.name!r}"
                    await channel.exchange_declare(
                        exchange.name, exchange_type=exchange.type.value, durable=exchange.durable
                    )
                for queue in topology.queues:
                    what = f"queue {queue.name!r}"
                    await channel.queue_declare(
                        queue.name,
                        durable=queue.durable,
                        auto_delete=queue.auto_delete,
                        arguments=queue.arguments() or None,
                    )
                for binding in topology.bindings:
                    what = f"binding of queue {binding.queue!r} to {binding.exchange!r}"
                    await channel.queue_bind(
                        binding.queue, binding.exchange, routing_key=binding.routing_key
                    )
        except ChannelClosed as exc:
            raise ConfigurationError(f"cannot declare {what}: {broker_text(exc)}") from None

    async def _declare_robust(self, topology: Topology) -> None:
        channel = self._link.topology_channel
        assert channel is not None
        # Declared once each: aio-pika keeps (and restores) every object a declare returns.
        for exchange in topology.exchanges:
            if self._declared.get(f"exchange:{exchange.name}") != exchange:
                await channel.declare_exchange(
                    exchange.name, type=exchange.type.value, durable=exchange.durable
                )
                self._declared[f"exchange:{exchange.name}"] = exchange
                self._exchanges.add(exchange.name)
        for spec in topology.queues:
            if self._declared.get(f"queue:{spec.name}") != spec:
                self._queues[spec.name] = await channel.declare_queue(
                    spec.name,
                    durable=spec.durable,
                    auto_delete=spec.auto_delete,
                    arguments=spec.arguments() or None,
                )
                self._declared[f"queue:{spec.name}"] = spec
        for binding in topology.bindings:
            queue = self._queues.get(binding.queue)
            if queue is None:
                # Someone else's queue: bind it, but leave restoring it to its owner (a failed
                # passive redeclare would stall aio-pika's whole reconnect).
                queue = await channel.declare_queue(binding.queue, passive=True, robust=False)
            await queue.bind(binding.exchange, binding.routing_key)

    async def unbind(self, binding: BindingSpec) -> None:
        """Remove ``binding`` on a throwaway channel (see ``AmqpTransport.unbind``)."""
        self._link.require()
        what = f"unbinding queue {binding.queue!r} from {binding.exchange!r}"
        async with self._link.deadline(what):
            try:
                async with self._link.scratch_channel() as channel:
                    await channel.queue_unbind(
                        binding.queue, binding.exchange, routing_key=binding.routing_key
                    )
            except ChannelNotFoundEntity:
                return
            except ChannelClosed as exc:
                raise ConfigurationError(f"cannot unbind: {broker_text(exc)}") from None
            queue = self._queues.get(binding.queue)
            if queue is not None:
                # Idempotent on the broker; what matters is that aio-pika forgets the binding.
                await queue.unbind(binding.exchange, binding.routing_key)

    async def delete_queue(self, name: str) -> None:
        """Delete ``name`` and its messages (its consumers are cancelled by then)."""
        self._link.require()
        channel = self._link.topology_channel
        assert channel is not None
        async with self._link.deadline(f"deleting queue {name!r}"):
            await channel.queue_delete(name)
        self._queues.pop(name, None)
        self._declared.pop(f"queue:{name}", None)

    async def delete_exchange(self, name: str) -> None:
        """Delete exchange ``name`` (RabbitMQ answers delete-ok when there is none)."""
        self._link.require()
        channel = self._link.topology_channel
        assert channel is not None
        async with self._link.deadline(f"deleting exchange {name!r}"):
            await channel.exchange_delete(name)
        self._exchanges.discard(name)
        self._declared.pop(f"exchange:{name}", None)

    async def queue_info(self, name: str) -> QueueInfo:
        """Ready messages and consumers of ``name`` (see ``AmqpTransport.queue_info``)."""
        self._link.require()
        async with self._link.deadline(f"inspecting queue {name!r}"):
            ok = await self._link.probe_queue(name)
        return QueueInfo(messages=ok.message_count or 0, consumers=ok.consumer_count or 0)

    async def queue_depth(self, name: str) -> int:
        """Ready messages in ``name`` (see ``AmqpTransport.queue_depth``)."""
        self._link.require()
        async with self._link.deadline(f"counting queue {name!r}"):
            return (await self._link.probe_queue(name)).message_count or 0
