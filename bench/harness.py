"""Orchestrator side: start worker processes, talk to them, and feed the broker.

``WorkerProcess`` runs one contender in a fresh interpreter (``bench.worker``) and reads its
``BENCH`` events. ``Broker`` is where measurements run (a node, or a cluster and its queue type)
and the orchestrator's own aiormq connection to it: it declares and deletes the queues of a
measurement, fills input queues before a throughput run and offers load at a fixed rate for
latency runs. Its work is never part of a measurement.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import aiormq
from pamqp.commands import Basic

from bench.workload import ORDER_TYPE, SENT_HEADER, order_body
from framework.urls import redact, split_urls

ROOT = Path(__file__).resolve().parent.parent


class SectionFailed(RuntimeError):
    """A section could not finish; the others still run."""


class WorkerFailed(SectionFailed):
    """A worker exited, timed out or reported something unexpected."""


class WorkerProcess:
    """One contender in its own process; see ``bench.worker`` for the protocol."""

    def __init__(self, proc: asyncio.subprocess.Process, label: str, log: IO[str]) -> None:
        self._proc = proc
        self._log = log
        self.label = label
        self.pid = proc.pid
        # Every queue and exchange the worker said it declares (its ``declared`` events).
        self.declared_queues: list[str] = []
        self.declared_exchanges: list[str] = []

    @classmethod
    async def spawn(
        cls, section: str, contender: str, params: dict[str, Any], *, loop: str, log: IO[str]
    ) -> WorkerProcess:
        env = dict(os.environ)
        # This tree first, so a checkout runs its own framework even next to an installed one.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        env["BENCH_LOOP"] = loop
        env.setdefault("LEVERET_LOG_LEVEL", "warning")
        command = [sys.executable]
        profile = os.environ.get("BENCH_PROFILE")  # a directory: py-spy records each worker
        if profile:
            out = Path(profile) / f"{section}-{contender}-{params.get('tag', '')}.txt"
            command = ["py-spy", "record", "--format", "raw", "-r", "250", "-o", str(out), "--"]
            command.append(sys.executable)
        proc = await asyncio.create_subprocess_exec(
            *command,
            "-m",
            "bench.worker",
            section,
            contender,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
            env=env,
            cwd=str(ROOT),
            limit=1 << 20,
        )
        # On stdin, not on the command line: the params hold the broker URL and its password.
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(params).encode() + b"\n")
        await proc.stdin.drain()
        return cls(proc, f"{section}/{contender}", log)

    async def events(self, timeout: float) -> AsyncIterator[dict[str, Any]]:
        """The worker's events, until it exits; each must come within ``timeout`` seconds."""
        assert self._proc.stdout is not None
        while True:
            try:
                line = await asyncio.wait_for(self._proc.stdout.readline(), timeout)
            except TimeoutError:
                raise WorkerFailed(f"{self.label}: no event for {timeout:g}s") from None
            if not line:
                code = await self._proc.wait()
                raise WorkerFailed(f"{self.label}: exited with code {code} (see the bench log)")
            event = self._read(line)
            if event is not None:
                yield event

    def _read(self, line: bytes) -> dict[str, Any] | None:
        """The event on one line of the worker's stdout (None for library output)."""
        text = line.decode(errors="replace")
        if not text.startswith("BENCH "):
            return None
        self._log.write(text)
        event: dict[str, Any] = json.loads(text[6:])
        if event["event"] == "declared":
            self.declared_queues += event["queues"]
            self.declared_exchanges += event["exchanges"]
        return event

    async def expect(self, name: str, timeout: float) -> dict[str, Any]:
        async for event in self.events(timeout):
            if event["event"] == name:
                return event
        raise AssertionError("unreachable")

    async def go(self) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.write(b"go\n")
        await self._proc.stdin.drain()

    async def finish(self, timeout: float = 30.0) -> int:
        """Wait for the worker to exit (killed after ``timeout``), reading what it still says:
        a queue it declares while stopping is reported after its result."""
        try:
            async with asyncio.timeout(timeout):
                await self._drain()
                return await self._proc.wait()
        except TimeoutError:
            self.kill()
            await self._drain()
            return await self._proc.wait()

    async def _drain(self) -> None:
        assert self._proc.stdout is not None
        while line := await self._proc.stdout.readline():
            self._read(line)

    def kill(self) -> None:
        if self._proc.returncode is None:
            self._proc.kill()


def _properties(message_id: str, headers: dict[str, Any]) -> Basic.Properties:
    return Basic.Properties(
        content_type="application/json",
        delivery_mode=2,
        message_id=message_id,
        timestamp=datetime.now(UTC),
        message_type=ORDER_TYPE,
        headers=headers,
    )


