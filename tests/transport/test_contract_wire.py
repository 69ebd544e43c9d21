"""The Transport contract on what AMQP can carry: memory refuses what RabbitMQ refuses, with the
same error, and delivers headers as the wire returns them (``framework.transport.wire``)."""

from __future__ import annotations

import datetime
import decimal
import enum
import uuid
from typing import Any

import pytest

from framework.errors import NotEncodable
from framework.transport.base import QueueSpec, Transport
from framework.transport.wire import problem
from tests.transport.test_transport_contract import Inbox, declare_queues, message

_ID = uuid.UUID("12345678-1234-5678-1234-567812345678")


class Colour(enum.StrEnum):
    RED = "red"


class Size(enum.IntEnum):
    BIG = 3


# (headers, the end of NotEncodable's text)
UNCARRIED: list[tuple[dict[Any, Any], str]] = [
    ({"id": _ID}, "header 'id' holds a UUID (UUID('12345678-1234-5678-1234-567812345…), which"),
    ({"tags": {"a"}}, "header 'tags' holds a set ({'a'}), which AMQP has no encoding for"),
    ({"big": 2**64}, "header 'big' holds 18446744073709551616, outside AMQP's signed 64-bit"),
    ({"low": -(2**63) - 1}, "header 'low' holds -9223372036854775809, outside AMQP's signed"),
    ({"n": {"k": [1, {"z": object}]}}, "header 'n'['k'][1]['z'] holds a type (<class 'object'>)"),
    ({1: "x"}, "header: name 1 is of type int; AMQP table names are strings"),
    ({"x" * 129: 1}, "header: name 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx… is 129 bytes of UTF-8"),
    ({"when": datetime.datetime(2200, 1, 1)}, "header 'when' holds 2200-01-01T00:00:00: AMQP"),
    ({"amount": decimal.Decimal("1e-300")}, "header 'amount' holds 1E-300: an AMQP decimal has"),
    ({"s": "\ud800"}, "header 's' is not valid text (it holds a lone surrogate)"),
]

# (field, value, the start of the problem)
TOO_LONG: list[tuple[str, str, str]] = [
    ("message_id", "m" * 256, "message_id is 256 bytes of UTF-8"),
    ("correlation_id", "é" * 128, "correlation_id is 256 bytes of UTF-8"),
    ("type", "t" * 300, "type is 300 bytes of UTF-8"),
    ("content_type", "c" * 256, "content_type is 256 bytes of UTF-8"),
    ("reply_to", "r" * 256, "reply_to is 256 bytes of UTF-8"),
    ("user_id", "u" * 256, "user_id is 256 bytes of UTF-8"),
]


async def test_header_values_amqp_cannot_carry_are_refused_before_anything_is_sent(
    transport: Transport, prefix: str
) -> None:
    """A UUID, a set, an int past 64 bits, a non-str name... raise the same NotEncodable on
    both transports, nothing reaches the queue, and the transport keeps working."""
    queue = f"{prefix}.q"
    await declare_queues(transport, QueueSpec(queue))
    for headers, text in UNCARRIED:
        with pytest.raises(NotEncodable) as refused:
            await transport.publish(message(headers=headers), exchange="", routing_key=queue)
        assert str(refused.value).startswith("the message cannot be put on the wire: " + text)
        assert (refused.value.exchange, refused.value.routing_key) == ("", queue)
    await transport.publish(message(), exchange="", routing_key=queue)
    assert await transport.queue_depth(queue) == 1


async def test_short_strings_over_255_bytes_are_refused(transport: Transport, prefix: str) -> None:
    """A message id, correlation id, type, content type, reply-to, user id or routing key over
    255 bytes of UTF-8 is refused with the same NotEncodable on both transports."""
    queue = f"{prefix}.q"
    await declare_queues(transport, QueueSpec(queue))
    for field, value, text in TOO_LONG:
        with pytest.raises(NotEncodable, match=f"^the message cannot be put on the wire: {text}"):
            await transport.publish(message(**{field: value}), exchange="", routing_key=queue)
    with pytest.raises(NotEncodable, match="the routing key is 256 bytes of UTF-8"):
        await transport.publish(message(), exchange="", routing_key="k" * 256)
    with pytest.raises(NotEncodable, match="expiration_ms=-1: RabbitMQ takes a whole number"):
        await transport.publish(message(expiration_ms=-1), exchange="", routing_key=queue)
    assert await transport.queue_depth(queue) == 0


