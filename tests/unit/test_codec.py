"""The codec: strict decoding against registered contracts, reasons that name the problem."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

import contracts
from contracts.orders import LineItem, PlaceOrder
from framework.codec import Codec
from framework.errors import ContractError, DecodeFailure
from framework.messages import Command

CODEC = Codec(contracts.ALL, max_body_size=4096)


def decode(
    body: bytes,
    wire: str | None = "orders.place_order",
    version: object = 1,
    content_type: str | None = "application/json",
) -> object:
    return CODEC.decode(body, wire_name=wire, version=version, content_type=content_type)


def order(**kw: object) -> PlaceOrder:
    base: dict[str, object] = {
        "order_id": "o-1",
        "customer_id": "c-1",
        "items": [LineItem(sku="apple", qty=2, unit_price_cents=250)],
        "address": "1 Main St",
    }
    base.update(kw)
    return PlaceOrder(**base)  # type: ignore[arg-type]


def test_round_trip() -> None:
    """A registered contract decodes back to an equal value."""
    msg = order()
    assert decode(CODEC.encode(msg)) == msg


def test_body_is_plain_json() -> None:
    """The body is the struct's JSON and nothing else (no envelope)."""
    assert msgspec.json.decode(CODEC.encode(order()))["order_id"] == "o-1"


def test_unknown_fields_are_ignored() -> None:
    """A producer may add an optional field without breaking older consumers."""
    body = CODEC.encode(order())[:-1] + b',"gift_wrap":true}'
    assert decode(body) == order()


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"body": b"x" * 5000}, "body_too_large: 5000 bytes > limit 4096"),
        ({"content_type": "application/x-python-pickle"}, "unsupported_content_type"),
        ({"wire": None}, "missing_type"),
        ({"wire": "orders.nope"}, "unknown_type: 'orders.nope'"),
        ({"version": 7}, "unsupported_version: 'orders.place_order' version 7"),
        ({"version": "seven"}, "unsupported_version"),
        ({"body": b'{"order_id": '}, "malformed_json"),
        ({"body": b'{"order_id": "\xff\xfe"}'}, "invalid_utf8"),
        ({"body": b"[1, 2]"}, "validation_error: expected object, got array"),
        (
            {
                "body": b'{"order_id":"o","customer_id":"c","address":"a",'
                b'"items":[{"sku":"s","qty":"1","unit_price_cents":1}]}'
            },
            "validation_error: $.items[0].qty expected int, got str",
        ),
        (
            {
                "body": b'{"order_id":"o","customer_id":"c","address":"a",'
                b'"items":[{"sku":"s","qty":0,"unit_price_cents":1}]}'
            },
            "validation_error: $.items[0].qty expected int >= 1",
        ),
        ({"body": b'{"order_id":"o"}'}, "validation_error: object missing required field"),
    ],
)
def test_bad_input_reasons(kwargs: dict[str, object], reason: str) -> None:
    """Each kind of bad input raises DecodeFailure whose reason starts with what was wrong."""
    args: dict[str, object] = {"body": CODEC.encode(order())}
    args.update(kwargs)
    with pytest.raises(DecodeFailure) as info:
        decode(**args)  # type: ignore[arg-type]
    assert info.value.reason.startswith(reason), info.value.reason


def test_missing_version_and_content_type_default() -> None:
    """Plain clients may omit the version header (means 1) and the content type (means JSON)."""
    assert decode(CODEC.encode(order()), version=None, content_type=None) == order()


def test_content_type_parameters_are_accepted() -> None:
    """``application/json; charset=utf-8`` is JSON."""
    assert decode(CODEC.encode(order()), content_type="application/json; charset=utf-8")


def test_duplicate_wire_name_is_an_error() -> None:
    """Two classes may not claim one wire name and version."""

    class Impostor(Command):
        __wire_name__ = "orders.place_order"

    with pytest.raises(ContractError, match=r"both claim wire name 'orders\.place_order'"):
        Codec([PlaceOrder, Impostor])


@given(
    order_id=st.text(min_size=1, max_size=40),
    qty=st.integers(min_value=1, max_value=10_000),
    price=st.integers(min_value=0, max_value=2**53),
    address=st.text(max_size=60),
)
def test_round_trip_property(order_id: str, qty: int, price: int, address: str) -> None:
    """Any valid order survives encode/decode unchanged."""
    msg = order(
        order_id=order_id,
        address=address,
        items=[LineItem(sku="s", qty=qty, unit_price_cents=price)],
    )
    assert decode(CODEC.encode(msg)) == msg
