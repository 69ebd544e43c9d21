"""The codec's limits, in memory: depth, size and strange exceptions are reasons, not crashes."""

from __future__ import annotations

import pytest

from contracts.orders import PlaceOrder
from framework import AppConfig, Command, ConfigurationError
from framework.codec import DEFAULT_MAX_BODY_SIZE, Codec
from framework.errors import DecodeFailure


class Checked(Command):
    __wire_name__ = "security.checked"

    n: int

    def __post_init__(self) -> None:
        if self.n == 13:
            raise LookupError("13 is not in the table")


def reason(codec: Codec, body: bytes, wire_name: str = "orders.place_order") -> str:
    with pytest.raises(DecodeFailure) as failed:
        codec.decode(body, wire_name=wire_name, version=1, content_type="application/json")
    return failed.value.reason


@pytest.mark.parametrize("depth", [1_000, 400_000])
def test_deep_nesting_is_a_reason(depth: int) -> None:
    """JSON nested past the recursion limit fails as too_deeply_nested, not RecursionError."""
    body = b'{"order_id":"o","junk":' + b"[" * depth + b"]" * depth + b"}"
    assert reason(Codec([PlaceOrder]), body).startswith("too_deeply_nested")


def test_moderate_nesting_in_an_unknown_field_is_ignored() -> None:
    """Nesting well inside the limit in a field the contract does not know is skipped."""
    body = (
        b'{"order_id":"o","customer_id":"c","address":"a","items":[],"junk":'
        + b"[" * 100
        + b"]" * 100
        + b"}"
    )
    decoded = Codec([PlaceOrder]).decode(
        body, wire_name="orders.place_order", version=1, content_type=None
    )
    assert decoded == PlaceOrder(order_id="o", customer_id="c", address="a", items=[])


def test_any_exception_from_a_contract_is_a_reason() -> None:
    """A __post_init__ raising something msgspec does not wrap still gives a DecodeFailure."""
    text = reason(Codec([Checked]), b'{"n":13}', "security.checked")
    assert text == "invalid_message: LookupError: 13 is not in the table"


def test_default_size_limit_is_checked_before_parsing() -> None:
    """One byte over the default limit is refused without reading the (invalid) JSON."""
    body = b"{" * (DEFAULT_MAX_BODY_SIZE + 1)
    assert reason(Codec([PlaceOrder]), body) == (
        f"body_too_large: {DEFAULT_MAX_BODY_SIZE + 1} bytes > limit {DEFAULT_MAX_BODY_SIZE}"
    )


@pytest.mark.parametrize("size", [0, -1, True, 1.5])
def test_max_body_size_must_be_a_positive_int(size: object) -> None:
    """A size limit that is not a positive number of bytes is a configuration error."""
    with pytest.raises(ConfigurationError, match="max_body_size"):
        AppConfig(max_body_size=size)  # type: ignore[arg-type]  # the point of the test
