"""What AMQP 0-9-1 can carry, checked before anything is sent; headers as the wire returns them.

Both transports call ``check_encodable`` before anything is sent (the app's ``send`` and the
outbox writer call it earlier still, where the message is made), so a test that passes on the
memory transport cannot fail on RabbitMQ for these reasons, and both raise the same
``NotEncodable`` with the same text:

* a short string over 255 bytes of UTF-8: ``message_id``, ``correlation_id``, ``type``,
  ``content_type``, ``reply_to``, ``user_id``, the routing key; a header name over 128 bytes
  (what the AMQP transport's encoder allows); an exchange name RabbitMQ would refuse;
* a header value of a type AMQP has no field for (a ``uuid.UUID``, a set, an object), an int
  outside signed 64 bits, a ``Decimal`` outside AMQP's decimal, a ``datetime`` outside
  1970-2106 (what an AMQP timestamp carries back), a table key that is not a string, nesting
  deeper than the encoder goes;
* an ``expiration_ms`` RabbitMQ refuses (negative, or past ten years), a ``timestamp`` that is
  not whole seconds in 1970-2106.

``as_delivered`` gives headers as a consumer on RabbitMQ receives them: tuples become lists,
``bytearray`` becomes ``bytes``, a ``datetime`` becomes an aware UTC one in whole seconds,
subclasses of ``str``, ``int`` and ``float`` (enums) become the plain type. The memory broker
stores that, so its consumers see what RabbitMQ's see.
"""

from __future__ import annotations

import calendar
import datetime
import decimal
import re
import time
from collections.abc import Mapping
from typing import Any, Final

from framework.errors import NotEncodable
from framework.transport.base import OutgoingMessage

__all__ = [
    "MAX_HEADER_DEPTH",
    "MAX_HEADER_NAME_BYTES",
    "MAX_SHORT_STRING_BYTES",
    "as_delivered",
    "check_encodable",
    "problem",
]

#: An AMQP short string (message id, correlation id, type, routing key...) holds this many bytes.
MAX_SHORT_STRING_BYTES: Final = 255
#: A header (field table) name: AMQP's limit, which the AMQP transport's encoder enforces.
MAX_HEADER_NAME_BYTES: Final = 128
#: Tables and arrays nested deeper than this are not encoded (receivers bound it far lower,
#: ``HeaderLimits.max_depth``).
MAX_HEADER_DEPTH: Final = 200
_MAX_EXCHANGE = 127
_EXCHANGE_NAME = re.compile(r"[a-zA-Z0-9\-_.:@#,/+ ]*")
_INT64 = 1 << 63
# RabbitMQ refuses a negative per-message TTL and one past ten years (PRECONDITION_FAILED: the
# channel closes, and the publish used to end as a PublishTimeout after its resends).
_MAX_EXPIRATION = 315_360_000_000
# An AMQP timestamp is read back as seconds up to this, as milliseconds past it.
_MAX_TIMESTAMP = 0xFFFFFFFF
_DECIMAL_MANTISSA = 1 << 31
_SCALARS = frozenset({str, int, float, bool, bytes, type(None)})
_SHORT_FIELDS = ("message_id", "correlation_id", "type", "content_type", "reply_to", "user_id")
_ALLOWED = (
    "str, int, float, bool, None, bytes, datetime, Decimal, a list or tuple of these, or a dict "
    "with str keys"
)
_checked_exchanges: set[str] = set()


def check_encodable(message: OutgoingMessage, *, exchange: str, routing_key: str) -> None:
    """Raise unless AMQP can carry ``message`` published to ``exchange`` with ``routing_key``.

    Raises:
        NotEncodable: what cannot be put on the wire, and what to change.
    """
    what = problem(message, exchange=exchange, routing_key=routing_key)
    if what is not None:
        raise NotEncodable(
            f"the message cannot be put on the wire: {what}",
            exchange=exchange,
            routing_key=routing_key,
        )


