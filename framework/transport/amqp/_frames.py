"""Publishing and settling on aiormq channels with less work per message.

aiormq's ``basic_publish`` and ``basic_ack`` each build pamqp frame objects, marshal them, take
the channel lock, and put one frame per call on the connection's write queue, so every publish
and every ack costs its own queue hand-off and its own ``send()`` system call. On the consume
path that is most of the client's work. This module keeps aiormq's bookkeeping (delivery tags,
confirmation futures that the channel rejects when it closes, the message-id map through which a
``basic.return`` fails its publish) and changes only how the frames get to the socket:

* frames are encoded directly (the same bytes pamqp produces; header values of unusual types
  still go through pamqp's encoder);
* the frames written in a loop turn and the next one go to the connection writer as one chunk
  (``FLUSH_TURNS``): one hand-off and one ``send()`` for all their publishes and acks;
* acks of a channel are settled at that flush, as one ``basic.ack`` with ``multiple`` for the
  oldest run of acked deliveries and single acks for the rest, so a slow message never holds
  back the acks of the ones after it.

Nothing is acked earlier than before: an ack is only ever written for a delivery whose ack was
asked for, and a ``multiple`` ack only covers deliveries that were all acked.

Tested against aiormq 7.2.x (7.2.4) and pamqp 4.0.x (4.0.1) under aio-pika 10.2.x
(``_compat.TESTED``). What it needs of aiormq at import is checked by ``_compat.require()``;
the channel bookkeeping it writes into is checked per channel by ``supports_fast_path``, and
without it the transport publishes and acks through aiormq's own methods.
"""

from __future__ import annotations

import asyncio
import struct
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from functools import partial
from typing import Any

import aiormq
import aiormq.abc
from aiormq.abc import ChannelFrame
from aiormq.exceptions import ChannelInvalidStateError
from pamqp import encode
from pamqp.constants import DOMAIN_REGEX

__all__ = [
    "FLUSH_TURNS",
    "AckBatcher",
    "ConfirmDeadlines",
    "FrameWriter",
    "encode_properties",
    "publish",
    "supports_fast_path",
]

_END = b"\xce"
_FRAME = struct.Struct(">BHI")
_PUBLISH_METHOD = struct.pack(">HHH", 60, 40, 0)  # Basic.Publish, ticket 0
_CONTENT_HEADER = struct.Struct(">HHQ")  # class id, weight, body size
_SETTLE = struct.Struct(">BHIHHQBc")  # method frame: Basic.Ack / Basic.Nack, tag, bits, end
_TIMESTAMP = struct.Struct(">Q")
_FLAGS = struct.Struct(">H")
_UINT = struct.Struct(">I")
_BYTE = struct.Struct(">b")
_DOUBLE = struct.Struct(">d")
# Deeper than the decoder's bound (``HeaderLimits.max_depth`` at most 200): what can be
# sent can be received, and nothing here recurses without end.
_MAX_DEPTH = 200
_ACK, _NACK = 80, 120

# Property flags of Basic.Properties, in wire order.
_CONTENT_TYPE = 1 << 15
_HEADERS = 1 << 13
_DELIVERY_MODE = 1 << 12
_CORRELATION_ID = 1 << 10
_REPLY_TO = 1 << 9
_EXPIRATION = 1 << 8
_MESSAGE_ID = 1 << 7
_TIMESTAMP_FLAG = 1 << 6
_TYPE = 1 << 5
_USER_ID = 1 << 4

# The frames written in one loop turn go out this many turns later (see FrameWriter._schedule).
FLUSH_TURNS = 2

_REQUIRED = ("write_queue", "confirmations", "message_id_delivery_tag", "delivery_tag")


def supports_fast_path(channel: aiormq.abc.AbstractChannel) -> bool:
    """Whether this aiormq channel has the bookkeeping attributes the fast path relies on."""
    return all(hasattr(channel, name) for name in _REQUIRED) and hasattr(
        getattr(channel, "connection", None), "write_queue"
    )


def _short(value: str) -> bytes:
    # Bytes that were not UTF-8 (kept by ``_pamqp``) go back exactly as they came.
    data = value.encode("utf-8", "surrogateescape")
    if len(data) > 255:  # pamqp's error, so callers see what they saw before
        raise TypeError("string exceeds maximum length of 255 bytes")
    return bytes((len(data),)) + data


