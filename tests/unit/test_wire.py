"""The batched AMQP write path: the same bytes as pamqp, and acks that never cover too much."""

from __future__ import annotations

import asyncio
import datetime
import struct
from typing import Any

import pytest
from aiormq.abc import ChannelFrame
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import commands, frame
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from framework.envelope import new_message_id
from framework.transport.amqp import _frames, _publish
from framework.transport.base import OutgoingMessage

short = st.text(max_size=40)
header_values = st.one_of(
    st.text(max_size=30),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.booleans(),
    st.none(),
    st.lists(st.integers(min_value=-5, max_value=5), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(min_value=0, max_value=9), max_size=2),
)


class FakeConnection:
    """What FrameWriter uses of an aiormq connection: its write queue and whether it is closed."""

    def __init__(self) -> None:
        self.write_queue: asyncio.Queue[ChannelFrame] = asyncio.Queue(maxsize=10)
        self.is_closed = False


class FakeChannel:
    """What the write path uses of an aiormq channel: number, bookkeeping, futures."""

    def __init__(self, connection: FakeConnection, number: int = 1) -> None:
        self.connection = connection
        self.number = number
        self.is_closed = False
        self.max_content_size = 100
        self.delivery_tag = 0
        self.confirmations: dict[int, asyncio.Future[Any]] = {}
        self.message_id_delivery_tag: dict[str, int] = {}

    def create_future(self) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().create_future()


def spawn(coro: Any) -> asyncio.Task[None]:
    return asyncio.get_running_loop().create_task(coro)


def frames_of(payload: bytes) -> list[Any]:
    out = []
    while payload:
        used, _, value = frame.unmarshal(payload)
        out.append(value)
        payload = payload[used:]
    return out


async def flush_turns() -> None:
    """Let the loop run the turns after which a write is flushed (not a wait for time)."""
    for _ in range(_frames.FLUSH_TURNS):
        await asyncio.sleep(0)


async def payloads(connection: FakeConnection) -> list[bytes]:
    """The chunks handed to the connection writer so far, after this loop turn's flush."""
    await flush_turns()
    out = []
    while not connection.write_queue.empty():
        out.append(connection.write_queue.get_nowait().payload)
    return out


async def written(connection: FakeConnection) -> list[Any]:
    """Every frame handed to the connection writer so far."""
    return [f for payload in await payloads(connection) for f in frames_of(payload)]


def settles(frames: list[Any]) -> list[tuple[str, int, bool]]:
    out = []
    for f in frames:
        if isinstance(f, commands.Basic.Ack):
            out.append(("ack", f.delivery_tag, f.multiple))
        elif isinstance(f, commands.Basic.Nack):
            out.append(("nack", f.delivery_tag, f.requeue))
    return out


@settings(max_examples=60, deadline=None)
@given(
    content_type=st.one_of(st.none(), short),
    headers=st.one_of(st.none(), st.dictionaries(st.text(max_size=20), header_values, max_size=4)),
    persistent=st.booleans(),
    correlation_id=st.one_of(st.none(), short),
    reply_to=st.one_of(st.none(), short),
    expiration=st.one_of(st.none(), st.integers(min_value=0, max_value=10**9).map(str)),
    message_id=st.one_of(st.none(), short),
    timestamp=st.one_of(st.none(), st.integers(min_value=0, max_value=2**34)),
    message_type=st.one_of(st.none(), short),
    user_id=st.one_of(st.none(), short),
)
def test_properties_encode_like_pamqp(
    content_type: str | None,
    headers: dict[str, Any] | None,
    persistent: bool,
    correlation_id: str | None,
    reply_to: str | None,
    expiration: str | None,
    message_id: str | None,
    timestamp: int | None,
    message_type: str | None,
    user_id: str | None,
) -> None:
    """Encoded properties are byte for byte what pamqp's Basic.Properties marshal to."""
    ours = _frames.encode_properties(
        content_type=content_type,
        headers=headers,
        delivery_mode=2 if persistent else 1,
        correlation_id=correlation_id,
        reply_to=reply_to,
        expiration=expiration,
        message_id=message_id,
        timestamp=timestamp,
        message_type=message_type,
        user_id=user_id,
    )
    theirs = commands.Basic.Properties(
        content_type=content_type,
        headers=headers or None,
        delivery_mode=2 if persistent else 1,
        correlation_id=correlation_id,
        reply_to=reply_to,
        expiration=expiration,
        message_id=message_id,
        timestamp=(
            None if timestamp is None else datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
        ),
        message_type=message_type,
        user_id=user_id,
    ).marshal()
    assert ours == theirs