def problem(message: OutgoingMessage, *, exchange: str, routing_key: str) -> str | None:
    """Why AMQP cannot carry ``message`` (see ``check_encodable``), or None when it can."""
    for name in _SHORT_FIELDS:
        value = getattr(message, name)
        # Constant-time checks for the common case: ASCII text that fits.
        if value is None or (type(value) is str and value.isascii() and len(value) <= 255):
            continue
        issue = _short_string(name, value)
        if issue is not None:
            return issue
    if not (type(routing_key) is str and routing_key.isascii() and len(routing_key) <= 255):
        issue = _short_string("the routing key", routing_key)
        if issue is not None:
            return issue
    if exchange not in _checked_exchanges:
        if not isinstance(exchange, str) or not (
            len(exchange) <= _MAX_EXCHANGE and _EXCHANGE_NAME.fullmatch(exchange)
        ):
            return (
                f"exchange name {_shown(exchange)} is not one RabbitMQ accepts: at most "
                f"{_MAX_EXCHANGE} letters, digits and -_.:@#,/+ or spaces"
            )
        _checked_exchanges.add(exchange)
    expiration = message.expiration_ms
    if expiration is not None and (
        type(expiration) is not int or not 0 <= expiration <= _MAX_EXPIRATION
    ):
        return (
            f"expiration_ms={expiration!r}: RabbitMQ takes a whole number of milliseconds from 0 "
            f"to {_MAX_EXPIRATION}"
        )
    stamp = message.timestamp
    if stamp is not None and (type(stamp) is not int or not 0 <= stamp <= _MAX_TIMESTAMP):
        return (
            f"timestamp={stamp!r}: AMQP carries whole seconds since 1970 up to 2106 "
            "(int(time.time()))"
        )
    headers = message.headers
    if headers:
        return _table("header", headers, 1)
    return None


