"""Versions side by side on a broker: old messages published raw reach a newer handler upcast,
and a version with no path to the handler goes to the DLQ with its reason."""

from __future__ import annotations

import asyncio

import aio_pika
import pytest

from framework import Context, Query, QueryContext, Reply, Service, upcaster
from framework import envelope as env
from framework.transport.base import OutgoingMessage
from tests.app.conftest import Backend, next_item
from tests.unit.test_upcasting import Address, Ship, ShipV1, ShipV2, ship_v1_to_v2, ship_v2_to_v3

WIRE = "ship.ship_parcel"
V1_BODY = b'{"parcel_id":"p-1","address":"1 Main St, Springfield"}'


def shipping(handled: asyncio.Queue[Ship]) -> Service:
    service = Service("shipping")

    @service.command
    async def ship(cmd: Ship, ctx: Context) -> None:
        handled.put_nowait(cmd)

    return service


async def publish_raw(backend: Backend, exchange: str, body: bytes, version: int, mid: str) -> None:
    """Publish bytes written by hand (not leveret's encoder), as an old producer would."""
    transport = await backend.connected()
    await transport.publish(
        OutgoingMessage(body=body, message_id=mid, type=WIRE, headers={env.VERSION: version}),
        exchange=exchange,
        routing_key=WIRE,
    )


async def test_v1_message_reaches_v3_handler_upcast(backend: Backend) -> None:
    """A raw version-1 body is decoded as v1 and upcast through v2 to the v3 handler's class."""
    handled: asyncio.Queue[Ship] = asyncio.Queue()
    app = await backend.app([shipping(handled)], upcasters=[ship_v1_to_v2, ship_v2_to_v3])
    await publish_raw(backend, app.naming.commands, V1_BODY, 1, "m-v1")
    got = await next_item(handled)
    assert type(got) is Ship
    assert got == Ship(parcel_id="p-1", address=Address(street="1 Main St", city="Springfield"))
    await app.send(ShipV2(parcel_id="p-2", address=Address(street="s", city="c")))
    assert (await next_item(handled)).parcel_id == "p-2"


async def test_version_without_path_is_dead_lettered(backend: Backend) -> None:
    """A v1 message for a v3 handler without an upcaster from v1 lands in the DLQ with a reason."""
    handled: asyncio.Queue[Ship] = asyncio.Queue()
    app = await backend.app([shipping(handled)], contracts=[ShipV1], upcasters=[ship_v2_to_v3])
    queue = app.naming.handler_queue("shipping", WIRE)
    dead = await backend.collect(app.naming.dlq(queue))
    await publish_raw(backend, app.naming.commands, V1_BODY, 1, "m-old")
    got = await next_item(dead)
    reason = got.headers[env.DEAD_REASON]
    assert (reason.decode() if isinstance(reason, bytes) else reason) == (
        "unsupported_version: 'ship.ship_parcel' version 1 has no upcaster path to version 3, "
        "which this handler reads"
    )
    assert got.body == V1_BODY
    assert handled.empty()


@pytest.mark.rabbitmq
async def test_plain_aio_pika_v1_message_reaches_v3_handler(amqp_url: str, prefix: str) -> None:
    """A version-1 message from a plain aio-pika producer arrives upcast at the v3 handler."""
    from framework import App, AppConfig

    handled: asyncio.Queue[Ship] = asyncio.Queue()
    app = App(
        [shipping(handled)],
        url=amqp_url,
        config=AppConfig(prefix=prefix),
        upcasters=[ship_v1_to_v2, ship_v2_to_v3],
    )
    async with app:
        connection = await aio_pika.connect(amqp_url)
        try:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.get_exchange(app.naming.commands)
            await exchange.publish(
                aio_pika.Message(
                    V1_BODY,
                    message_id="plain-1",
                    type=WIRE,
                    content_type="application/json",
                    headers={env.VERSION: 1},
                ),
                routing_key=WIRE,
            )
            got = await next_item(handled)
        finally:
            await connection.close()
    assert got == Ship(parcel_id="p-1", address=Address(street="1 Main St", city="Springfield"))


class ParcelViewV1(Reply):
    __wire_name__ = "ship.parcel_view"
    __wire_version__ = 1

    parcel_id: str
    address: str


class ParcelView(Reply):
    __wire_name__ = "ship.parcel_view"
    __wire_version__ = 2

    parcel_id: str
    address: Address


class GetParcelOld(Query[ParcelViewV1]):
    __wire_name__ = "ship.get_parcel"

    parcel_id: str


class GetParcel(Query[ParcelView]):
    __wire_name__ = "ship.get_parcel"

    parcel_id: str


@upcaster
def parcel_view_v1_to_v2(old: ParcelViewV1) -> ParcelView:
    street, _, city = old.address.rpartition(", ")
    return ParcelView(parcel_id=old.parcel_id, address=Address(street=street, city=city))


async def test_old_reply_version_is_upcast_for_the_caller(backend: Backend) -> None:
    """A service still answering with reply v1 gives a v2 caller its v2 reply, upcast."""
    old_shipping = Service("shipping")

    @old_shipping.query
    async def get_parcel(query: GetParcelOld, ctx: QueryContext) -> ParcelViewV1:
        return ParcelViewV1(parcel_id=query.parcel_id, address="1 Main St, Springfield")

    await backend.app([old_shipping])
    caller = await backend.app([], upcasters=[parcel_view_v1_to_v2])
    reply = await caller.request(GetParcel(parcel_id="p-9"), timeout=10)
    assert reply == ParcelView(
        parcel_id="p-9", address=Address(street="1 Main St", city="Springfield")
    )
