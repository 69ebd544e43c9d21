"""Poison messages and dead letters through the harness, with the reasons docs/failures.md
lists."""

from __future__ import annotations

import msgspec
import pytest

from framework import Command, ConfigurationError
from framework.codec import Codec
from framework.errors import DecodeFailure
from framework.testing import Harness, VirtualClock
from tests.testing.loyalty import Enroll, Loyalty, Stamp


class Item(msgspec.Struct, frozen=True):
    qty: int

    def __post_init__(self) -> None:
        if self.qty <= 0:
            raise ValueError("qty must be positive")


class Basket(Command):
    __wire_name__ = "points.basket"

    items: list[Item]


def reason(body: bytes) -> str:
    with pytest.raises(DecodeFailure) as failed:
        Codec([Enroll]).decode(body, wire_name="loyalty.enroll", version=1, content_type=None)
    return failed.value.reason


def test_a_value_error_in_post_init_is_an_invalid_message() -> None:
    """A ValueError from a contract's __post_init__ reads invalid_message, as documented."""
    assert reason(b'{"member_id": ""}') == (
        "invalid_message: ValueError: member_id must not be empty"
    )


def test_a_nested_invalid_message_names_its_path() -> None:
    """Raised by a nested Struct's __post_init__, the reason says where."""

    with pytest.raises(DecodeFailure) as failed:
        Codec([Basket]).decode(
            b'{"items": [{"qty": 1}, {"qty": 0}]}',
            wire_name="points.basket",
            version=1,
            content_type=None,
        )
    assert failed.value.reason == (
        "invalid_message: ValueError: qty must be positive at $.items[1]"
    )


def test_a_wrong_type_stays_a_validation_error() -> None:
    """A field of the wrong type is still validation_error, with its path."""
    assert reason(b'{"member_id": 7}') == "validation_error: $.member_id expected str, got int"


async def test_poison_messages_reach_the_dlq_with_their_reasons() -> None:
    """Bytes no handler can read are dead-lettered once, each with its documented reason."""
    async with Harness(Loyalty().app) as harness:
        await harness.publish_raw("loyalty.enroll", b'{"member_id": ""}', message_id="p-1")
        await harness.publish_raw("loyalty.enroll", b"{not json", message_id="p-2")
        await harness.publish_raw("loyalty.enroll", b'{"member_id": "a"}', message_id="")
        await harness.settle()
        letters = await harness.dead_letters(Enroll)
    assert [(d.message_id, d.reason.split(":")[0]) for d in letters] == [
        ("p-1", "invalid_message"),
        ("p-2", "malformed_json"),
        ("", "missing_message_id"),
    ]
    assert letters[0].queue == "loyalty.loyalty.loyalty.enroll.dlq"
    assert [d.position for d in letters] == [1, 2, 3]


async def test_a_failing_handler_is_dead_lettered_after_its_retries() -> None:
    """After the last delayed retry the message is in its handler's DLQ with the exception."""
    shop = Loyalty(delays=(1.0,))
    async with Harness(shop.app, clock=VirtualClock()) as harness:
        await harness.app.send(Stamp(card="c-9", failures=5))
        await harness.advance(1)
        [letter] = await harness.dead_letters("loyalty.points.points.stamp")
        assert await harness.dead_letters("loyalty.points.points.stamp.dlq") == [letter]
        assert await harness.dead_letters() == [letter]
    assert (letter.reason, letter.exception_type, letter.attempts) == (
        "handler_failed: RuntimeError",
        "RuntimeError",
        2,
    )
    assert letter.exception_message == "stamp machine jammed (2)"
    assert shop.attempts == {"c-9": 2}


async def test_an_unknown_queue_is_a_configuration_error() -> None:
    """dead_letters and publish_raw name what the app has when given something else."""
    async with Harness(Loyalty().app) as harness:
        with pytest.raises(ConfigurationError, match=r"loyalty\.points\.points\.stamp"):
            await harness.dead_letters("points.stamp")
        with pytest.raises(ConfigurationError, match="no handler of this app takes"):
            await harness.publish_raw("nobody.knows", b"{}")
