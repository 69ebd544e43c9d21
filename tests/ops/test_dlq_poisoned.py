"""``leveret dlq`` on a DLQ holding messages the client cannot decode or encode again.

Published into the DLQ below every Python client (``publish_raw`` with a hand-made content
header) or with header values at the edge of AMQP's ranges, on RabbitMQ. The tools must read
each message once, show the undecodable one as such, replay only into the DLQ's own queue, skip
(and keep) what cannot be replayed, and exit non-zero whenever they could not do everything.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from pamqp.commands import Basic

from framework import envelope
from framework.cli import main
from framework.dlq import ScanIncomplete, peek
from framework.transport.amqp import AmqpConfig, AmqpTransport, _frames
from framework.transport.base import (
    Consumer,
    DeliveryCallback,
    OutgoingMessage,
    QueueSpec,
    Topology,
)
from tests.support.fault_proxy import FaultProxy, fault_proxy
from tests.support.raw_amqp import publish_raw

pytestmark = [pytest.mark.rabbitmq, pytest.mark.timeout(120)]

BODY = b'{"order_id":"o","customer_id":"c","address":"a","items":[]}'
FORGED = "leveret.payment.payment.charge"  # a queue the message never came from


def content_header(body: bytes, properties: bytes) -> bytes:
    """A content-header frame on channel 1 with ``properties`` exactly as given."""
    payload = struct.pack(">HHQ", 60, 0, len(body)) + properties
    return struct.pack(">BHI", 2, 1, len(payload)) + payload + b"\xce"


async def publish_timestamp_bomb(url: str, dlq: str) -> None:
    """A message whose ``timestamp`` property is 2^64-1: no datetime holds it."""
    properties = _frames.encode_properties(
        content_type="application/json",
        headers={envelope.DEAD_REASON: "handler_failed: ValueError"},
        delivery_mode=2,
        correlation_id=None,
        reply_to=None,
        expiration=None,
        message_id="m-bomb",
        timestamp=2**64 - 1,
        message_type="orders.place_order",
    )
    await publish_raw(
        url,
        exchange="",
        routing_key=dlq,
        body=BODY,
        properties=Basic.Properties(),
        patch_header=lambda _: content_header(BODY, properties),
    )


async def message(transport: AmqpTransport, dlq: str, message_id: str, **headers: Any) -> None:
    await transport.publish(
        OutgoingMessage(
            body=BODY,
            message_id=message_id,
            type="orders.place_order",
            headers={envelope.DEAD_REASON: "handler_failed: ValueError", **headers},
        ),
        exchange="",
        routing_key=dlq,
    )


@pytest.fixture
async def poisoned(amqp_url: str, prefix: str) -> AsyncIterator[tuple[AmqpTransport, str, str]]:
    """``<prefix>.q`` and its DLQ holding, in order: a good message with a forged
    ``leveret-original-queue``, the timestamp bomb, a double of 1e300, a replay counter at
    2^63-1 (its replay copy needs 2^63), and a good one."""
    queue, dlq = f"{prefix}.q", f"{prefix}.q.dlq"
    transport = AmqpTransport(amqp_url)
    await transport.connect()
    await transport.declare(Topology(queues=(QueueSpec(queue), QueueSpec(dlq))))
    await message(transport, dlq, "m-forged", **{envelope.ORIGINAL_QUEUE: FORGED})
    await publish_timestamp_bomb(amqp_url, dlq)
    await message(transport, dlq, "m-double", **{"x-big": 1e300})
    await message(transport, dlq, "m-counter", **{envelope.REPLAYED: 2**63 - 1})
    await message(transport, dlq, "m-good")
    try:
        yield transport, queue, dlq
    finally:
        await transport.delete_queue(queue)
        await transport.delete_queue(dlq)
        await transport.close()


async def leveret(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``leveret ARGV`` in a thread; its exit code, stdout and stderr."""
    capsys.readouterr()
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def test_list_and_show_read_each_message_once_and_name_the_undecodable_one(
    poisoned: tuple[AmqpTransport, str, str], amqp_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``list`` and ``show`` keep their connection, read all five messages once each, show the
    timestamp bomb as undecodable with its reason, exit 0, and leave the DLQ as it was."""
    transport, _, dlq = poisoned
    code, out, err = await leveret(capsys, "dlq", "list", dlq, "--amqp-url", amqp_url, "--json")
    assert code == 0, err
    [row] = json.loads(out)
    assert row["messages"] == 5
    reasons = row["reasons"]
    assert reasons.pop("handler_failed: ValueError") == 4
    [(undecodable, count)] = reasons.items()
    assert count == 1
    assert undecodable.startswith("undecodable: ")
    assert "timestamp" in undecodable or "properties" in undecodable

    code, out, err = await leveret(capsys, "dlq", "show", dlq, "--amqp-url", amqp_url, "--json")
    assert code == 0, err
    shown = json.loads(out)
    assert [m["position"] for m in shown] == [1, 2, 3, 4, 5]
    ids = [m["message_id"] for m in shown]
    assert ids[0] == "m-forged"
    assert ids[2:] == ["m-double", "m-counter", "m-good"]
    assert ids[1] in (None, "m-bomb")  # the properties may be lost with the timestamp
    assert [m["undecodable"] is not None for m in shown] == [False, True, False, False, False]
    assert "broker_connection_lost" not in err

    code, out, err = await leveret(capsys, "dlq", "show", dlq, "--amqp-url", amqp_url)
    assert code == 0, err
    assert "undecodable  its headers could not be read; it cannot be replayed" in out
    assert await transport.queue_depth(dlq) == 5


async def test_replay_goes_only_to_the_dlqs_queue_and_skips_what_it_cannot_replay(
    poisoned: tuple[AmqpTransport, str, str], amqp_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``replay --all`` republishes the good messages (the 1e300 double included) into
    ``<queue>``, ignoring and naming the forged ``leveret-original-queue``; it leaves the
    undecodable message and the one whose copy cannot be encoded in the DLQ, in order, says
    why, and exits 1."""
    transport, queue, dlq = poisoned
    code, out, err = await leveret(capsys, "dlq", "replay", dlq, "--amqp-url", amqp_url, "--all")
    assert code == 1, (out, err)
    assert f"replayed m-forged -> {queue}" in out
    assert f"replayed m-double -> {queue}" in out
    assert f"replayed m-good -> {queue}" in out
    assert "3 message(s) replayed" in out
    assert f"m-forged: its {envelope.ORIGINAL_QUEUE} header names {FORGED!r}, ignored" in err
    assert "not replayed m-counter: it cannot be encoded again" in err
    assert "its headers could not be decoded" in err
    assert "Traceback" not in err
    assert await transport.queue_depth(queue) == 3
    left = await peek(transport, dlq)
    assert [m.message_id for m in left][1:] == ["m-counter"]
    assert left[0].undecodable is not None


class CutAfterFirstDelivery(AmqpTransport):
    """A transport whose connection (through the proxy) is reset after its first delivery."""

    def __init__(self, url: str, proxy: FaultProxy) -> None:
        super().__init__(url, config=AmqpConfig(connect_timeout=5, declare_timeout=3))
        self.proxy = proxy
        self.cut = False

    async def consume(self, queue: str, callback: DeliveryCallback, *, prefetch: int) -> Consumer:
        async def then_cut(delivery: Any) -> None:
            await callback(delivery)
            if not self.cut:
                self.cut = True
                self.proxy.reset()

        return await super().consume(queue, then_cut, prefetch=prefetch)


async def test_a_scan_that_loses_its_connection_reads_nothing_twice_and_says_so(
    amqp_url: str, prefix: str
) -> None:
    """A connection lost mid-scan (everything held goes back and comes again) stops the scan
    with ScanIncomplete holding each message read once; the DLQ keeps all of them, in order."""
    dlq = f"{prefix}.cut.dlq"
    setup = AmqpTransport(amqp_url)
    await setup.connect()
    await setup.declare(Topology(queues=(QueueSpec(dlq),)))
    ids = [f"m-{i}" for i in range(20)]
    for message_id in ids:
        await message(setup, dlq, message_id)
    parts = urlsplit(amqp_url)
    try:
        async with fault_proxy(parts.hostname or "127.0.0.1", parts.port or 5672) as proxy:
            cut = CutAfterFirstDelivery(proxy.url_for(amqp_url), proxy)
            await cut.connect()
            try:
                with pytest.raises(ScanIncomplete) as stopped:
                    await peek(cut, dlq, idle=10)
            finally:
                await cut.close()
        read = [info.message_id for info in stopped.value.partial]
        assert len(read) == len(set(read))
        assert read == ids[: len(read)]
        assert stopped.value.expected == 20
        assert "run the command again" in str(stopped.value)
        assert [info.message_id for info in await peek(setup, dlq)] == ids
    finally:
        await setup.delete_queue(dlq)
        await setup.close()
