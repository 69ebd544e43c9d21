"""No frame a publisher can craft may kill the connection that receives it.

This module patches pamqp's internals. Tested against pamqp 4.0.x (4.0.1) under aiormq 7.2.x and
aio-pika 10.2.x (``_compat.TESTED``; ``_compat.require()`` refuses to import the transport when
what is patched here is missing): it is the quarantine for the third-party internals the
transport relies on to decode deliveries.

RabbitMQ passes content headers on unchecked: any bytes in a short string or header name, a
``timestamp`` of 2^64-1, a header table nested thousands deep or holding a hundred thousand
entries. pamqp raised on the first three (a ``UnicodeDecodeError``, a ``ValueError`` from
``datetime``, a ``RecursionError``) and decoded the last in quadratic time (each value re-sliced
the rest of the table); aiormq then closed the whole connection, the broker requeued the message,
the robust connection reconnected, and the same message killed it again — one publish from any
client with write access stopped every consumer of a worker for good.

``install()`` (called once when the RabbitMQ transport is imported) changes pamqp's decoding so
that a content header always decodes:

* short strings decode with ``surrogateescape`` (bytes that are not UTF-8 survive as lone
  surrogates and encode back to the same bytes);
* header tables decode in one linear pass, within ``HeaderLimits`` (total bytes, checked from
  the length prefix before anything is read, nesting depth and entries). A table that breaks a
  limit, is not UTF-8 or holds a value that cannot be represented (a timestamp out of range)
  becomes ``{UNDECODABLE_HEADERS: raw table bytes, UNDECODABLE_REASON: why}``;
* any other failure in the properties of a content header (a ``timestamp`` property out of
  range, say) gives the message empty properties with the same two markers: its body size is
  kept, so the body frames that follow still assemble.

``undecodable(...)`` names what was wrong with a delivery. On a queue with a dead-letter
exchange (every handler queue) the consumer rejects such a delivery without requeue, so the
broker moves it, byte for byte, to the DLQ. Elsewhere (a DLQ being inspected, say) it is
delivered as it is: rejecting it there would drop it.

The limits and the patches are process-wide: pamqp decodes the frames of every connection of
the process, so any other pamqp user in it sees markers instead of a dropped connection.
"""

from __future__ import annotations

import datetime
import decimal
import re
import struct
from typing import Any

from pamqp import commands, decode, encode, frame, header

from framework.transport.amqp import _compat
from framework.transport.base import HeaderLimits

__all__ = [
    "UNDECODABLE_HEADERS",
    "UNDECODABLE_REASON",
    "HeaderLimits",
    "header_limits",
    "install",
    "set_header_limits",
    "undecodable",
]

#: The key of the header that replaces a table that could not be decoded (its raw bytes). A
#: lone surrogate cannot come off the wire as a decoded header name, so it clashes with no real
#: header.
UNDECODABLE_HEADERS = "\udcffundecodable-headers"
#: Beside it: why the table (or the properties) could not be decoded.
UNDECODABLE_REASON = "\udcffundecodable-reason"


_limits = HeaderLimits()


def set_header_limits(limits: HeaderLimits) -> None:
    """Use ``limits`` for every header table decoded in this process from now on."""
    global _limits
    _limits = limits


def header_limits() -> HeaderLimits:
    """The header limits in force in this process."""
    return _limits


_SURROGATE = re.compile("[\udc80-\udcff]")
_PROPERTIES = ("message_id", "message_type", "correlation_id", "content_type", "reply_to")
# Before reading pamqp's internals below: fail with an error naming the versions.
_compat.require(libraries=("pamqp",))
_original_header_frame = frame._unmarshal_header_frame
_CONTENT_HEADER = struct.Struct(">HHQ")

_U32 = struct.Struct(">I")
_I8, _U8 = struct.Struct(">b"), struct.Struct(">B")
_I16, _U16 = struct.Struct(">h"), struct.Struct(">H")
_I32 = struct.Struct(">i")
_I64, _U64 = struct.Struct(">q"), struct.Struct(">Q")
_F32, _F64 = struct.Struct(">f"), struct.Struct(">d")
_DECIMAL = struct.Struct(">BI")
# Fixed-size values: type byte -> (struct, how pamqp returns it). Mirrors pamqp's TABLE_MAPPING.
_FIXED: dict[int, struct.Struct] = {
    ord("b"): _I8,
    ord("B"): _U8,
    ord("s"): _I16,
    ord("u"): _U16,
    ord("I"): _I32,
    ord("i"): _U32,
    ord("l"): _I64,
    ord("L"): _I64,
    ord("f"): _F32,
    ord("d"): _F64,
}


class _Refused(Exception):
    """A header table breaks a limit or holds a value that cannot be represented."""


