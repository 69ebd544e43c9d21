"""Frames whose strings are not UTF-8 must not kill the connection that receives them.

AMQP short strings (``message_id``, ``type``, ``correlation_id``, ``content_type``, a routing
key) and header names are bytes on the wire, and RabbitMQ passes them on unchecked. pamqp decodes
them as UTF-8 and raises on anything else; aiormq then closes the whole connection, the broker
requeues the message, the robust connection reconnects, and the same message kills it again: one
publish from any client with write access stops every consumer of a worker for good.

``install()`` (called once when the RabbitMQ transport is imported) makes pamqp keep such bytes
instead: short strings decode with ``surrogateescape`` (the bytes survive as lone surrogates, and
encode back to the same bytes), and a header table that cannot be decoded becomes
``{UNDECODABLE_HEADERS: raw}``. ``undecodable(...)`` names the first field of a delivery that was
not UTF-8; on a queue with a dead-letter exchange (every handler queue) the consumer rejects
such a delivery without requeue, so the broker moves it, byte for byte, to the DLQ. Elsewhere
(a DLQ being inspected, say) it is delivered as it is: rejecting it there would drop it.
It patches pamqp's decoder and encoder tables, a process-wide change: any other pamqp user in
the process sees the same strings instead of a dropped connection.
"""

from __future__ import annotations

import re
from typing import Any

from pamqp import decode, encode

__all__ = ["UNDECODABLE_HEADERS", "install", "undecodable"]

#: The key of the one header a table that was not UTF-8 is replaced with. A lone surrogate
#: cannot come off the wire as a decoded header name, so it clashes with no real header.
UNDECODABLE_HEADERS = "\udcffundecodable-headers"

_SURROGATE = re.compile("[\udc80-\udcff]")
_PROPERTIES = ("message_id", "message_type", "correlation_id", "content_type", "reply_to")
_original_table = decode.METHODS["table"]


def _short_str(value: bytes) -> tuple[int, str]:
    try:
        length = value[0]
    except IndexError:
        raise ValueError("Could not unpack short string value") from None
    return length + 1, value[1 : length + 1].decode("utf-8", "surrogateescape")


def _encode_short_str(value: str) -> bytes:
    if not isinstance(value, str):
        raise TypeError(f"str required, received {type(value)}")
    data = value.encode("utf-8", "surrogateescape")  # the bytes _short_str kept, unchanged
    if len(data) > 255:
        raise TypeError("string exceeds maximum length of 255 bytes")
    return bytes((len(data),)) + data


def _table(value: bytes) -> tuple[int, Any]:
    try:
        return _original_table(value)
    except UnicodeDecodeError:
        length = int.from_bytes(value[:4], "big")
        return 4 + length, {UNDECODABLE_HEADERS: bytes(value[4 : 4 + length])}


def install() -> None:
    """Make pamqp keep short strings and header tables that are not UTF-8 (idempotent)."""
    decode.METHODS["shortstr"] = _short_str
    decode.METHODS["table"] = _table
    encode.METHODS["shortstr"] = _encode_short_str


def _not_utf8(value: str | None) -> bool:
    return value is not None and not value.isascii() and _SURROGATE.search(value) is not None


def undecodable(properties: Any, routing_key: str | None) -> str | None:
    """The name of the first property of a delivery that was not UTF-8, or None."""
    for name in _PROPERTIES:
        if _not_utf8(getattr(properties, name)):
            return name
    headers = properties.headers
    if headers and UNDECODABLE_HEADERS in headers:
        return "headers"
    if _not_utf8(routing_key):
        return "routing_key"
    return None
