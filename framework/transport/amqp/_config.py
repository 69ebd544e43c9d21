"""The RabbitMQ transport's settings, and the checks of its URL made before connecting."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

from aio_pika.connection import make_url
from yarl import URL

from framework.errors import ConfigurationError
from framework.transport.base import HeaderLimits
from framework.urls import check_broker_url, split_urls

__all__ = ["AmqpConfig", "check_url", "robust_url", "user_of", "vhost_of"]

# TLS files aiormq reads from an amqps:// URL's query (with capath, cadata and no_verify_ssl).
_TLS_FILES = ("cafile", "certfile", "keyfile")


@dataclass(frozen=True, slots=True)
class AmqpConfig:
    """Deadlines and intervals of the RabbitMQ transport, in seconds.

    Args:
        connect_timeout: to open the connection and its channels (and to close them).
        publish_timeout: for the broker's confirm of one publish.
        declare_timeout: for declaring topology, starting or cancelling a consumer.
        heartbeat: AMQP heartbeat; a dead peer is noticed after about two of them.
        reconnect_interval: pause between reconnection attempts.
        consumer_verify_timeout: after a connection or consumer loss, time allowed until every
            consumer is verified back; past it ``wait_failed()`` returns.
        header_limits: bounds on the header tables of deliveries; a delivery past them is
            rejected to its DLQ unread. pamqp decodes every connection's frames, so they are
            process-wide: the transport that connects last sets them.
        shuffle_nodes: with several node URLs, try them in a random order (workers spread over
            a cluster's nodes) rather than as listed.
    """

    connect_timeout: float = 10.0
    publish_timeout: float = 10.0
    declare_timeout: float = 10.0
    heartbeat: int = 10
    reconnect_interval: float = 1.0
    consumer_verify_timeout: float = 15.0
    header_limits: HeaderLimits = field(default_factory=HeaderLimits)
    shuffle_nodes: bool = True


def user_of(url: str) -> str:
    """The URL's user name (``guest`` when it names none, as aio-pika then logs in); of the
    first node of several (they share their credentials)."""
    first = split_urls(url)[0] if url.strip() else url
    return unquote(urlsplit(first).username or "") or "guest"


def vhost_of(url: str) -> str:
    """The vhost the URL asks for (``/`` when its path is empty, as aiormq then opens), of the
    first node of several (they share their vhost)."""
    first = split_urls(url)[0] if url.strip() else url
    return unquote(urlsplit(first).path[1:]) or "/"


def check_url(url: str, safe_url: str) -> None:
    """Check ``url`` before connecting: escaping, TLS options and the TLS files it names.

    Raises:
        ConfigurationError: the URL is malformed, or a ``cafile``/``certfile``/``keyfile`` in
            its query cannot be read (named, instead of a bare ENOENT later).
    """
    with contextlib.suppress(ValueError):
        query = parse_qs(urlsplit(url).query)
        for name in _TLS_FILES:
            for path in query.get(name, ()):
                if not os.access(path, os.R_OK):
                    raise ConfigurationError(
                        f"{name}={path!r} in the broker URL {safe_url} is not a "
                        "readable file: give the path of a PEM file"
                    )
    check_broker_url(url)  # escaped password, no_verify_ssl 0/1; warns when it is off


def robust_url(url: str, safe_url: str, config: AmqpConfig) -> URL:
    """``url`` with the heartbeat and reconnect interval of ``config``, as aio-pika reads it.

    Raises:
        ConfigurationError: the URL cannot be parsed (the message quotes no part of it).
    """
    try:
        return make_url(
            url, heartbeat=config.heartbeat, reconnect_interval=config.reconnect_interval
        )
    except ValueError as exc:  # yarl's message quotes no part of the URL
        raise ConfigurationError(f"the broker URL {safe_url} is not valid: {exc}") from None