def _shown(value: object, limit: int = 40) -> str:
    """``value`` quoted for an error, cut short."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _utf8_size(value: str) -> int | None:
    """Bytes of ``value`` on the wire; None when it is not text UTF-8 can carry (a lone
    surrogate). Bytes that were not UTF-8 when received (``surrogateescape``) go back as they
    came, as the AMQP transport sends them."""
    if value.isascii():  # constant time: the common case costs no encoding
        return len(value)
    try:
        return len(value.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:
        return None


def _short_string(name: str, value: object) -> str | None:
    if not isinstance(value, str):
        return f"{name} must be a str, not {type(value).__name__} {_shown(value)}"
    size = _utf8_size(value)
    if size is None:
        return f"{name} {_shown(value)} is not valid text (it holds a lone surrogate)"
    if size > MAX_SHORT_STRING_BYTES:
        return (
            f"{name} is {size} bytes of UTF-8 ({_shown(value)}); AMQP short strings hold at "
            f"most {MAX_SHORT_STRING_BYTES}: shorten it"
        )
    return None


def _table(where: str, table: Mapping[Any, Any], depth: int) -> str | None:
    """The first problem of a field table's names and values, or None.

    ``where`` names the table: ``header`` for the headers (a value is ``header 'x'``), else
    the value holding it (``header 'x'[0]``, whose values are ``header 'x'[0]['k']``).
    """
    if depth > MAX_HEADER_DEPTH:
        return f"{where} nests tables deeper than {MAX_HEADER_DEPTH}"
    top = depth == 1
    for key, value in table.items():
        # Up to 32 characters are at most 128 bytes; longer ASCII ones are their length.
        if type(key) is not str or not (len(key) <= 32 or (key.isascii() and len(key) <= 128)):
            issue = _name(where, key)
            if issue is not None:
                return issue
        kind = type(value)
        if kind is str:
            if value.isascii():  # constant time; anything else is checked by _value
                continue
        elif kind is int:
            if -_INT64 <= value < _INT64:
                continue
        elif kind is bool or kind is float or kind is bytes or value is None:
            continue
        issue = _value(_at(where, key, top), value, depth)
        if issue is not None:
            return issue
    return None


def _at(where: str, key: str, top: bool) -> str:
    return f"{where} {key!r}" if top else f"{where}[{key!r}]"


def _name(where: str, key: object) -> str | None:
    if not isinstance(key, str):
        return (
            f"{where}: name {_shown(key)} is of type {type(key).__name__}; AMQP table names "
            "are strings"
        )
    size = _utf8_size(key)
    if size is None:
        return f"{where}: name {_shown(key)} is not valid text (it holds a lone surrogate)"
    if size > MAX_HEADER_NAME_BYTES:
        return (
            f"{where}: name {_shown(key)} is {size} bytes of UTF-8; AMQP allows "
            f"{MAX_HEADER_NAME_BYTES}: shorten it"
        )
    return None


def _value(where: str, value: Any, depth: int) -> str | None:
    """The problem of one header value at ``where`` (``header 'x'[0]['k']``), or None."""
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return None
    if isinstance(value, int):
        if -_INT64 <= value < _INT64:
            return None
        return f"{where} holds {value}, outside AMQP's signed 64-bit integers"
    if isinstance(value, str):
        if _utf8_size(value) is None:
            return f"{where} is not valid text (it holds a lone surrogate)"
        return None
    if isinstance(value, bytes | bytearray):
        return None
    if isinstance(value, dict):
        return _table(where, value, depth + 1)
    if isinstance(value, list | tuple):
        if depth >= MAX_HEADER_DEPTH:
            return f"{where} nests arrays deeper than {MAX_HEADER_DEPTH}"
        for index, item in enumerate(value):
            issue = _value(f"{where}[{index}]", item, depth + 1)
            if issue is not None:
                return issue
        return None
    if isinstance(value, datetime.datetime):
        seconds = _seconds(value)
        if 0 <= seconds <= _MAX_TIMESTAMP:
            return None
        return f"{where} holds {value.isoformat()}: AMQP timestamps carry 1970 to 2106"
    if isinstance(value, time.struct_time):
        if 0 <= calendar.timegm(value) <= _MAX_TIMESTAMP:
            return None
        return f"{where} holds a struct_time outside 1970 to 2106, what AMQP timestamps carry"
    if isinstance(value, decimal.Decimal):
        return _decimal(where, value)
    return (
        f"{where} holds a {type(value).__name__} ({_shown(value)}), which AMQP has no "
        f"encoding for: use {_ALLOWED} (e.g. str(value))"
    )


def _decimal(where: str, value: decimal.Decimal) -> str | None:
    """pamqp's rules for an AMQP decimal: a scale of 0-255 and a signed 32-bit mantissa."""
    exponent = value.as_tuple().exponent
    if not isinstance(exponent, int):
        return f"{where} holds {value}, which an AMQP decimal cannot carry"
    scale = 0 if exponent > 0 else -exponent
    # Bounds first: int() of a Decimal like 1E+999999999 would build a billion-digit int.
    too_big = scale > 255 or (value != 0 and value.adjusted() > 9)
    if not too_big:
        mantissa = int(value) if exponent > 0 else int(value.scaleb(scale))
        too_big = not -_DECIMAL_MANTISSA <= mantissa < _DECIMAL_MANTISSA
    if too_big:
        return (
            f"{where} holds {value}: an AMQP decimal has at most 255 decimal places and a "
            "32-bit mantissa; send it as a str"
        )
    return None


def _seconds(value: datetime.datetime) -> int:
    """Whole seconds since 1970 of ``value`` as AMQP sends it (a naive one is taken as UTC)."""
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        value = value.replace(tzinfo=datetime.UTC)
    return int(value.timestamp())


def as_delivered(headers: Mapping[str, Any]) -> dict[str, Any]:
    """``headers`` as a consumer on RabbitMQ receives them (see the module docstring); a new
    dict, the caller's is left alone. ``headers`` must have passed ``check_encodable``."""
    return {
        key: value if type(value) in _SCALARS else _delivered(value)
        for key, value in headers.items()
    }


def _delivered(value: Any) -> Any:
    kind = type(value)
    if kind in _SCALARS:
        return value
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__index__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, bytearray):
        return bytes(value)
    if isinstance(value, dict):
        return {str.__str__(k): _delivered(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_delivered(item) for item in value]
    if isinstance(value, datetime.datetime):
        return datetime.datetime.fromtimestamp(_seconds(value), datetime.UTC)
    if isinstance(value, time.struct_time):
        return datetime.datetime.fromtimestamp(calendar.timegm(value), datetime.UTC)
    return value  # Decimal: read back equal
