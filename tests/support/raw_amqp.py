"""A minimal AMQP 0-9-1 publisher on pamqp frames, for messages no Python client will send.

aiormq fills in a ``message_id`` on every publish, so a message *without* one — which a Go, Java
or shell client sends happily — can only be produced below it. This speaks just enough of the
protocol to open a channel, publish one message and close.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator, Callable
from urllib.parse import unquote, urlsplit

from pamqp import commands, frame, header
from pamqp.body import ContentBody
from pamqp.common import FieldTable

__all__ = ["RawChannel", "publish_raw", "raw_channel"]


async def _read_frame(reader: asyncio.StreamReader, buffer: bytearray) -> object:
    while True:
        if buffer:
            try:
                consumed, _channel, value = frame.unmarshal(bytes(buffer))
            except Exception:  # pamqp signals "need more bytes" by raising
                pass
            else:
                del buffer[:consumed]
                return value
        chunk = await reader.read(65536)
        if not chunk:
            raise ConnectionError("broker closed the connection")
        buffer.extend(chunk)


async def _expect(reader: asyncio.StreamReader, buffer: bytearray, kind: type) -> object:
    value = await _read_frame(reader, buffer)
    if not isinstance(value, kind):
        raise ConnectionError(f"expected {kind.__name__}, got {value!r}")
    return value


class RawChannel:
    """Channel 1 of an open raw connection: publishes frames exactly as given."""

    def __init__(self, writer: asyncio.StreamWriter, frame_max: int) -> None:
        self._writer = writer
        self._frame_max = frame_max

    def publish(
        self,
        *,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: commands.Basic.Properties | None = None,
        raw_properties: bytes | None = None,
        patch_header: Callable[[bytes], bytes] | None = None,
    ) -> None:
        """Queue one publish: ``raw_properties`` (Basic.Properties bytes, see amqp_fields)
        replaces ``properties`` for what no encoder produces."""
        self._writer.write(
            frame.marshal(commands.Basic.Publish(exchange=exchange, routing_key=routing_key), 1)
        )
        if raw_properties is not None:
            payload = struct.pack(">HHQ", 60, 0, len(body)) + raw_properties
            content_header = struct.pack(">BHI", 2, 1, len(payload)) + payload + b"\xce"
        else:
            content_header = frame.marshal(
                header.ContentHeader(0, len(body), properties or commands.Basic.Properties()), 1
            )
        self._writer.write(patch_header(content_header) if patch_header else content_header)
        step = self._frame_max - 8
        for start in range(0, len(body), step):
            self._writer.write(frame.marshal(ContentBody(body[start : start + step]), 1))

    async def drain(self) -> None:
        await self._writer.drain()


@contextlib.asynccontextmanager
async def raw_channel(url: str) -> AsyncIterator[RawChannel]:
    """A raw connection with channel 1 open; on exit it closes cleanly, which the broker
    answers only once it has handled every publish before the close."""
    parts = urlsplit(url)
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 5672)
    buffer = bytearray()
    try:
        async with asyncio.timeout(10):
            writer.write(frame.marshal(header.ProtocolHeader(), 0))
            await _expect(reader, buffer, commands.Connection.Start)
            login = f"\0{unquote(parts.username or 'guest')}\0{unquote(parts.password or 'guest')}"
            client: FieldTable = {"product": "leveret-tests"}
            writer.write(
                frame.marshal(
                    commands.Connection.StartOk(
                        client_properties=client, mechanism="PLAIN", response=login, locale="en_US"
                    ),
                    0,
                )
            )
            tune = await _expect(reader, buffer, commands.Connection.Tune)
            assert isinstance(tune, commands.Connection.Tune)
            writer.write(
                frame.marshal(commands.Connection.TuneOk(tune.channel_max, tune.frame_max, 0), 0)
            )
            writer.write(frame.marshal(commands.Connection.Open(virtual_host=vhost), 0))
            await _expect(reader, buffer, commands.Connection.OpenOk)
            writer.write(frame.marshal(commands.Channel.Open(), 1))
            await _expect(reader, buffer, commands.Channel.OpenOk)
        yield RawChannel(writer, tune.frame_max or 131072)
        async with asyncio.timeout(60):
            writer.write(frame.marshal(commands.Connection.Close(200, "bye", 0, 0), 0))
            await _expect(reader, buffer, commands.Connection.CloseOk)
    finally:
        writer.close()
        await writer.wait_closed()


async def publish_raw(
    url: str,
    *,
    exchange: str,
    routing_key: str,
    body: bytes,
    properties: commands.Basic.Properties | None = None,
    raw_properties: bytes | None = None,
    patch_header: Callable[[bytes], bytes] | None = None,
) -> None:
    """Publish one message exactly as given (no property is added) and close cleanly.

    ``patch_header`` rewrites the encoded content-header frame before it is sent, for
    properties no encoder produces (a ``message_id`` that is not UTF-8, say); ``raw_properties``
    gives the properties' bytes outright.
    """
    async with raw_channel(url) as channel:
        channel.publish(
            exchange=exchange,
            routing_key=routing_key,
            body=body,
            properties=properties,
            raw_properties=raw_properties,
            patch_header=patch_header,
        )