async def test_request_that_amqp_cannot_carry_is_refused(transport: Transport, prefix: str) -> None:
    """A request is checked like a publish: NotEncodable, before anything is sent."""
    queue = f"{prefix}.q"
    await declare_queues(transport, QueueSpec(queue))
    ask = message(correlation_id=uuid.uuid4().hex, headers={"id": _ID})
    with pytest.raises(NotEncodable, match="header 'id' holds a UUID"):
        await transport.request(ask, exchange="", routing_key=queue, timeout=5)
    assert await transport.queue_depth(queue) == 0


async def test_what_amqp_carries_arrives_as_the_wire_returns_it(
    transport: Transport, prefix: str
) -> None:
    """Limits themselves pass (255-byte ids, 128-byte names, 64-bit ints); tuples arrive as
    lists, bytearrays as bytes, enums as their plain values, datetimes as UTC seconds."""
    queue = f"{prefix}.q"
    await declare_queues(transport, QueueSpec(queue))
    at = datetime.datetime(2024, 5, 6, 7, 8, 9, 123456)
    headers: dict[str, Any] = {
        "n" * 128: 1,
        "pair": (1, ("a", b"b")),
        "raw": bytearray(b"\x00\x01"),
        "colour": Colour.RED,
        "size": Size.BIG,
        "edges": [2**63 - 1, -(2**63)],
        "at": at,
        "table": {"k": ("v",)},
        "amount": decimal.Decimal("12.34"),
    }
    sent = message(message_id="é" * 127 + "x", correlation_id="c" * 255, headers=headers)
    await transport.publish(sent, exchange="", routing_key=queue)
    inbox = Inbox(ack=True)
    await transport.consume(queue, inbox, prefetch=1)
    got = await inbox.get()
    assert (got.message_id, got.correlation_id) == (sent.message_id, sent.correlation_id)
    assert dict(got.headers) == {
        "n" * 128: 1,
        "pair": [1, ["a", b"b"]],
        "raw": b"\x00\x01",
        "colour": "red",
        "size": 3,
        "edges": [2**63 - 1, -(2**63)],
        "at": at.replace(microsecond=0, tzinfo=datetime.UTC),
        "table": {"k": ["v"]},
        "amount": decimal.Decimal("12.34"),
    }
    kinds = [type(got.headers[k]) for k in ("pair", "raw", "colour", "size")]
    assert kinds == [list, bytes, str, int]
    assert sent.headers["pair"] == (1, ("a", b"b"))  # the caller's dict is left alone


def test_the_check_names_nothing_for_a_message_the_framework_builds() -> None:
    """The headers and properties leveret itself sends pass the check."""
    sent = message(
        type="orders.place_order",
        correlation_id="c" * 32,
        headers={"leveret-version": 1, "leveret-saga-id": "order-" + "k" * 300, "x-death": []},
        timestamp=1_700_000_000,
        expiration_ms=5000,
    )
    assert problem(sent, exchange="t.commands", routing_key="orders.place_order") is None


# A date past 2106 is encoded, but read back as milliseconds: not the date sent.
@pytest.mark.parametrize("headers", [h for h, text in UNCARRIED if "2200-01-01" not in text])
def test_what_the_check_refuses_the_amqp_encoder_cannot_send_either(
    headers: dict[Any, Any],
) -> None:
    """Each header refused in memory is one the AMQP transport's encoder fails on too."""
    from framework.transport.amqp import _frames
    from framework.transport.amqp._errors import UNENCODABLE

    with pytest.raises((*UNENCODABLE, AttributeError)):
        _frames.encode_properties(
            content_type=None,
            headers=headers,
            delivery_mode=2,
            correlation_id=None,
            reply_to=None,
            expiration=None,
            message_id=None,
            timestamp=None,
            message_type=None,
        )
