"""Health: readiness from the broker, served over HTTP, and ``leveret status``, on RabbitMQ.

The broker is taken away from the app with a TCP proxy the test cuts (never by closing
connections on the shared node) and given back; readiness follows.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from contracts.orders import PlaceOrder
from framework import App, AppConfig, Context, Service
from framework.cli import main
from framework.health import readiness
from framework.health.http import ask_unix, serve_unix, worker_endpoints
from framework.health.supervised import WorkerView, supervisor_endpoints
from framework.store import store_from_url
from framework.transport.amqp import AmqpConfig, AmqpTransport
from tests.saga.conftest import eventually
from tests.support.fault_proxy import FaultProxy, ProxyMode

pytestmark = pytest.mark.rabbitmq

PROJECT = Path(__file__).resolve().parents[2]
WIRE = "orders.place_order"


def orders_service() -> Service:
    orders = Service("orders")

    @orders.command
    async def place_order(cmd: PlaceOrder, ctx: Context) -> None:
        return None

    return orders


@pytest.fixture
async def proxy(amqp_url: str) -> AsyncIterator[FaultProxy]:
    parts = urlsplit(amqp_url)
    proxy = FaultProxy(parts.hostname or "127.0.0.1", parts.port or 5672)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()


@pytest.fixture
async def app(amqp_url: str, proxy: FaultProxy, prefix: str, tmp_path: Path) -> AsyncIterator[App]:
    """An app with a store, consuming through the proxy."""
    transport = AmqpTransport(
        proxy.url_for(amqp_url),
        config=AmqpConfig(
            connect_timeout=5,
            declare_timeout=3,
            publish_timeout=5,
            heartbeat=5,
            reconnect_interval=0.2,
            consumer_verify_timeout=60,
        ),
    )
    app = App(
        [orders_service()],
        transport=transport,
        config=AppConfig(prefix=prefix),
        store=store_from_url(f"sqlite:///{tmp_path}/health.db"),
    )
    await app.start()
    try:
        yield app
    finally:
        await app.stop(grace=0)


async def test_readiness_follows_the_broker_connection(
    app: App, proxy: FaultProxy, tmp_path: Path
) -> None:
    """Ready while connected and consuming; not ready once the connection is cut; ready again
    after the client reconnected and its consumer is back — also over the HTTP endpoints."""
    queue = app.naming.handler_queue("orders", WIRE)
    socket_path = str(tmp_path / "w.sock")
    server = await serve_unix(socket_path, worker_endpoints(app, timeout=1.0))
    aggregate = supervisor_endpoints(
        lambda: [WorkerView(index=0, pid=os.getpid(), socket=socket_path)], timeout=3.0
    )
    try:
        report = await readiness(app, timeout=2.0)
        assert report.ready, report
        assert [c.name for c in report.checks] == ["broker", f"consumer {queue}", "store"]
        [status] = report.queues
        assert (status.queue, status.consumers, status.dead_letters) == (queue, 1, 0)
        code, body = await ask_unix(socket_path, "/ready", timeout=5)
        assert code == 200
        assert body["ready"] is True
        code, body = await aggregate["/ready"]()
        assert code == 200
        assert body["workers"][0]["state"] == "up"

        proxy.set_mode(ProxyMode.RESET)
        report = await readiness(app, timeout=1.0)
        assert not report.ready
        assert report.checks[0].name == "broker"
        assert not report.checks[0].ok
        code, body = await ask_unix(socket_path, "/ready", timeout=5)
        assert code == 503
        assert body["ready"] is False
        code, body = await aggregate["/ready"]()
        assert code == 503
        code, body = await aggregate["/live"]()
        assert code == 200  # the loop answers: alive, only not ready

        proxy.set_mode(ProxyMode.PASS)
        await eventually(lambda: _ready(app), what="readiness after the reconnect", timeout=30)
        code, _ = await ask_unix(socket_path, "/ready", timeout=5)
        assert code == 200
    finally:
        server.close()
        await server.wait_closed()


async def _ready(app: App) -> bool:
    return (await readiness(app, timeout=1.0)).ready


async def test_a_stuck_or_missing_worker_is_reported(tmp_path: Path) -> None:
    """A worker that accepts but never answers is not live; one not yet serving is not ready."""
    stuck_path = str(tmp_path / "stuck.sock")
    accepted: list[asyncio.StreamWriter] = []
    release = asyncio.Event()

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        await release.wait()
        writer.close()

    stuck = await asyncio.start_unix_server(never_answer, stuck_path)
    workers = [
        WorkerView(index=0, pid=os.getpid(), socket=stuck_path),
        WorkerView(index=1, pid=os.getpid(), socket=str(tmp_path / "absent.sock")),
        WorkerView(index=2, pid=None, socket=str(tmp_path / "down.sock")),
    ]
    endpoints = supervisor_endpoints(lambda: workers, timeout=0.5)
    try:
        code, body = await endpoints["/live"]()
        assert code == 503
        assert [w["state"] for w in body["workers"]] == ["stuck", "starting", "down"]
        workers.pop(0)
        code, body = await endpoints["/live"]()
        assert code == 200
        code, body = await endpoints["/ready"]()
        assert code == 503
        assert body["ready"] is False
    finally:
        release.set()
        stuck.close()
        await stuck.wait_closed()
        for writer in accepted:
            writer.close()
            await writer.wait_closed()


async def leveret(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


STATUS_MODULE = """
from contracts.orders import PlaceOrder
from framework import App, AppConfig, Context, Service

