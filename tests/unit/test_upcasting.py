"""Upcasters: declared once, planned at start-up, applied when an old version reaches a handler."""

from __future__ import annotations

from typing import Annotated

import msgspec
import pytest

from framework import App, Command, Context, Event, Service, upcaster
from framework.codec import Codec
from framework.errors import ContractError, DecodeFailure, RegistrationError

Street = Annotated[str, msgspec.Meta(min_length=1)]


class Address(msgspec.Struct, frozen=True, kw_only=True):
    street: Street
    city: str


class ShipV1(Command):
    __wire_name__ = "ship.ship_parcel"
    __wire_version__ = 1

    parcel_id: str
    address: str


class ShipV2(Command):
    __wire_name__ = "ship.ship_parcel"
    __wire_version__ = 2

    parcel_id: str
    address: Address


class Ship(Command):
    __wire_name__ = "ship.ship_parcel"
    __wire_version__ = 3

    parcel_id: str
    address: Address
    express: bool = False


@upcaster
def ship_v1_to_v2(old: ShipV1) -> ShipV2:
    street, _, city = old.address.rpartition(", ")
    return ShipV2(parcel_id=old.parcel_id, address=Address(street=street, city=city))


@upcaster
def ship_v2_to_v3(old: ShipV2) -> Ship:
    return Ship(parcel_id=old.parcel_id, address=old.address)


V1_BODY = b'{"parcel_id":"p-1","address":"1 Main St, Springfield"}'


def decode(codec: Codec, body: bytes, version: int, into: type[Command] = Ship) -> object:
    return codec.decode(
        body,
        wire_name="ship.ship_parcel",
        version=version,
        content_type="application/json",
        into=into,
    )


def test_chain_upcasts_v1_to_v3() -> None:
    """A v1 body reaches a v3 reader through v1 -> v2 -> v3."""
    codec = Codec([Ship], upcasters=[ship_v2_to_v3, ship_v1_to_v2])
    assert decode(codec, V1_BODY, 1) == Ship(
        parcel_id="p-1", address=Address(street="1 Main St", city="Springfield")
    )
    assert codec.upcast_path("ship.ship_parcel", 1, 3) == (ship_v1_to_v2, ship_v2_to_v3)
    assert codec.versions("ship.ship_parcel") == [1, 2, 3]


def test_current_version_decodes_without_upcasting() -> None:
    """The handler's own version decodes directly, and without ``into`` every version decodes
    into its own class."""
    codec = Codec([Ship], upcasters=[ship_v1_to_v2, ship_v2_to_v3])
    body = b'{"parcel_id":"p","address":{"street":"s","city":"c"},"express":true}'
    assert decode(codec, body, 3) == Ship(
        parcel_id="p", address=Address(street="s", city="c"), express=True
    )
    plain = codec.decode(V1_BODY, wire_name="ship.ship_parcel", version=1, content_type=None)
    assert type(plain) is ShipV1


def test_no_path_is_an_unsupported_version() -> None:
    """Without an upcaster from v1, a v1 body for a v3 reader fails with a reason for the DLQ."""
    codec = Codec([ShipV1, Ship], upcasters=[ship_v2_to_v3])
    with pytest.raises(DecodeFailure) as caught:
        decode(codec, V1_BODY, 1)
    assert caught.value.reason == (
        "unsupported_version: 'ship.ship_parcel' version 1 has no upcaster path to version 3, "
        "which this handler reads"
    )


def test_newer_version_than_the_reader_is_unsupported() -> None:
    """Upcasters never run backwards: a v3 body for a v2 reader fails."""
    codec = Codec([ShipV2, Ship], upcasters=[ship_v2_to_v3])
    body = b'{"parcel_id":"p","address":{"street":"s","city":"c"}}'
    with pytest.raises(DecodeFailure, match=r"unsupported_version: 'ship\.ship_parcel' version 3"):
        decode(codec, body, 3, into=ShipV2)


