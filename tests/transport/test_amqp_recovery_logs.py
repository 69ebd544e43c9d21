"""What a worker's log shows of lost connections: one WARNING and one INFO each, nothing more."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from framework.logging import configure_logging
from framework.transport.amqp import AmqpConfig, AmqpTransport
from framework.urls import redact
from tests.apps.slow_app import Work, build_app
from tests.support.broker import close_all_connections, rabbitmqctl_available, vhost_of
from tests.support.poll import until

pytestmark = pytest.mark.rabbitmq

WAIT = 30.0  # generous: a loaded 2-core machine slows reconnect handling a lot
LOSSES = 3
CONFIG = AmqpConfig(
    connect_timeout=5.0,
    publish_timeout=5.0,
    declare_timeout=5.0,
    heartbeat=5,
    reconnect_interval=0.2,
    consumer_verify_timeout=20.0,
)


@pytest.fixture
def worker_log(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """Everything logged, configured as a worker of ``leveret run`` does (JSON lines, info and
    up, other libraries' records from warning up), then undone."""
    monkeypatch.delenv("LEVERET_LOG_LEVEL", raising=False)
    monkeypatch.delenv("LEVERET_LOG_FORMAT", raising=False)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    stream = io.StringIO()
    configure_logging(json=True, stream=stream)
    # Not cached: a module's logger first used now would keep this configuration for good.
    structlog.configure(cache_logger_on_first_use=False)
    try:
        yield stream
    finally:
        structlog.reset_defaults()
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        root.setLevel(level)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    """The log's lines, each of which must be one JSON object (a bare traceback is not)."""
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def count(stream: io.StringIO, event: str) -> int:
    return sum(1 for line in lines(stream) if line["event"] == event)


@pytest.mark.timeout(180)
async def test_each_forced_close_logs_one_warning_and_one_info(
    amqp_url: str, prefix: str, worker_log: io.StringIO
) -> None:
    """Connections closed by the broker three times: three ``broker_connection_lost`` WARNINGs
    and three ``broker_reconnected`` INFOs saying what came back, and not one ERROR, traceback
    or client-library line."""
    if not rabbitmqctl_available():
        pytest.skip("rabbitmqctl is not available to force-close connections")
    app = build_app(url=amqp_url, prefix=prefix)
    transport = AmqpTransport(amqp_url, config=CONFIG)
    app.use_transport(transport)
    await app.start()
    failed = asyncio.ensure_future(transport.wait_failed())
    try:
        for loss in range(1, LOSSES + 1):
            await asyncio.to_thread(close_all_connections, vhost_of(amqp_url))
            await until(
                lambda n=loss: count(worker_log, "broker_reconnected") >= n,
                timeout=WAIT,
                what=f"recovery {loss}",
            )
        await app.send(Work(n=1))  # the connection works after it all
        assert not failed.done()
    finally:
        failed.cancel()
        await app.stop()
        await transport.close()

    logged = lines(worker_log)
    assert [e for e in logged if e["level"] in ("error", "critical")] == []
    assert "Traceback" not in worker_log.getvalue()
    assert [e for e in logged if "exception" in e] == []
    assert [e for e in logged if not e.get("logger", "").startswith(("framework", "leveret"))] == []
    warnings = [e["event"] for e in logged if e["level"] == "warning"]
    assert warnings == ["broker_connection_lost"] * LOSSES
    transport = [e for e in logged if e["logger"] == "framework.transport.amqp"]
    assert [(e["event"], e["level"]) for e in transport] == [
        ("broker_connection_lost", "warning"),
        ("broker_reconnected", "info"),
    ] * LOSSES
    for back in (e for e in transport if e["event"] == "broker_reconnected"):
        assert back["connection"] == "main"
        assert back["node"] == redact(amqp_url)
        assert back["consumers"] == 1
        assert back["queues"] == [app.pipelines[0].queue]
        assert back["channels"] >= 4  # publish, topology, requests, the consumer's
        assert 0 < back["outage"] < WAIT
        assert back["attempts"] >= 1