orders = Service("orders")


@orders.command
async def place_order(cmd: PlaceOrder, ctx: Context) -> None:
    return None


app = App([orders], url={url!r}, config=AppConfig(prefix={prefix!r}))
"""


@pytest.fixture
def status_module(
    tmp_path: Path, amqp_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> str:
    name = f"status_{prefix}"
    (tmp_path / f"{name}.py").write_text(STATUS_MODULE.format(url=amqp_url, prefix=prefix))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return f"{name}:app"


async def test_status_prints_readiness_depths_and_consumers(
    status_module: str, capsys: pytest.CaptureFixture[str], amqp_url: str, prefix: str
) -> None:
    """``leveret status`` is ready with a consumer per queue and shows depths from the broker;
    not ready (exit 1) with no consumer; exit 3 when the broker cannot be reached."""
    # The same service as the module's app, run here; the command loads its own copy.
    app = App([orders_service()], url=amqp_url, config=AppConfig(prefix=prefix))
    queue = app.naming.handler_queue("orders", WIRE)
    await app.start(consume=False)
    try:
        for i in range(3):
            await app.send(_order(f"o-{i}"))
        code, out, _ = await leveret(capsys, "status", status_module)
        assert code == 1
        assert "NOT READY" in out
        assert f"FAIL  consumer {queue}: 0 consumer(s), 3 ready message(s)" in out
        line = next(line for line in out.splitlines() if line.strip().startswith(queue))
        assert line.split()[-3:] == ["3", "0", "0"]
    finally:
        await app.stop(grace=0)

    app = App([orders_service()], url=amqp_url, config=AppConfig(prefix=prefix))
    await app.start()
    try:
        await eventually(lambda: _depth(app, queue), what="the three orders handled")
        code, out, _ = await leveret(capsys, "status", status_module, "--json")
        assert code == 0, out
        report = json.loads(out)
        assert report["ready"] is True
        assert report["queues"] == [
            {
                "queue": queue,
                "handler": "orders.place_order",
                "messages": 0,
                "consumers": 1,
                "dead_letters": 0,
            }
        ]
        code, out, _ = await leveret(capsys, "status", status_module)
        assert code == 0
        assert out.startswith(f"{status_module}: READY")
        assert "ok    broker: answered" in out
    finally:
        await app.stop(grace=0)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    code, _, err = await leveret(
        capsys,
        "status",
        status_module,
        "--amqp-url",
        f"amqp://guest:guest@127.0.0.1:{closed_port}/",
        "--timeout",
        "2",
    )
    assert code == 3
    assert "cannot reach the broker" in err


async def _depth(app: App, queue: str) -> bool:
    return await app.transport.queue_depth(queue) == 0


def _order(order_id: str) -> PlaceOrder:
    from contracts.orders import LineItem

    return PlaceOrder(
        order_id=order_id,
        customer_id="c",
        address="a",
        items=[LineItem(sku="apple", qty=1, unit_price_cents=5)],
    )


def _get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:
        return 0, None


@pytest.mark.slow
async def test_leveret_run_serves_aggregated_health(
    status_module: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``leveret run --workers 2 --health-port`` answers /live and /ready for both workers,
    and ``leveret status --health-url`` reports them; SIGTERM still drains to exit 0."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "PYTHONPATH": f"{tmp_path}{os.pathsep}{PROJECT}",
        "LEVERET_LOOP": "asyncio",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "framework",
        "run",
        status_module,
        "--workers",
        "2",
        "--health-port",
        str(port),
        "--health-host",
        "127.0.0.1",
        "--log-format",
        "json",
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        async def ready() -> Any:
            code, body = await asyncio.to_thread(_get, base + "/ready")
            return body if code == 200 else None

        body = await eventually(ready, what="both workers ready", timeout=40)
        assert [w["index"] for w in body["workers"]] == [0, 1]
        assert all(w["state"] == "up" and w["ready"] for w in body["workers"])
        assert len({w["pid"] for w in body["workers"]}) == 2
        code, live = await asyncio.to_thread(_get, base + "/live")
        assert code == 200
        assert live["live"] is True
        code, _ = await asyncio.to_thread(_get, base + "/nowhere")
        assert code == 404

        code, out, _ = await leveret(capsys, "status", status_module, "--health-url", base)
        assert code == 0, out
        assert "served /ready: ok" in out
        assert out.count("(pid ") == 4  # both workers, under /live and /ready
    finally:
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            returncode = await process.wait()
    assert returncode == 0
