"""AMQP content headers as raw bytes, for properties and header tables no client will encode.

Every Python encoder refuses what an attacker sends happily: a ``timestamp`` of 2^64-1, a double
of 1e300 (pamqp writes floats as float32), tables nested thousands deep, header names that are
not UTF-8, type codes AMQP does not define. Values here are ``Field(code, payload)`` trees
encoded exactly as given; ``properties(...)`` lays out Basic.Properties with any flags.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "Field",
    "array",
    "double",
    "long_string",
    "properties",
    "signed64",
    "table",
    "table_value",
    "timestamp",
]

_U32 = struct.Struct(">I")


@dataclass(frozen=True)
class Field:
    """One field value: its type code and its encoded payload (after the code)."""

    code: bytes
    payload: bytes

    def encode(self) -> bytes:
        return self.code + self.payload


def table(entries: Sequence[tuple[bytes, Field]]) -> bytes:
    """A field table (with its length prefix) of raw names and values, in the given order."""
    body = b"".join(bytes((len(name),)) + name + value.encode() for name, value in entries)
    return _U32.pack(len(body)) + body


def table_value(entries: Sequence[tuple[bytes, Field]]) -> Field:
    return Field(b"F", table(entries))


def array(values: Sequence[Field]) -> Field:
    body = b"".join(v.encode() for v in values)
    return Field(b"A", _U32.pack(len(body)) + body)


def timestamp(seconds: int) -> Field:
    return Field(b"T", struct.pack(">Q", seconds))


def double(value: float) -> Field:
    return Field(b"d", struct.pack(">d", value))


def signed64(value: int) -> Field:
    return Field(b"l", struct.pack(">q", value))


def long_string(data: bytes) -> Field:
    return Field(b"S", _U32.pack(len(data)) + data)


def _short(data: bytes) -> bytes:
    assert len(data) <= 255
    return bytes((len(data),)) + data


# Basic.Properties in wire order: (flag bit, kind).
_LAYOUT = (
    ("content_type", 15, "short"),
    ("content_encoding", 14, "short"),
    ("headers", 13, "table"),
    ("delivery_mode", 12, "octet"),
    ("priority", 11, "octet"),
    ("correlation_id", 10, "short"),
    ("reply_to", 9, "short"),
    ("expiration", 8, "short"),
    ("message_id", 7, "short"),
    ("timestamp", 6, "u64"),
    ("type", 5, "short"),
    ("user_id", 4, "short"),
    ("app_id", 3, "short"),
)


def properties(**values: bytes | int) -> bytes:
    """Basic.Properties: short strings as raw bytes, ``headers`` as a raw table (``table()``),
    octets and the timestamp as ints. Properties not given are absent."""
    unknown = set(values) - {name for name, _, _ in _LAYOUT}
    assert not unknown, unknown
    flags = 0
    parts: list[bytes] = []
    for name, bit, kind in _LAYOUT:
        if name not in values:
            continue
        value = values[name]
        flags |= 1 << bit
        if kind == "short":
            assert isinstance(value, bytes)
            parts.append(_short(value))
        elif kind == "table":
            assert isinstance(value, bytes)
            parts.append(value)
        elif kind == "octet":
            assert isinstance(value, int)
            parts.append(bytes((value,)))
        else:
            assert isinstance(value, int)
            parts.append(struct.pack(">Q", value))
    return struct.pack(">H", flags) + b"".join(parts)