class Broker:
    """Where measurements run, and the orchestrator's connection to it: topology, fill, load.

    Args:
        url: the broker's AMQP URL, or a cluster's node URLs separated by commas; the workers
            get all of them, the orchestrator connects to the first.
        queue_type: ``"classic"`` or ``"quorum"``: the type of the queues the orchestrator
            declares, and the ``AppConfig.queue_type`` of the leveret workers.
    """

    def __init__(self, url: str, *, queue_type: str = "classic") -> None:
        self.url = url
        self.queue_type = queue_type
        self._conn: aiormq.abc.AbstractConnection | None = None
        self._admin: aiormq.abc.AbstractChannel | None = None
        self._publish: aiormq.abc.AbstractChannel | None = None

    @property
    def safe_url(self) -> str:
        """``url`` with its passwords masked, for logs."""
        return ",".join(redact(u) for u in split_urls(self.url))

    def worker_params(self) -> dict[str, Any]:
        """What a worker process needs to know of this broker (see ``bench.worker.Params``)."""
        return {"url": self.url, "queue_type": self.queue_type}

    async def __aenter__(self) -> Broker:
        self._conn = await aiormq.connect(split_urls(self.url)[0])
        self._admin = await self._conn.channel(publisher_confirms=False)
        self._publish = await self._conn.channel(publisher_confirms=True)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._conn is not None:
            await self._conn.close()

    @property
    def server_version(self) -> str:
        assert self._conn is not None
        props = self._conn.server_properties or {}
        version = props.get("version", "?")
        return version.decode() if isinstance(version, bytes | bytearray) else str(version)

    async def _channel(self) -> aiormq.abc.AbstractChannel:
        """The admin channel; reopened if a delete or declare error closed it."""
        assert self._conn is not None
        if self._admin is None or self._admin.is_closed:
            self._admin = await self._conn.channel(publisher_confirms=False)
        return self._admin

    async def declare(
        self,
        exchange: str,
        queues: dict[str, str],
        *,
        arguments: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        """A durable direct exchange and durable queues (of ``queue_type``) bound to it by
        routing key."""
        ch = await self._channel()
        await ch.exchange_declare(exchange, exchange_type="direct", durable=True)
        for queue, key in queues.items():
            args = dict((arguments or {}).get(queue) or {})
            if self.queue_type != "classic":
                args["x-queue-type"] = self.queue_type
            await ch.queue_declare(queue, durable=True, arguments=args or None)
            await ch.queue_bind(queue, exchange, routing_key=key)

    async def delete(self, *, queues: list[str], exchanges: list[str]) -> None:
        """Delete the queues, then the exchanges; one that is not there is skipped."""
        for queue in dict.fromkeys(queues):
            ch = await self._channel()
            with contextlib.suppress(aiormq.exceptions.AMQPError):
                # A quorum queue closes the connection (540 NOT_IMPLEMENTED) on if-unused or
                # if-empty: both off, said out loud.
                await ch.queue_delete(queue, if_unused=False, if_empty=False)
        for exchange in dict.fromkeys(exchanges):
            ch = await self._channel()
            with contextlib.suppress(aiormq.exceptions.AMQPError):
                await ch.exchange_delete(exchange)

    async def depth(self, queue: str) -> int:
        ch = await self._channel()
        ok = await ch.queue_declare(queue, passive=True)
        return ok.message_count or 0

    async def fill(self, exchange: str, n: int, *, window: int = 1000, start: int = 0) -> None:
        """Publish n orders with pipelined confirms (``window`` in flight)."""
        ch = self._publish
        assert ch is not None
        headers = {"leveret-version": 1}
        for first in range(start, start + n, window):
            batch = [
                ch.basic_publish(
                    order_body(i),
                    exchange=exchange,
                    routing_key=ORDER_TYPE,
                    mandatory=True,
                    properties=_properties(uuid.uuid4().hex, headers),
                )
                for i in range(first, min(first + window, start + n))
            ]
            await asyncio.gather(*batch)

    async def offer(self, exchange: str, n: int, rate: float) -> float:
        """Publish n orders at ``rate`` per second (open loop), each stamped with its send time.

        Returns the rate actually offered.
        """
        ch = self._publish
        assert ch is not None
        loop = asyncio.get_running_loop()
        pending: set[asyncio.Future[Any]] = set()
        started = loop.time()
        for i in range(n):
            delay = started + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            headers = {"leveret-version": 1, SENT_HEADER: time.time_ns()}
            future = asyncio.ensure_future(
                ch.basic_publish(
                    order_body(i),
                    exchange=exchange,
                    routing_key=ORDER_TYPE,
                    mandatory=True,
                    properties=_properties(uuid.uuid4().hex, headers),
                )
            )
            pending.add(future)
            future.add_done_callback(pending.discard)
        offered = n / max(loop.time() - started, 1e-9)
        if pending:
            await asyncio.gather(*pending)
        return offered
