"""The TCP fault proxy against a local echo server: each mode does what it says."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from tests.support.fault_proxy import FaultProxy, ProxyMode, fault_proxy


class Echo:
    """A server that echoes every byte and remembers what it received."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.got = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(1024):
                self.received += data
                self.got.set()
                writer.write(data)
                await writer.drain()
        writer.close()


@pytest.fixture
async def echo() -> AsyncIterator[tuple[Echo, int]]:
    server_state = Echo()
    server = await asyncio.start_server(server_state.handle, "127.0.0.1", 0)
    yield server_state, server.sockets[0].getsockname()[1]
    server.close()


@pytest.fixture
async def proxy(echo: tuple[Echo, int]) -> AsyncIterator[FaultProxy]:
    async with fault_proxy("127.0.0.1", echo[1]) as p:
        yield p


async def connect(proxy: FaultProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", proxy.port), 5)


async def linked(proxy: FaultProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection whose upstream side is up (one byte went there and back)."""
    reader, writer = await connect(proxy)
    writer.write(b".")
    assert await asyncio.wait_for(reader.readexactly(1), 5) == b"."
    return reader, writer


async def roundtrip(proxy: FaultProxy, payload: bytes) -> bytes:
    reader, writer = await connect(proxy)
    writer.write(payload)
    data = await asyncio.wait_for(reader.readexactly(len(payload)), 5)
    writer.close()
    return data


async def test_pass_forwards_both_directions(proxy: FaultProxy) -> None:
    """In PASS mode bytes reach the server and its answer comes back."""
    assert await roundtrip(proxy, b"hello") == b"hello"


async def test_latency_delays_without_reordering(proxy: FaultProxy) -> None:
    """Added latency holds each chunk back at least that long and keeps the byte order."""
    proxy.set_mode(ProxyMode.PASS, latency=0.2)
    reader, writer = await connect(proxy)
    started = time.monotonic()
    for part in (b"a", b"b", b"c"):
        writer.write(part)
        await writer.drain()
    data = await asyncio.wait_for(reader.readexactly(3), 5)
    assert data == b"abc"
    assert time.monotonic() - started >= 0.2  # a lower bound only: the box may be slower
    writer.close()


async def test_blackhole_swallows_and_keeps_the_socket_open(
    proxy: FaultProxy, echo: tuple[Echo, int]
) -> None:
    """Blackholed bytes never reach the server, no answer comes, and no close either."""
    reader, writer = await linked(proxy)
    proxy.set_mode(ProxyMode.BLACKHOLE)
    writer.write(b"lost")
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(reader.read(1), 0.5)
    assert bytes(echo[0].received) == b"."
    assert not reader.at_eof()
    proxy.set_mode(ProxyMode.PASS)  # bytes were lost: the connection cannot carry on
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(1), 5)
    writer.close()
    assert await roundtrip(proxy, b"y") == b"y"


async def test_blackhole_that_swallowed_nothing_keeps_the_connection(proxy: FaultProxy) -> None:
    """A connection idle through a blackhole lost nothing and carries on after it."""
    reader, writer = await linked(proxy)
    proxy.set_mode(ProxyMode.BLACKHOLE)
    proxy.set_mode(ProxyMode.PASS)
    writer.write(b"y")
    assert await asyncio.wait_for(reader.readexactly(1), 5) == b"y"
    writer.close()


async def test_new_connection_during_blackhole_hangs_then_is_reset(proxy: FaultProxy) -> None:
    """A connection made while blackholed gets no answer, and is reset when the fault ends."""
    proxy.set_mode(ProxyMode.BLACKHOLE)
    reader, writer = await connect(proxy)
    writer.write(b"hi")
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(reader.read(1), 0.5)
    proxy.set_mode(ProxyMode.PASS)
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(1), 5)
    writer.close()


async def test_drop_server_to_client_delivers_requests_but_not_answers(
    proxy: FaultProxy, echo: tuple[Echo, int]
) -> None:
    """With the server-to-client direction dropped, the server gets the bytes, the client
    gets nothing back."""
    proxy.set_mode(ProxyMode.DROP_SERVER_TO_CLIENT)
    reader, writer = await connect(proxy)
    writer.write(b"publish")
    await asyncio.wait_for(echo[0].got.wait(), 5)
    assert bytes(echo[0].received) == b"publish"
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(reader.read(1), 0.5)
    proxy.set_mode(ProxyMode.PASS)  # the answer was dropped: the stream has a hole, reset it
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(1), 5)
    writer.close()


async def test_reset_cuts_open_connections_and_refuses_new_ones(proxy: FaultProxy) -> None:
    """RESET resets open connections at once and every new one as it arrives; PASS heals."""
    reader, writer = await linked(proxy)
    assert proxy.connections == 1
    proxy.set_mode(ProxyMode.RESET)
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(1), 5)
    writer.close()
    reader, writer = await connect(proxy)
    writer.write(b"z")
    with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
        await asyncio.wait_for(reader.readexactly(1), 5)
    writer.close()
    proxy.set_mode(ProxyMode.PASS)
    assert await roundtrip(proxy, b"back") == b"back"


async def test_reset_once_keeps_the_mode(proxy: FaultProxy) -> None:
    """``reset()`` drops the connections open now; the next one passes again."""
    reader, writer = await linked(proxy)
    proxy.reset()
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(1), 5)
    writer.close()
    assert proxy.connections == 0
    assert await roundtrip(proxy, b"again") == b"again"


async def test_server_down_resets_the_client() -> None:
    """With nothing listening upstream, a client through the proxy is reset, not left hanging."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    async with fault_proxy("127.0.0.1", dead_port) as p:
        reader, writer = await connect(p)
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
            await asyncio.wait_for(reader.readexactly(1), 10)
        writer.close()


def test_url_for_points_at_the_proxy_and_keeps_credentials() -> None:
    """``url_for`` swaps host and port and keeps user, password, path and query."""
    p = FaultProxy("127.0.0.1", 5672)
    p._server = type(
        "S", (), {"sockets": [type("K", (), {"getsockname": lambda self: ("h", 7)})()]}
    )()  # type: ignore[assignment]
    assert (
        p.url_for("amqp://u:pw@rabbit:5672/v?heartbeat=2")
        == "amqp://u:pw@127.0.0.1:7/v?heartbeat=2"
    )
    assert (
        p.url_for("postgresql://postgres@db:5432/test") == "postgresql://postgres@127.0.0.1:7/test"
    )
