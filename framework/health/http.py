"""Health over HTTP on asyncio streams alone: ``GET /live`` and ``GET /ready``.

``leveret run --health-port PORT`` serves both from the supervisor, which aggregates its
workers: each worker serves the same two paths on a Unix socket the supervisor names
(``LEVERET_HEALTH_SOCKET``), and the supervisor asks every worker per probe.

* ``/live`` is 200 while the supervisor's loop answers and every running worker answers its own
  ``/live`` within the deadline (answering at all is the proof: a worker whose loop is stuck
  cannot). A worker still starting (no socket yet) or waiting to be restarted does not make
  the service dead — the supervisor is handling it — but it is not ready.
* ``/ready`` is 200 when every worker is running and ready (``framework.health.checks``).

Both answer JSON with the details, 503 when false. Nothing else is served (404, 405).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec
import structlog

from framework.deprecation import renamed
from framework.health.checks import readiness

if TYPE_CHECKING:
    from framework.app import App

__all__ = [
    "HEALTH_SOCKET_ENV",
    "HealthResponse",
    "ask_unix",
    "serve_tcp",
    "serve_unix",
    "worker_endpoints",
]

HEALTH_SOCKET_ENV = "LEVERET_HEALTH_SOCKET"
_READ_TIMEOUT = 5.0
_MAX_REQUEST = 8192
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}
_log = structlog.get_logger("leveret.health")

# (status, JSON-able body) for a path.
HealthResponse = tuple[int, dict[str, Any]]
Endpoint = Callable[[], Awaitable[HealthResponse]]
# ``Answer`` is the query reply of ``framework.bus``; here it was this module's former name.
__getattr__ = renamed(__name__, {"Answer": ("HealthResponse", HealthResponse)})


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str] | None:
    """Method and path of one request; headers are read and ignored (no body expected)."""
    async with asyncio.timeout(_READ_TIMEOUT):
        line = await reader.readuntil(b"\r\n")
        total = len(line)
        while True:
            header = await reader.readuntil(b"\r\n")
            total += len(header)
            if header == b"\r\n" or total > _MAX_REQUEST:
                break
    parts = line.decode("latin-1").split()
    if len(parts) != 3:
        return None
    return parts[0], parts[1].split("?", 1)[0]


def _handler(
    endpoints: dict[str, Endpoint],
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                request = await _read_request(reader)
            except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                return
            if request is None:
                status, body = 404, {"error": "not an HTTP request line"}
            elif request[1] not in endpoints:
                status, body = 404, {"error": f"no {request[1]}: try {' or '.join(endpoints)}"}
            elif request[0] not in ("GET", "HEAD"):
                status, body = 405, {"error": "use GET"}
            else:
                status, body = await endpoints[request[1]]()
            payload = msgspec.json.encode(body)
            head = (
                f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
                "Content-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n"
                "Cache-Control: no-store\r\n"
                "Connection: close\r\n\r\n"
            ).encode()
            writer.write(head if request is not None and request[0] == "HEAD" else head + payload)
            async with asyncio.timeout(_READ_TIMEOUT):
                await writer.drain()
        except Exception as exc:
            _log.warning("health_request_failed", error=repr(exc))
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(_READ_TIMEOUT):
                    await writer.wait_closed()

    return handle


def worker_endpoints(app: App, *, timeout: float) -> dict[str, Endpoint]:
    """``/live`` and ``/ready`` of one worker serving ``app``."""

    async def live() -> HealthResponse:
        return 200, {"live": True, "pid": os.getpid()}

    async def ready() -> HealthResponse:
        if not app.started:
            return 503, {"ready": False, "pid": os.getpid(), "reason": "the app is not started"}
        report = await readiness(app, timeout=timeout)
        body = {"pid": os.getpid(), **msgspec.to_builtins(report)}
        return (200 if report.ready else 503), body

    return {"/live": live, "/ready": ready}


async def serve_tcp(host: str, port: int, endpoints: dict[str, Endpoint]) -> asyncio.Server:
    """Serve ``endpoints`` on ``host:port``."""
    return await asyncio.start_server(_handler(endpoints), host, port)


async def serve_unix(path: str, endpoints: dict[str, Endpoint]) -> asyncio.Server:
    """Serve ``endpoints`` on the Unix socket ``path`` (a stale socket file is replaced)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    return await asyncio.start_unix_server(_handler(endpoints), path)


async def ask_unix(path: str, target: str, *, timeout: float) -> HealthResponse:
    """``GET target`` on the Unix socket ``path``: the status and the JSON body.

    Raises:
        OSError: nothing listens there.
        TimeoutError: no full answer within ``timeout``.
        ValueError: the answer is not HTTP with a JSON body.
    """
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_unix_connection(path)
        try:
            writer.write(
                f"GET {target} HTTP/1.1\r\nHost: worker\r\nConnection: close\r\n\r\n".encode()
            )
            await writer.drain()
            raw = await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split()
    if len(status_line) < 2 or not status_line[1].isdigit():
        raise ValueError(f"not an HTTP answer: {raw[:80]!r}")
    try:
        decoded = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise ValueError(f"not a JSON body: {exc}") from None
    return int(status_line[1]), decoded if isinstance(decoded, dict) else {"body": decoded}