@given(
    headers=st.dictionaries(st.text(max_size=20), header_values, max_size=4),
    persistent=st.booleans(),
    correlation_id=st.one_of(st.none(), short),
    reply_to=st.one_of(st.none(), short),
    expiration_ms=st.one_of(st.none(), st.integers(min_value=0, max_value=10**9)),
    timestamp=st.one_of(st.none(), st.integers(min_value=0, max_value=2**34)),
    message_type=st.one_of(st.none(), short),
)
def test_both_publish_paths_send_the_same_properties(
    headers: dict[str, Any],
    persistent: bool,
    correlation_id: str | None,
    reply_to: str | None,
    expiration_ms: int | None,
    timestamp: int | None,
    message_type: str | None,
) -> None:
    """aiormq's Basic.Properties and the fast path's bytes come from one mapping of a message."""
    message = OutgoingMessage(
        body=b"{}",
        message_id=new_message_id(),
        type=message_type,
        correlation_id=correlation_id,
        headers=headers,
        persistent=persistent,
        expiration_ms=expiration_ms,
        timestamp=timestamp,
    )
    slow = _publish._properties(message, reply_to).marshal()
    assert _publish._wire_properties(message, reply_to) == slow


@settings(max_examples=60, deadline=None)
@given(
    value=st.recursive(
        st.floats(allow_nan=False),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
        max_leaves=8,
    )
)
def test_floats_are_sent_as_doubles_and_come_back_unchanged(value: Any) -> None:
    """Unlike pamqp (float32, which overflows at 1e300), header floats travel as doubles."""
    encoded = _frames.encode_properties(
        content_type=None,
        headers={"x": value, "big": 1e300},
        delivery_mode=2,
        correlation_id=None,
        reply_to=None,
        expiration=None,
        message_id=None,
        timestamp=None,
        message_type=None,
    )
    decoded = commands.Basic.Properties()
    decoded.unmarshal(struct.unpack(">H", encoded[:2])[0], encoded[2:])
    assert decoded.headers == {"x": value, "big": 1e300}


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1, {1}, object(), {"k": [2**63]}])
def test_header_values_amqp_cannot_carry_raise_type_error(value: Any) -> None:
    """A value with no AMQP encoding is a TypeError, which publish reports as NotEncodable."""
    with pytest.raises(TypeError):
        _frames.encode_properties(
            content_type=None,
            headers={"x": value},
            delivery_mode=2,
            correlation_id=None,
            reply_to=None,
            expiration=None,
            message_id=None,
            timestamp=None,
            message_type=None,
        )


@pytest.mark.parametrize("size", [0, 1, 99, 100, 101, 350])
async def test_publish_writes_pamqps_frames_and_registers_the_confirm(size: int) -> None:
    """A publish is the bytes of pamqp's method, header and body frames (split at frame_max)."""
    connection = FakeConnection()
    channel = FakeChannel(connection, number=3)
    writer = _frames.FrameWriter(connection, spawn)  # type: ignore[arg-type]
    fields: dict[str, Any] = {
        "content_type": "application/json",
        "headers": {"leveret-version": 1, "leveret-causation-id": "m-0"},
        "delivery_mode": 2,
        "correlation_id": "c",
        "message_id": "m-1",
        "message_type": "orders.place_order",
    }
    body = (bytes(range(256)) * 2)[:size]
    confirmation = _frames.publish(
        writer,
        channel,  # type: ignore[arg-type]
        exchange="x.commands",
        routing_key="orders.place_order",
        mandatory=True,
        properties=_frames.encode_properties(
            **fields, reply_to=None, expiration=None, timestamp=1_700_000_000
        ),
        message_id="m-1",
        body=body,
    )
    assert channel.confirmations == {1: confirmation}
    assert channel.message_id_delivery_tag == {"m-1": 1}
    properties = commands.Basic.Properties(
        **fields, timestamp=datetime.datetime.fromtimestamp(1_700_000_000, datetime.UTC)
    )
    expected = [
        commands.Basic.Publish(
            exchange="x.commands", routing_key="orders.place_order", mandatory=True
        ),
        ContentHeader(0, size, properties),
        *(ContentBody(body[i : i + 100]) for i in range(0, size, 100)),
    ]
    assert await payloads(connection) == [b"".join(frame.marshal(f, 3) for f in expected)]
    confirmation.set_result(None)
    await asyncio.sleep(0)  # not a wait for time: done callbacks run one loop turn later
    assert channel.message_id_delivery_tag == {}  # a return can no longer match it


async def test_frames_of_one_loop_turn_go_out_as_one_chunk() -> None:
    """Publishes and acks made in one turn reach the connection writer as one write."""
    connection = FakeConnection()
    channel = FakeChannel(connection)
    writer = _frames.FrameWriter(connection, spawn)  # type: ignore[arg-type]
    acks = _frames.AckBatcher(writer, channel)  # type: ignore[arg-type]
    for tag in (1, 2, 3):
        acks.delivered(tag)
    for n in range(5):
        _frames.publish(
            writer,
            channel,  # type: ignore[arg-type]
            exchange="",
            routing_key="q",
            mandatory=False,
            properties=b"\x00\x00",
            message_id=f"m{n}",
            body=b"{}",
        )
    acks.ack(1)
    acks.ack(2)
    chunks = await payloads(connection)
    assert len(chunks) == 1
    assert settles(frames_of(chunks[0])) == [("ack", 2, True)]


