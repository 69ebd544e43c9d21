"""The main job on a real broker leaves nothing behind, and says plainly why it stops."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aio_pika
import pytest
from aiormq.exceptions import ChannelNotFoundEntity

from contracts.orders import LineItem, PlaceOrder
from framework import AppConfig
from framework.queues import delete_topology, owned_topology
from framework.transport.amqp import AmqpTransport
from framework.worker import EXIT_BROKER_UNREACHABLE
from handlers.app import build_app
from tests.support.broker import RabbitmqctlError, rabbitmqctl, vhost_of

ROOT = Path(__file__).resolve().parent.parent


def shop(args: list[str], tmp: Path) -> subprocess.CompletedProcess[str]:
    """``python -m examples.shop ARGS`` from the checkout, its temporary files under ``tmp``."""
    tmp.mkdir(exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "examples.shop", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp)},
        check=False,
    )


def names_on_broker(url: str, prefix: str) -> set[str]:
    """The queues and exchanges of ``url``'s vhost whose names start with ``prefix.``, as
    ``rabbitmqctl`` lists them (seconds per call: once per test)."""
    vhost = vhost_of(url)
    listings = [
        ("list_queues", "-p", vhost, "-q", "--no-table-headers", "name"),
        ("list_exchanges", "-p", vhost, "-q", "--no-table-headers", "name"),
    ]
    try:
        with ThreadPoolExecutor(2) as pool:  # side by side: each call takes seconds
            queues, exchanges = pool.map(lambda args: rabbitmqctl(*args), listings)
    except RabbitmqctlError as exc:
        pytest.skip(f"cannot list the broker's queues: {exc}")
    names = {line.strip() for line in (queues + exchanges).splitlines()}
    return {name for name in names if name.startswith(f"{prefix}.")}


async def existing(url: str, queues: Iterable[str], exchanges: Iterable[str]) -> set[str]:
    """Which of these queues and exchanges exist: a passive declare of each, on a channel of
    its own (a missing one closes the channel). Fast, but blind to names not asked about."""
    found: set[str] = set()
    connection = await aio_pika.connect(url)
    try:
        for kind, names in (("queue", queues), ("exchange", exchanges)):
            for name in names:
                channel = await connection.channel()
                try:
                    if kind == "queue":
                        await channel.declare_queue(name, passive=True)
                    else:
                        await channel.declare_exchange(name, passive=True)
                    found.add(name)
                except ChannelNotFoundEntity:
                    continue
                finally:
                    if not channel.is_closed:
                        await channel.close()
    finally:
        await connection.close()
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_owned_topology_names_the_delay_tiers_of_saga_deadlines(tmp_path: Path) -> None:
    """What an app owns includes the delay tiers its saga's deadlines use (declared only when
    a deadline is armed) and its breakers' control exchange, beside its declared topology."""
    app = build_app(db_url=f"sqlite:///{tmp_path}/shop.sqlite3", config=AppConfig(prefix="p"))
    owned = owned_topology(app)
    queues = {q.name for q in owned.queues}
    exchanges = {e.name for e in owned.exchanges}
    assert {q.name for q in app.topology.queues} <= queues
    # The order saga's step deadline (60 s) and compensation wait (10 s).
    assert {"p.delay.60000", "p.delay.10000"} <= queues & exchanges
    assert "p.breakers.inventory.notifications.order_view.orders.payment.shipping" in exchanges
    assert all(name.startswith("p.") for name in queues | exchanges)


@pytest.mark.rabbitmq
async def test_delete_topology_removes_queues_exchanges_and_waiting_messages(
    amqp_url: str, prefix: str, tmp_path: Path
) -> None:
    """delete_topology removes every queue (waiting messages included) and exchange the app
    declared, the delay tier a saga deadline added included; deleting again is a no-op."""
    app = build_app(
        amqp_url, db_url=f"sqlite:///{tmp_path}/shop.sqlite3", config=AppConfig(prefix=prefix)
    )
    await app.start(consume=False)
    try:
        # As the outbox does when it arms a 60 s deadline; and an order waits in its queue.
        await app.transport.declare(app.naming.delay_topology(60_000))
        item = LineItem(sku="apple", qty=1, unit_price_cents=99)
        await app.send(PlaceOrder(order_id="o-1", customer_id="c-1", items=[item], address="x"))
    finally:
        await app.stop()
    owned = owned_topology(app)
    queues, exchanges = [q.name for q in owned.queues], [e.name for e in owned.exchanges]
    declared = await existing(amqp_url, queues, exchanges)
    assert {f"{prefix}.delay.60000", f"{prefix}.orders.orders.place_order"} <= declared
    transport = AmqpTransport(amqp_url)
    await transport.connect()
    try:
        deleted = await delete_topology(app, transport=transport)
        assert set(deleted.queues) | set(deleted.exchanges) >= declared
        assert await existing(amqp_url, queues, exchanges) == set()
        await delete_topology(app, transport=transport)  # nothing left: still fine
    finally:
        await transport.close()


@pytest.mark.rabbitmq
@pytest.mark.slow
def test_shop_on_rabbitmq_keep_then_reset_leaves_nothing(
    amqp_url: str, prefix: str, tmp_path: Path
) -> None:
    """`--keep` leaves the run's queues, exchanges and database and says how to inspect them;
    the next run with `--reset` starts from clean and, at its end, deletes its topology and its
    temporary files: nothing of the prefix is left on the broker, nothing in TMPDIR."""
    tmp = tmp_path / "tmp"
    common = ["--amqp-url", amqp_url, "--prefix", prefix, "--orders", "20", "--workers", "1"]
    kept = shop([*common, "--keep"], tmp)
    assert kept.returncode == 0, kept.stdout + kept.stderr
    assert f"prefix {prefix}," in kept.stderr  # the prefix is printed
    assert "query_handler_failed" not in kept.stderr  # the readiness probe fails nothing
    assert "\r" not in kept.stderr  # not a terminal: plain progress lines
    assert "20/20 sagas ended" in kept.stderr
    assert f"LEVERET_SHOP_PREFIX={prefix}" in kept.stderr
    queue, exchange = f"{prefix}.orders.orders.place_order", f"{prefix}.commands"
    assert asyncio.run(existing(amqp_url, [queue], [exchange])) == {queue, exchange}
    (workdir,) = tmp.iterdir()
    assert re.search(rf"rm -r {re.escape(str(workdir))}$", kept.stderr, re.M)

    reset = shop([*common, "--reset"], tmp)
    assert reset.returncode == 0, reset.stdout + reset.stderr
    assert f"shop: reset prefix {prefix!r}" in reset.stderr
    assert f"shop: removed prefix {prefix!r}" in reset.stderr
    assert "invariants hold" in reset.stdout
    assert names_on_broker(amqp_url, prefix) == set()
    assert list(tmp.iterdir()) == [workdir]  # the second run's files are gone
    shutil.rmtree(workdir)


def test_shop_with_the_broker_down_exits_3_with_one_line(tmp_path: Path) -> None:
    """No broker at the URL: one line naming it (password redacted), exit 3, no traceback,
    no temporary directory left."""
    url = f"amqp://guest:s3cret@127.0.0.1:{free_port()}/"
    result = shop(["--amqp-url", url, "--orders", "5"], tmp_path / "tmp")
    assert result.returncode == EXIT_BROKER_UNREACHABLE, result.stderr
    assert result.stderr.startswith(
        f"shop: cannot reach the broker at {url.replace('s3cret', '***')}"
    )
    assert result.stderr.count("\n") == 1
    assert "s3cret" not in result.stderr
    assert list((tmp_path / "tmp").iterdir()) == []
