"""``python -m bench`` leaves no queue or exchange on the broker, whatever its sections declare."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.support.broker import (
    DEFAULT_AMQP_URL,
    RabbitmqctlError,
    broker_reachable,
    rabbitmqctl,
    vhost_of,
    with_vhost,
)

ROOT = Path(__file__).resolve().parent.parent

# Each section's clean-up with the contenders whose queues differ: leveret names its own,
# FastStream's query contender has a reply queue, the saga declares delay tiers as it goes.
# latency runs the pipeline's code, so pipeline stands for both. Two runs side by side, to
# take half the time; their names never meet (every measurement has a random tag).
RUNS = ("query,saga", "pipeline,publish,breaker,memory")
CONTENDERS = "leveret,faststream,faststream-request,sqlite"
BENCH = (sys.executable, "-m", "bench", "--smoke")


@pytest.fixture
def bench_vhost() -> Iterator[str]:
    """A vhost of this test's own, deleted afterwards: the URL of the broker on it."""
    base = os.environ.get("LEVERET_AMQP_URL", DEFAULT_AMQP_URL)
    if not broker_reachable(base):
        pytest.skip("RabbitMQ is not reachable; set LEVERET_AMQP_URL")
    if urlsplit(base).hostname not in ("127.0.0.1", "localhost", "::1"):
        pytest.skip("rabbitmqctl lists a local node's queues; the broker is elsewhere")
    vhost = f"leveret-bench-{secrets.token_hex(4)}"
    try:
        rabbitmqctl("add_vhost", vhost)
        user = urlsplit(base).username or "guest"
        rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
    except RabbitmqctlError as exc:
        with contextlib.suppress(RabbitmqctlError):
            rabbitmqctl("delete_vhost", vhost)
        pytest.skip(f"cannot make a vhost of the test's own: {exc}")
    try:
        yield with_vhost(base, vhost)
    finally:
        with contextlib.suppress(RabbitmqctlError):
            rabbitmqctl("delete_vhost", vhost)


def on_broker(vhost: str) -> set[str]:
    """Every queue and every exchange but the broker's own (``amq.*``, the default) in
    ``vhost``, as ``rabbitmqctl`` lists them."""
    listings = [
        ("list_queues", "-p", vhost, "-q", "--no-table-headers", "name"),
        ("list_exchanges", "-p", vhost, "-q", "--no-table-headers", "name"),
    ]
    with ThreadPoolExecutor(2) as pool:  # side by side: each call takes a second or two
        queues, exchanges = pool.map(lambda args: rabbitmqctl(*args), listings)
    names = {line.strip() for line in (queues + exchanges).splitlines()}
    return {name for name in names if name and not name.startswith("amq.")}


@pytest.mark.slow
@pytest.mark.rabbitmq
@pytest.mark.timeout(120)
def test_every_section_leaves_nothing_on_the_broker(bench_vhost: str, tmp_path: Path) -> None:
    """A smoke run of every broker section, leveret and FastStream contenders and the saga
    included, exits 0 and leaves its vhost without a queue or an exchange of its own."""
    env = {**os.environ, "LEVERET_AMQP_URL": bench_vhost, "TMPDIR": str(tmp_path)}
    outs = [tmp_path / f"run{i}.json" for i in range(len(RUNS))]
    procs = [
        subprocess.Popen(
            [*BENCH, "--only", sections, "--contenders", CONTENDERS, "--json", str(out)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for sections, out in zip(RUNS, outs, strict=True)
    ]
    try:
        outputs = [proc.communicate(timeout=100)[0] for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    measured: set[tuple[str, str]] = set()
    for proc, output, out in zip(procs, outputs, outs, strict=True):
        assert proc.returncode == 0, output[-5000:]
        report = json.loads(out.read_text())
        measured |= {(r["section"], r["label"]) for r in report["results"]}
        assert out.with_suffix(".svg").read_text().startswith("<svg")
    sections = {section for section, _ in measured}
    assert sections >= {"pipeline", "publish concurrent", "query", "saga", "breaker", "memory"}
    assert ("query", "faststream broker.request") in measured
    assert on_broker(vhost_of(bench_vhost)) == set()