class _TableReader:
    """Decodes one field table in a single pass over ``data`` (no slice of the rest per value)."""

    __slots__ = ("data", "entries", "max_depth", "max_entries")

    def __init__(self, data: bytes, limits: HeaderLimits) -> None:
        self.data = data
        self.entries = 0
        self.max_depth = limits.max_depth
        self.max_entries = limits.max_entries

    def table(self, start: int, end: int, depth: int) -> dict[str, Any]:
        if depth > self.max_depth:
            raise _Refused(f"header tables nested deeper than {self.max_depth}")
        data = self.data
        result: dict[str, Any] = {}
        offset = start
        while offset < end:
            size = data[offset]
            offset += 1
            if offset + size > end:
                raise ValueError("field name runs past its table")
            key = data[offset : offset + size].decode("utf-8")
            offset += size
            offset, result[key] = self.value(offset, end, depth)
        return result

    def array(self, start: int, end: int, depth: int) -> list[Any]:
        if depth > self.max_depth:
            raise _Refused(f"header tables nested deeper than {self.max_depth}")
        result: list[Any] = []
        offset = start
        while offset < end:
            offset, value = self.value(offset, end, depth)
            result.append(value)
        return result

    def value(self, offset: int, end: int, depth: int) -> tuple[int, Any]:
        self.entries += 1
        if self.entries > self.max_entries:
            raise _Refused(f"header tables hold more than {self.max_entries} values")
        if offset >= end:
            raise ValueError("value runs past its table")
        data = self.data
        kind = data[offset]
        offset += 1
        fixed = _FIXED.get(kind)
        if fixed is not None:
            if offset + fixed.size > end:
                raise ValueError("value runs past its table")
            return offset + fixed.size, fixed.unpack_from(data, offset)[0]
        if kind == 0x53 or kind == 0x78:  # S: long string, x: byte array
            stop = self._sized(offset, end)
            raw = data[offset + 4 : stop]
            if kind == 0x78:
                return stop, bytearray(raw)
            try:
                return stop, raw.decode("utf-8")
            except UnicodeDecodeError:
                return stop, raw  # as pamqp does
        if kind == 0x46:  # F: table
            stop = self._sized(offset, end)
            return stop, self.table(offset + 4, stop, depth + 1)
        if kind == 0x41:  # A: array
            stop = self._sized(offset, end)
            return stop, self.array(offset + 4, stop, depth + 1)
        if kind == 0x74:  # t: boolean
            if offset >= end:
                raise ValueError("value runs past its table")
            return offset + 1, data[offset] != 0
        if kind == 0x54:  # T: timestamp
            if offset + 8 > end:
                raise ValueError("value runs past its table")
            return offset + 8, _timestamp(_U64.unpack_from(data, offset)[0])
        if kind == 0x44:  # D: decimal
            if offset + 5 > end:
                raise ValueError("value runs past its table")
            places, raw_int = _DECIMAL.unpack_from(data, offset)
            return offset + 5, decimal.Decimal(raw_int) * (decimal.Decimal(10) ** -places)
        if kind == 0x56 or kind == 0x00:  # V: void (and NUL, seen in the wild, per pamqp)
            return offset, None
        raise _Refused(f"unknown field type {bytes((kind,))!r}")

    def _sized(self, offset: int, end: int) -> int:
        if offset + 4 > end:
            raise ValueError("value runs past its table")
        stop: int = offset + 4 + _U32.unpack_from(self.data, offset)[0]
        if stop > end:
            raise ValueError("value runs past its table")
        return stop


def _timestamp(seconds: int) -> datetime.datetime:
    """A timestamp as pamqp decodes it (values past 2106 read as milliseconds), or _Refused."""
    value: float = seconds / 1000.0 if seconds > 0xFFFFFFFF else seconds
    try:
        return datetime.datetime.fromtimestamp(value, tz=datetime.UTC)
    except (OverflowError, OSError, ValueError):
        raise _Refused(f"timestamp {seconds} is out of range") from None


def _poisoned(raw: bytes, reason: str) -> dict[str, Any]:
    return {UNDECODABLE_HEADERS: raw, UNDECODABLE_REASON: reason}


def _table(value: bytes) -> tuple[int, dict[str, Any]]:
    """pamqp's ``table`` decoder, bounded and linear; never raises for a well-framed table."""
    if len(value) < 4:
        raise ValueError("Could not unpack field table length")
    length: int = _U32.unpack_from(value, 0)[0]
    end = 4 + length
    if end > len(value):
        raise ValueError("Field table length exceeds available data")
    limits = _limits
    if length > limits.max_bytes:
        return end, _poisoned(b"", f"header table of {length} bytes exceeds {limits.max_bytes}")
    try:
        return end, _TableReader(bytes(value), limits).table(4, end, 1)
    except UnicodeDecodeError:
        reason = "a header name is not UTF-8"
    except _Refused as exc:
        reason = str(exc)
    except (ValueError, IndexError, struct.error, ArithmeticError, RecursionError) as exc:
        reason = f"malformed header table: {exc}"
    return end, _poisoned(bytes(value[4:end]), reason)


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


def _header_frame(frame_data: bytes) -> header.ContentHeader:
    """pamqp's content-header decoder, except that bad properties never raise."""
    try:
        return _original_header_frame(frame_data)
    except Exception as exc:  # any failure of pamqp's decoders, whatever its type
        try:
            class_id, weight, body_size = _CONTENT_HEADER.unpack_from(frame_data, 0)
        except struct.error:
            raise exc from None  # not even a content header: the frame itself is broken
        cause = exc.__cause__ or exc
        properties = commands.Basic.Properties(
            headers=_poisoned(b"", f"properties cannot be decoded: {cause!r}"[:500])
        )
        content = header.ContentHeader(weight, body_size, properties)
        content.class_id = class_id
        return content


def install() -> None:
    """Make pamqp's decoding of content headers total and bounded (idempotent)."""
    decode.METHODS["shortstr"] = _short_str
    decode.METHODS["table"] = _table
    encode.METHODS["shortstr"] = _encode_short_str
    frame._unmarshal_header_frame = _header_frame


def _not_utf8(value: str | None) -> bool:
    return value is not None and not value.isascii() and _SURROGATE.search(value) is not None


def undecodable(properties: Any, routing_key: str | None) -> str | None:
    """What makes a delivery undecodable (a property name, or the headers' reason), or None."""
    headers = properties.headers
    if headers and UNDECODABLE_HEADERS in headers:
        reason = headers.get(UNDECODABLE_REASON)
        return f"headers: {reason}" if isinstance(reason, str) else "headers"
    for name in _PROPERTIES:
        if _not_utf8(getattr(properties, name)):
            return name
    if _not_utf8(routing_key):
        return "routing_key"
    return None