async def test_acks_in_order_become_one_multiple_ack() -> None:
    """A run of acked deliveries with nothing unsettled before it is one multiple ack."""
    connection = FakeConnection()
    acks = _frames.AckBatcher(_frames.FrameWriter(connection, spawn), FakeChannel(connection))  # type: ignore[arg-type]
    for tag in range(1, 6):
        acks.delivered(tag)
    for tag in (3, 1, 2):
        acks.ack(tag)
    assert settles(await written(connection)) == [("ack", 3, True)]
    acks.ack(5)
    acks.ack(4)
    assert settles(await written(connection)) == [("ack", 5, True)]


async def test_acks_behind_an_unsettled_delivery_go_out_singly_at_once() -> None:
    """A slow delivery never holds back the acks of later ones, and is never covered by them."""
    connection = FakeConnection()
    acks = _frames.AckBatcher(_frames.FrameWriter(connection, spawn), FakeChannel(connection))  # type: ignore[arg-type]
    for tag in range(1, 5):
        acks.delivered(tag)
    acks.ack(2)
    acks.ack(4)
    assert settles(await written(connection)) == [("ack", 2, False), ("ack", 4, False)]
    acks.ack(1)
    assert settles(await written(connection)) == [("ack", 1, True)]  # only 1 is left below 1
    acks.ack(3)
    acks.ack(3)  # a second ack is ignored
    assert settles(await written(connection)) == [("ack", 3, True)]


async def test_nack_goes_out_after_the_acks_asked_for_before_it() -> None:
    """A nack is written after earlier acks, so no multiple ack ever spans a nacked delivery."""
    connection = FakeConnection()
    acks = _frames.AckBatcher(_frames.FrameWriter(connection, spawn), FakeChannel(connection))  # type: ignore[arg-type]
    for tag in range(1, 5):
        acks.delivered(tag)
    acks.ack(1)
    acks.nack(2, requeue=True)
    acks.ack(4)
    acks.ack(3)
    acks.nack(3, requeue=False)  # already acked: ignored
    assert settles(await written(connection)) == [
        ("ack", 1, True),
        ("nack", 2, True),
        ("ack", 4, True),
    ]


async def test_a_delivery_out_of_sequence_turns_multiple_acks_off() -> None:
    """After a tag we never saw, acks are single: a multiple ack could cover that message."""
    connection = FakeConnection()
    acks = _frames.AckBatcher(_frames.FrameWriter(connection, spawn), FakeChannel(connection))  # type: ignore[arg-type]
    acks.delivered(1)
    acks.delivered(3)  # 2 never reached us
    acks.ack(1)
    acks.ack(3)
    assert settles(await written(connection)) == [("ack", 1, False), ("ack", 3, False)]


async def test_frames_of_a_closed_channel_are_dropped() -> None:
    """Frames of a channel that closed before the flush never reach the writer."""
    connection = FakeConnection()
    channel = FakeChannel(connection)
    acks = _frames.AckBatcher(_frames.FrameWriter(connection, spawn), channel)  # type: ignore[arg-type]
    acks.delivered(1)
    acks.ack(1)
    channel.is_closed = True
    assert await written(connection) == []


async def test_a_full_write_queue_keeps_frames_in_order() -> None:
    """When aiormq's write queue is full, later turns' frames wait behind earlier ones."""
    connection = FakeConnection()
    channel = FakeChannel(connection)
    writer = _frames.FrameWriter(connection, spawn)  # type: ignore[arg-type]
    acks = _frames.AckBatcher(writer, channel)  # type: ignore[arg-type]
    for _ in range(10):
        connection.write_queue.put_nowait(ChannelFrame(payload=b"", should_close=False))
    for tag in (1, 2, 3):
        acks.delivered(tag)
    acks.ack(1)
    await flush_turns()  # this flush finds the queue full
    acks.nack(2, requeue=True)
    acks.ack(3)
    await flush_turns()
    for _ in range(10):  # the connection writer catches up
        connection.write_queue.get_nowait()
    await writer.drain()
    assert settles(await written(connection)) == [
        ("ack", 1, True),
        ("nack", 2, True),
        ("ack", 3, True),
    ]


async def test_confirm_deadline_cancels_only_late_confirmations() -> None:
    """A confirmation still pending at its deadline is cancelled; a confirmed one is left alone."""
    loop = asyncio.get_running_loop()
    deadlines = _frames.ConfirmDeadlines(0.05)
    on_time, late = loop.create_future(), loop.create_future()
    deadlines.add(on_time)
    deadline = deadlines.add(late)
    on_time.set_result("ack")
    assert not deadlines.expired(deadline)
    with pytest.raises(asyncio.CancelledError):
        await late
    assert deadlines.expired(deadline)
    assert on_time.result() == "ack"
    deadlines.close()


def test_message_ids_are_unique_uuid4_hex() -> None:
    """new_message_id() gives distinct random UUID4s in uuid4().hex form."""
    import uuid

    ids = [new_message_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for value in ids[:300]:
        parsed = uuid.UUID(value)
        assert (parsed.version, parsed.variant, parsed.hex) == (4, uuid.RFC_4122, value)