def _value(value: Any, depth: int) -> bytes:
    """One field value as pamqp encodes it, except floats: doubles, so none overflows.

    Raises:
        TypeError: a type AMQP has no field for, an int outside 64 bits, a table nested
            past ``_MAX_DEPTH``.
    """
    kind = type(value)
    if kind is str:
        data: bytes = value.encode("utf-8", "surrogateescape")
        return b"S" + _UINT.pack(len(data)) + data
    if kind is bool:
        return b"t\x01" if value else b"t\x00"
    if kind is int:
        if -128 <= value <= 127:
            return b"b" + _BYTE.pack(value)
        if -(1 << 63) <= value < (1 << 63):
            integer: bytes = encode.table_integer(value)
            return integer
        raise TypeError(f"the integer {value} does not fit in 64 bits")
    if kind is float:
        return b"d" + _DOUBLE.pack(value)
    if value is None:
        return b"V"
    if isinstance(value, dict):
        return b"F" + _fields(value, depth + 1)
    if isinstance(value, list | tuple):
        if depth >= _MAX_DEPTH:
            raise TypeError(f"header values nested deeper than {_MAX_DEPTH}")
        items = b"".join([_value(item, depth + 1) for item in value])
        return b"A" + _UINT.pack(len(items)) + items
    if isinstance(value, bytes | bytearray):
        return b"x" + _UINT.pack(len(value)) + bytes(value)
    return encode.encode_table_value(value)  # datetime, Decimal; raises TypeError on the rest


def _fields(headers: Mapping[str, Any], depth: int) -> bytes:
    if depth > _MAX_DEPTH:
        raise TypeError(f"header values nested deeper than {_MAX_DEPTH}")
    parts: list[bytes] = []
    for key, value in sorted(headers.items()):
        name = key.encode("utf-8", "surrogateescape")
        if len(name) > 128:
            raise TypeError(f"header name of {len(name)} bytes: AMQP allows 128")
        parts.append(bytes((len(name),)) + name)
        parts.append(_value(value, depth))
    table = b"".join(parts)
    return _UINT.pack(len(table)) + table


def _table(headers: Mapping[str, Any]) -> bytes:
    """A field table as pamqp encodes it, floats as doubles.

    Raises:
        TypeError: a value AMQP cannot carry (see ``_value``).
    """
    if encode.DEPRECATED_RABBITMQ_SUPPORT:
        return encode.field_table(dict(headers))
    return _fields(headers, 1)


def encode_properties(
    *,
    content_type: str | None,
    headers: Mapping[str, Any] | None,
    delivery_mode: int,
    correlation_id: str | None,
    reply_to: str | None,
    expiration: str | None,
    message_id: str | None,
    timestamp: int | None,
    message_type: str | None,
    user_id: str | None = None,
) -> bytes:
    """Basic.Properties as pamqp marshals them (empty strings and empty tables are left out)."""
    flags = _DELIVERY_MODE
    parts: list[bytes] = []
    if content_type:
        flags |= _CONTENT_TYPE
        parts.append(_short(content_type))
    if headers:
        flags |= _HEADERS
        parts.append(_table(headers))
    parts.append(bytes((delivery_mode,)))
    if correlation_id:
        flags |= _CORRELATION_ID
        parts.append(_short(correlation_id))
    if reply_to:
        flags |= _REPLY_TO
        parts.append(_short(reply_to))
    if expiration:
        flags |= _EXPIRATION
        parts.append(_short(expiration))
    if message_id:
        flags |= _MESSAGE_ID
        parts.append(_short(message_id))
    if timestamp is not None:
        flags |= _TIMESTAMP_FLAG
        parts.append(_TIMESTAMP.pack(timestamp))
    if message_type:
        flags |= _TYPE
        parts.append(_short(message_type))
    if user_id:
        flags |= _USER_ID
        parts.append(_short(user_id))
    return _FLAGS.pack(flags) + b"".join(parts)


_checked_exchanges: set[str] = set()


def _publish_frames(
    channel: int,
    max_body: int,
    exchange: str,
    routing_key: str,
    mandatory: bool,
    properties: bytes,
    body: bytes,
) -> bytes:
    if exchange not in _checked_exchanges:
        if len(exchange) > 127 or not DOMAIN_REGEX["exchange-name"].fullmatch(exchange):
            raise ValueError(f"invalid exchange name {exchange!r}")
        _checked_exchanges.add(exchange)
    method = b"".join(
        (_PUBLISH_METHOD, _short(exchange), _short(routing_key), b"\x01" if mandatory else b"\x00")
    )
    header = _CONTENT_HEADER.pack(60, 0, len(body)) + properties
    parts = [
        _FRAME.pack(1, channel, len(method)),
        method,
        _END,
        _FRAME.pack(2, channel, len(header)),
        header,
        _END,
    ]
    for start in range(0, len(body), max_body):
        piece = body[start : start + max_body]
        parts += (_FRAME.pack(3, channel, len(piece)), piece, _END)
    return b"".join(parts)


