"""The in-memory harness: captures what each service emits and checks it against consumers."""

from __future__ import annotations

import pytest

from framework import App, Command, Context, Event, RetryPolicy, Service
from framework.testing import Harness
from tests.unit.test_upcasting import Address, Ship, ShipV1, ship_v1_to_v2, ship_v2_to_v3


class Dispatch(Command):
    __wire_name__ = "ship.dispatch"

    parcel_id: str


class Dispatched(Event):
    __wire_name__ = "ship.dispatched"

    parcel_id: str


class StrictDispatched(Event):
    """Another team's copy of ship.dispatched v1 that also wants a carrier."""

    __wire_name__ = "ship.dispatched"

    parcel_id: str
    carrier: str


def producer(*, declare: bool = True) -> App:
    """An app whose dispatch handler sends ShipV1 and publishes Dispatched."""
    dispatch = Service("dispatch", sends=[ShipV1, Dispatched] if declare else [ShipV1])

    @dispatch.command
    async def on_dispatch(cmd: Dispatch, ctx: Context) -> None:
        await ctx.send(ShipV1(parcel_id=cmd.parcel_id, address="1 Main St, Springfield"))
        await ctx.publish(Dispatched(parcel_id=cmd.parcel_id))

    shipping = Service("shipping")

    @shipping.command
    async def ship(cmd: ShipV1) -> None: ...

    return App([dispatch, shipping])


def consumer(*, upcasters: bool, strict: bool = False) -> App:
    """Another team's app: ships v3 parcels and maybe listens to dispatched events strictly."""
    shipping = Service("shipping")

    @shipping.command
    async def ship(cmd: Ship) -> None: ...

    services = [shipping]
    if strict:
        audit = Service("audit")

        @audit.event
        async def on_dispatched(evt: StrictDispatched) -> None: ...

        services.append(audit)
    return App(services, upcasters=[ship_v1_to_v2, ship_v2_to_v3] if upcasters else [])


async def run(app: App) -> Harness:
    async with Harness(app) as harness:
        await app.send(Dispatch(parcel_id="p-1"))
        await harness.settle()
    return harness


async def test_captures_emitter_and_exact_wire_form() -> None:
    """Each captured message names the service and handler that emitted it, or the test."""
    harness = await run(producer())
    assert [(c.emitter, c.handler, c.wire_name, c.version) for c in harness.captured] == [
        (None, None, "ship.dispatch", 1),
        ("dispatch", "dispatch.on_dispatch", "ship.ship_parcel", 1),
        ("dispatch", "dispatch.on_dispatch", "ship.dispatched", 1),
    ]
    assert harness.captured[1].wire.body == (
        b'{"parcel_id":"p-1","address":"1 Main St, Springfield"}'
    )
    assert harness.consumer_problems() == []


async def test_consumer_without_upcaster_cannot_read_an_old_version() -> None:
    """A v1 command for a consumer on v3 without upcasters is reported with the DLQ reason."""
    harness = await run(producer())
    assert harness.consumer_problems(consumer(upcasters=False)) == [
        "ship.ship_parcel v1 from dispatch.on_dispatch: shipping.ship (reads version 3) cannot "
        "read it: unsupported_version: 'ship.ship_parcel' version 1, handled: [3]"
    ]
    assert harness.consumer_problems(consumer(upcasters=True)) == []


async def test_stricter_consumer_copy_of_a_contract_is_caught() -> None:
    """Another team's class for the same wire name and version that needs more is caught."""
    harness = await run(producer())
    problems = harness.consumer_problems(consumer(upcasters=True, strict=True))
    assert problems == [
        "ship.dispatched v1 from dispatch.on_dispatch: audit.on_dispatched (reads version 1) "
        "cannot read it: validation_error: object missing required field carrier"
    ]
    with pytest.raises(AssertionError, match="1 emitted message"):
        harness.assert_consumers_accept(consumer(upcasters=True, strict=True))


async def test_undeclared_emission_is_reported() -> None:
    """A service that emits what it does not declare in Service(sends=...) is reported."""
    harness = await run(producer(declare=False))
    assert harness.consumer_problems() == [
        "ship.dispatched v1 from dispatch.on_dispatch: service 'dispatch' does not declare it "
        "in Service(sends=...)"
    ]


async def test_settle_waits_for_delayed_retries() -> None:
    """settle returns only after a message parked in a retry delay queue was handled again."""
    attempts: list[int] = []
    flaky = Service("flaky", retry=RetryPolicy(immediate=0, delays=(0.05,)))

    @flaky.command
    async def ship(cmd: Ship, ctx: Context) -> None:
        attempts.append(ctx.attempt)
        if ctx.attempt == 0:
            raise RuntimeError("first try fails")

    app = App([flaky])
    async with Harness(app) as harness:
        await app.send(Ship(parcel_id="p", address=Address(street="s", city="c")))
        await harness.settle()
        assert attempts == [0, 1]


async def test_app_gets_its_transport_back() -> None:
    """After the block the app points at its own transport again."""
    app = producer()
    original = app.transport
    async with Harness(app):
        assert app.transport is not original
    assert app.transport is original
    assert app.bus.transport is original


async def test_the_harness_transport_tells_its_user() -> None:
    """Under the harness the app's transport names its broker user, so breaker control notes
    (admitted by user_id) are not all refused."""
    app = producer()
    async with Harness(app):
        assert app.transport.user == "guest"
