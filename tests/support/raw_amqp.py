"""A minimal AMQP 0-9-1 publisher on pamqp frames, for messages no Python client will send.

aiormq fills in a ``message_id`` on every publish, so a message *without* one — which a Go, Java
or shell client sends happily — can only be produced below it. This speaks just enough of the
protocol to open a channel, publish one message and close.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from urllib.parse import unquote, urlsplit

from pamqp import commands, frame, header
from pamqp.body import ContentBody
from pamqp.common import FieldTable

__all__ = ["publish_raw"]


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


async def publish_raw(
    url: str,
    *,
    exchange: str,
    routing_key: str,
    body: bytes,
    properties: commands.Basic.Properties,
    patch_header: Callable[[bytes], bytes] | None = None,
) -> None:
    """Publish one message exactly as given (no property is added) and close cleanly.

    ``patch_header`` rewrites the encoded content-header frame before it is sent, for
    properties no encoder produces (a ``message_id`` that is not UTF-8, say).
    """
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
            writer.write(
                frame.marshal(commands.Basic.Publish(exchange=exchange, routing_key=routing_key), 1)
            )
            content_header = frame.marshal(header.ContentHeader(0, len(body), properties), 1)
            writer.write(patch_header(content_header) if patch_header else content_header)
            writer.write(frame.marshal(ContentBody(body), 1))
            # The broker handles frames in order: once the close is answered, the publish is in.
            writer.write(frame.marshal(commands.Connection.Close(200, "bye", 0, 0), 0))
            await _expect(reader, buffer, commands.Connection.CloseOk)
    finally:
        writer.close()
        await writer.wait_closed()