def _settle_frame(channel: int, method: int, tag: int, bits: int) -> bytes:
    return _SETTLE.pack(1, channel, 13, 60, method, tag, bits, _END)


def _forget(index: dict[str, int], message_id: str, tag: int, _: object) -> None:
    if index.get(message_id) == tag:
        del index[message_id]


class FrameWriter:
    """Hands the frames written in a loop turn (and the next) to aiormq's writer as one chunk.

    One per aiormq connection. Frames of a channel that closed before the turn ended are dropped
    (the broker would refuse them; their confirmations were already failed by the channel).
    """

    def __init__(
        self,
        connection: aiormq.abc.AbstractConnection,
        spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]],
    ) -> None:
        self.connection = connection
        self._queue: asyncio.Queue[ChannelFrame] = connection.write_queue
        self._spawn = spawn
        self._loop = asyncio.get_running_loop()
        self._chunks: list[tuple[aiormq.abc.AbstractChannel, bytes]] = []
        self._before_flush: list[Callable[[], None]] = []
        self._scheduled = False
        self._putter: asyncio.Task[None] | None = None

    def write(self, channel: aiormq.abc.AbstractChannel, data: bytes) -> None:
        self._chunks.append((channel, data))
        self._schedule()

    def before_flush(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` (once) just before this turn's frames go out."""
        self._before_flush.append(callback)
        self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            # Two turns later, not one: the handlers woken by the same socket read (a delivery
            # starts its task one turn after the frame is parsed, a confirm resumes its publisher
            # one turn after) write in the next turn, and their frames join this chunk. That
            # halves the sends per message under load and costs two loop turns of latency.
            self._loop.call_soon(self._defer, FLUSH_TURNS - 1)

    def _defer(self, turns: int) -> None:
        if turns:
            self._loop.call_soon(self._defer, turns - 1)
        else:
            self._flush()

    def _take(self) -> ChannelFrame | None:
        callbacks, self._before_flush = self._before_flush, []
        for callback in callbacks:
            callback()
        chunks, self._chunks = self._chunks, []
        payload = b"".join([data for channel, data in chunks if not channel.is_closed])
        if not payload or self.connection.is_closed:
            return None
        return ChannelFrame(payload=payload, should_close=False)

    def _flush(self) -> None:
        if self._putter is not None:
            self._scheduled = False
            return  # the putter takes everything written meanwhile, in order
        frame = self._take()  # writes made by before-flush callbacks join this chunk
        self._scheduled = False
        if frame is None:
            return
        try:
            self._queue.put_nowait(frame)
        except asyncio.QueueFull:
            self._putter = self._spawn(self._put_in_order(frame))

    async def _put_in_order(self, frame: ChannelFrame | None) -> None:
        try:
            while frame is not None:
                await self._queue.put(frame)
                frame = self._take()
        finally:
            self._putter = None

    async def drain(self) -> None:
        """Hand everything written so far to the connection writer (before a close)."""
        while self._putter is not None and not self.connection.is_closed:
            await asyncio.shield(self._putter)
        frame = self._take()
        if frame is not None:
            await self._queue.put(frame)


def publish(
    writer: FrameWriter,
    channel: aiormq.abc.AbstractChannel,
    *,
    exchange: str,
    routing_key: str,
    mandatory: bool,
    properties: bytes,
    message_id: str,
    body: bytes,
) -> asyncio.Future[Any]:
    """Publish on a confirming channel; returns the future of the broker's confirm.

    The future fails like aiormq's own: ``PublishError`` on a return (when the channel raises on
    returns), ``DeliveryError`` on a nack, the close reason when the channel closes. The message
    id must be set: a return is matched to its publish by it.

    Raises:
        ChannelInvalidStateError: the channel is closed.
    """
    if channel.is_closed:
        raise ChannelInvalidStateError(f"{channel!r} closed")
    raw: Any = channel
    data = _publish_frames(
        raw.number, raw.max_content_size, exchange, routing_key, mandatory, properties, body
    )
    # From here to the write nothing awaits, so delivery tags follow the order of the frames.
    raw.delivery_tag += 1
    tag = raw.delivery_tag
    confirmation: asyncio.Future[Any] = channel.create_future()
    raw.confirmations[tag] = confirmation
    index = raw.message_id_delivery_tag
    index[message_id] = tag
    confirmation.add_done_callback(partial(_forget, index, message_id, tag))
    writer.write(channel, data)
    return confirmation


class ConfirmDeadlines:
    """Fails confirmations still pending at their deadline, with one timer for all of them.

    Every publish of a transport has the same timeout, so deadlines come in order: one timer at
    the oldest pending deadline replaces an ``asyncio.timeout`` per publish. An expired
    confirmation is cancelled; ``expired`` tells its publisher that this was the deadline.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._loop = asyncio.get_running_loop()
        self._pending: deque[tuple[float, asyncio.Future[Any]]] = deque()
        self._timer: asyncio.TimerHandle | None = None

    def add(self, confirmation: asyncio.Future[Any]) -> float:
        """Watch ``confirmation``; returns its deadline (loop time)."""
        pending = self._pending
        while pending and pending[0][1].done():  # confirms mostly arrive in order
            pending.popleft()
        deadline = self._loop.time() + self.timeout
        pending.append((deadline, confirmation))
        if self._timer is None:
            self._timer = self._loop.call_at(deadline, self._expire)
        return deadline

    def expired(self, deadline: float) -> bool:
        return self._loop.time() >= deadline

    def _expire(self) -> None:
        self._timer = None
        now = self._loop.time()
        pending = self._pending
        while pending:
            deadline, confirmation = pending[0]
            if not confirmation.done():
                if deadline > now:
                    self._timer = self._loop.call_at(deadline, self._expire)
                    return
                confirmation.cancel()
            pending.popleft()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._pending.clear()


class AckBatcher:
    """Settles the deliveries of one consumer channel at each flush of its frame writer.

    Call ``delivered`` for every delivery in arrival order, then ``ack`` or ``nack`` once each.
    A run of acked deliveries with no unsettled one before it goes out as one ``multiple`` ack;
    acked deliveries after an unsettled one are acked singly in the same turn. A nack first
    sends the acks asked for before it, so a ``multiple`` ack never spans a nacked delivery.
    If the channel ever delivers out of sequence (a tag we never saw), ``multiple`` is no longer
    used on it: it could ack a message nobody handled.
    """

    __slots__ = ("_channel", "_expected", "_multiple", "_number", "_open", "_pending", "_writer")

    def __init__(self, writer: FrameWriter, channel: aiormq.abc.AbstractChannel) -> None:
        self._writer = writer
        self._channel = channel
        self._number: int = channel.number
        self._open: dict[int, bool] = {}  # delivered and not yet settled -> acked?
        self._pending = 0  # acked, ack not yet written
        self._expected = 1  # the next delivery tag; a fresh channel starts at 1
        self._multiple = True

    @property
    def channel(self) -> aiormq.abc.AbstractChannel:
        return self._channel

    @property
    def writer(self) -> FrameWriter:
        return self._writer

    def delivered(self, tag: int) -> None:
        if tag != self._expected:
            self._multiple = False
        self._expected = tag + 1
        self._open[tag] = False

    def ack(self, tag: int) -> None:
        if self._open.get(tag) is not False:
            return  # unknown or already settled
        self._open[tag] = True
        self._pending += 1
        if self._pending == 1:
            self._writer.before_flush(self._flush)

    def nack(self, tag: int, *, requeue: bool) -> None:
        if self._open.get(tag) is not False:
            return
        self._flush()
        del self._open[tag]
        bits = 2 if requeue else 0
        self._writer.write(self._channel, _settle_frame(self._number, _NACK, tag, bits))

    def _flush(self) -> None:
        if not self._pending:
            return
        self._pending = 0
        open_ = self._open
        frames: list[bytes] = []
        settled: list[int] = []
        run_end = 0
        in_run = self._multiple
        for tag, acked in open_.items():
            if not acked:
                in_run = False
            elif in_run:
                run_end = tag
                settled.append(tag)
            else:
                settled.append(tag)
                frames.append(_settle_frame(self._number, _ACK, tag, 0))
        if run_end:
            frames.insert(0, _settle_frame(self._number, _ACK, run_end, 1))
        for tag in settled:
            del open_[tag]
        self._writer.write(self._channel, b"".join(frames))