def test_upcaster_result_is_validated() -> None:
    """An upcast message that breaks the new contract's constraints is refused, not handled."""
    codec = Codec([Ship], upcasters=[ship_v1_to_v2, ship_v2_to_v3])
    with pytest.raises(DecodeFailure) as caught:
        decode(codec, b'{"parcel_id":"p","address":"no comma"}', 1)
    assert caught.value.reason.startswith(
        "upcast_failed: 'ship.ship_parcel' version 1 -> 3 gave an invalid message: "
        "$.address.street expected str of length >= 1"
    )


def test_upcaster_that_raises_is_an_upcast_failure() -> None:
    """An exception in an upcaster becomes a DecodeFailure naming the function."""

    @upcaster
    def broken(old: ShipV1) -> ShipV2:
        raise ValueError("cannot parse address")

    codec = Codec([ShipV2], upcasters=[broken])
    with pytest.raises(DecodeFailure, match=r"upcast_failed: .* raised ValueError: cannot parse"):
        decode(codec, V1_BODY, 1, into=ShipV2)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            "async def f(old: ShipV1) -> ShipV2: ...",
            "is async: an upcaster is a plain, pure function",
        ),
        ("def f(old: ShipV2) -> ShipV1: ...", "upcasters go from an older version to a newer"),
        ("def f(old: ShipV1) -> Other: ...", "an upcaster joins two versions of one wire name"),
        ("def f(old: ShipV1, extra: int) -> ShipV2: ...", "must take exactly one parameter"),
        ("def f(old): ...", "must annotate its parameter and its return"),
        ("def f(old: ShipV1) -> EventV2: ...", "versions keep their kind"),
    ],
)
def test_upcaster_declaration_errors(source: str, message: str) -> None:
    """A malformed upcaster is refused when the decorator runs, saying what to change."""

    class Other(Command):
        __wire_name__ = "ship.other"
        __wire_version__ = 2

        x: int

    class EventV2(Event):
        __wire_name__ = "ship.ship_parcel"
        __wire_version__ = 2

        x: int

    namespace = {"ShipV1": ShipV1, "ShipV2": ShipV2, "Other": Other, "EventV2": EventV2}
    exec(source, namespace)
    with pytest.raises(ContractError, match=message):
        upcaster(namespace["f"])


def test_two_upcasters_for_the_same_step_are_refused() -> None:
    """Only one upcaster may join two given versions."""

    @upcaster
    def again(old: ShipV1) -> ShipV2:
        return ship_v1_to_v2(old)

    with pytest.raises(ContractError, match=r"both upcast 'ship\.ship_parcel' from version 1 to 2"):
        Codec([], upcasters=[ship_v1_to_v2, again])


def test_one_service_cannot_handle_two_versions() -> None:
    """Two versions share one queue per service, so a service handles only the newest."""
    shipping = Service("shipping")

    @shipping.command
    async def ship(cmd: Ship, ctx: Context) -> None: ...

    with pytest.raises(
        RegistrationError, match="handle the newest version and declare an upcaster"
    ):

        @shipping.command
        async def ship_old(cmd: ShipV1, ctx: Context) -> None: ...


def test_two_services_cannot_split_versions_of_one_command() -> None:
    """A command has one handler across the app whatever its version."""
    a, b = Service("a"), Service("b")

    @a.command
    async def ship(cmd: Ship) -> None: ...

    @b.command
    async def ship_old(cmd: ShipV1) -> None: ...

    with pytest.raises(RegistrationError, match="must have exactly one handler"):
        App([a, b])


def test_app_registers_upcasters_and_declared_sends() -> None:
    """The app's codec knows the handled version, the old ones of its upcasters and what
    services declare they send."""
    shipping = Service("shipping", sends=[ShipV1])

    @shipping.command
    async def ship(cmd: Ship) -> None: ...

    app = App([shipping], upcasters=[ship_v1_to_v2, ship_v2_to_v3])
    assert app.codec.versions("ship.ship_parcel") == [1, 2, 3]
    assert app.codec.upcasters() == [ship_v1_to_v2, ship_v2_to_v3]


def test_sends_accepts_only_commands_and_events() -> None:
    """Service(sends=...) lists what the service emits; a reply is not one of them."""
    from contracts.orders import OrderView

    with pytest.raises(RegistrationError, match="list the commands and events"):
        Service("orders", sends=[OrderView])
