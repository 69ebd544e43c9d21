"""An asyncio TCP proxy that injects network faults between clients and a server.

No toxiproxy here (RABBITMQ.md), and iptables needs privileges: this proxy sits between the
workers and RabbitMQ (or PostgreSQL) and, per the mode it is switched to at any time,

* ``PASS``: forwards both directions (after ``latency`` seconds, order kept);
* ``BLACKHOLE``: swallows both directions and leaves every socket open — a hung peer, which only
  a heartbeat or a deadline notices;
* ``DROP_SERVER_TO_CLIENT``: forwards what clients send, swallows what the server answers —
  publishes arrive, their confirms never do;
* ``RESET``: answers every connection, old and new, with a TCP reset.

``reset()`` resets the connections open now and leaves the mode alone (a cut cable that is
plugged back in). When a fault ends, every connection that lost bytes to it is reset: TCP never
delivers a stream with a hole in it, so a connection that swallowed frames must not carry on (it
would leave deliveries the broker counts as sent, and the client never saw, unacked for good).
The proxy runs in the caller's event loop; clients in other processes connect to ``port``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import socket
import struct
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

__all__ = ["FaultProxy", "ProxyMode", "fault_proxy"]

_CHUNK = 65536


class ProxyMode(enum.Enum):
    PASS = "pass"
    BLACKHOLE = "blackhole"
    DROP_SERVER_TO_CLIENT = "drop_server_to_client"
    RESET = "reset"


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with RST, not FIN: SO_LINGER 0 makes the kernel drop the socket at once."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Link:
    """One proxied connection: a client socket, its upstream socket, two pumps."""

    def __init__(
        self,
        proxy: FaultProxy,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        server: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.proxy = proxy
        self.client = client
        self.server = server
        self.damaged = False
        self.tasks = [
            asyncio.create_task(self._pump(client[0], server[1], upstream=True)),
            asyncio.create_task(self._pump(server[0], client[1], upstream=False)),
        ]

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, upstream: bool
    ) -> None:
        # Chunks wait in a queue until their due time, so latency delays without reordering.
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        sender = asyncio.create_task(self._send(queue, writer))
        try:
            while True:
                data = await reader.read(_CHUNK)
                if not data:
                    break
                mode = self.proxy.mode
                if mode is ProxyMode.BLACKHOLE or (
                    mode is ProxyMode.DROP_SERVER_TO_CLIENT and not upstream
                ):
                    self.damaged = True
                    continue
                queue.put_nowait((time.monotonic() + self.proxy.latency, data))
            queue.put_nowait((0.0, b""))  # end of stream: half-close after what is queued
            await sender
        except (ConnectionError, OSError):
            pass
        finally:
            sender.cancel()
            self.close()

    async def _send(
        self, queue: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter
    ) -> None:
        while True:
            due, data = await queue.get()
            if not data:
                with contextlib.suppress(OSError):
                    writer.write_eof()
                return
            pause = due - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)
            writer.write(data)
            await writer.drain()

    def close(self) -> None:
        for _, writer in (self.client, self.server):
            writer.close()
        self.proxy._links.discard(self)

    def reset(self) -> None:
        for _, writer in (self.client, self.server):
            _abort(writer)
        for task in self.tasks:
            task.cancel()
        self.proxy._links.discard(self)


class FaultProxy:
    """Forwards ``127.0.0.1:port`` to ``upstream_host:upstream_port`` with switchable faults.

    Args:
        upstream_host: the server's host.
        upstream_port: the server's port.
        connect_timeout: deadline for connecting upstream; past it the client is reset.
    """

    def __init__(
        self, upstream_host: str, upstream_port: int, *, connect_timeout: float = 5.0
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.connect_timeout = connect_timeout
        self.mode = ProxyMode.PASS
        self.latency = 0.0
        self.accepted = 0
        self._links: set[_Link] = set()
        self._held: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "start() the proxy first"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def connections(self) -> int:
        """Connections open through the proxy right now (held blackholed ones included)."""
        return len(self._links) + len(self._held)

    def url_for(self, url: str) -> str:
        """``url`` (amqp://, postgresql://) pointed at the proxy instead of the server."""
        parts = urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@127.0.0.1:{self.port}" if userinfo else f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def set_mode(self, mode: ProxyMode, *, latency: float | None = None) -> None:
        """Switch the fault; ``RESET`` also resets every open connection at once."""
        self.mode = mode
        if latency is not None:
            self.latency = latency
        if mode is ProxyMode.RESET:
            self.reset()
        elif mode is ProxyMode.PASS:
            for writer in list(self._held):  # held while blackholed: never reached the server
                _abort(writer)
            self._held.clear()
            for link in [link for link in self._links if link.damaged]:
                link.reset()

    def reset(self) -> None:
        """Reset every connection open now (clients see ECONNRESET); the mode is unchanged."""
        for link in list(self._links):
            link.reset()
        for writer in list(self._held):
            _abort(writer)
        self._held.clear()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self.reset()
        if self._server is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 5.0)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.mode is ProxyMode.RESET:
            _abort(writer)
            return
        if self.mode is ProxyMode.BLACKHOLE:
            # Accepted but never connected upstream: the client's handshake hangs.
            self._held.add(writer)
            with contextlib.suppress(ConnectionError, OSError):
                while await reader.read(_CHUNK):
                    pass
            self._held.discard(writer)
            writer.close()
            return
        try:
            server = await asyncio.wait_for(
                asyncio.open_connection(*self.upstream), self.connect_timeout
            )
        except (TimeoutError, OSError):
            _abort(writer)  # the server is down: the client sees what a dead server gives
            return
        link = _Link(self, (reader, writer), server)
        self._links.add(link)
        await asyncio.gather(*link.tasks, return_exceptions=True)


@contextlib.asynccontextmanager
async def fault_proxy(upstream_host: str, upstream_port: int) -> AsyncIterator[FaultProxy]:
    """A started proxy, stopped (every connection reset) on exit."""
    proxy = FaultProxy(upstream_host, upstream_port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()
