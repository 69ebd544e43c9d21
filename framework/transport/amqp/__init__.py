"""The RabbitMQ transport, on aio-pika's robust connection. The only package importing aio-pika.

Channels: one for publishing (confirms, returns raise), one for topology, one for requests
(confirms, consuming ``amq.rabbitmq.reply-to`` without acks), and one per ``consume()``. aio-pika
reconnects and reopens the channels (with their QoS, exchanges, queues and bindings); the hot
path talks to the aiormq channel underneath.

One module per concern:

* ``_config``: ``AmqpConfig`` and the checks of the URL (TLS files) before connecting;
* ``_connection``: connecting, reconnecting, the watchdog verifying consumers after a loss,
  flow control, scratch channels;
* ``_consume``: consumers and deliveries, straight from aiormq's ``basic.consume`` callbacks;
* ``_publish``: publishing and the confirm deadlines;
* ``_rpc``: request/reply over direct reply-to;
* ``_topology``: declaring, unbinding, deleting and probing;
* ``_errors``: broker errors as leveret's, passwords scrubbed;
* ``_transport``: ``AmqpTransport``, which wires them.

Third-party internals are patched in quarantined modules that name the versions they are tested
against (``_compat.TESTED``, checked by ``_compat.require()`` when first used): ``_pamqp`` (pamqp's
content-header decoding made total and bounded), ``_frames`` (publish and ack frames written
into aiormq's channel bookkeeping), ``_aiormq_flow`` (aiormq's private blocked/unblocked
handlers), ``_aiormq_handshake`` (the broker's reason for refusing a vhost, which aiormq drops)
and ``_failover`` (aio-pika's reconnect loop, moved on to the next node and heard failing).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["AmqpConfig", "AmqpTransport"]

if TYPE_CHECKING:
    from framework.transport.amqp._config import AmqpConfig
    from framework.transport.amqp._transport import AmqpTransport


def __getattr__(name: str) -> Any:
    # Loaded on first use: the DLQ tools read _pamqp's markers without loading aio-pika.
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from framework.transport.amqp import _compat

    _compat.require()  # the patches need what they patch: fail here, naming the versions
    from framework.transport.amqp import _config, _transport

    return {"AmqpConfig": _config.AmqpConfig, "AmqpTransport": _transport.AmqpTransport}[name]
