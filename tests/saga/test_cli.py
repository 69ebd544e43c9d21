"""``leveret sagas``: list, show, graph, resume and abort, run as an operator runs them.

A fixture runs the shop in this process on a SQLite file until one order has completed, one was
compensated and two wait in ``ship`` for a shipping service that ignores its first request
(``step_timeout=None``, so they wait for good). The commands then run as subprocesses
(``python -m framework sagas ...``) against ``handlers.app:app`` with ``--db-url`` on that file.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import contracts
from contracts.orders import LineItem, PlaceOrder
from contracts.shipping import ShipOrder
from framework import App, AppConfig
from framework.cli.exits import EXIT_FAILED as EXIT_REFUSED
from framework.cli.exits import EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE
from framework.store import SagaStatus, store_from_url
from framework.transport.amqp import AmqpTransport
from framework.transport.memory import MemoryTransport
from handlers.app import DEFAULT_STOCK
from handlers.inventory import build_inventory
from handlers.notifications import build_notifications
from handlers.orders import build_orders, build_read_side
from handlers.payment import build_payment
from tests.saga.conftest import eventually, shipping_that_answers_from

PROJECT = Path(__file__).resolve().parents[2]
ITEMS = [LineItem(sku="apple", qty=1, unit_price_cents=250)]
DECLINED = [LineItem(sku="plum", qty=100, unit_price_cents=5_000)]  # over the card limit


def sagas(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m framework sagas ARGS`` from the project directory, to completion."""
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("LEVERET_")}
    child_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "framework", "sagas", *args],
        cwd=PROJECT,
        env=child_env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def show_json(db_url: str, saga_id: str) -> dict[str, Any]:
    """``sagas show ID --json``, parsed."""
    shown = sagas("show", "handlers.app:app", saga_id, "--db-url", db_url, "--json")
    assert shown.returncode == EXIT_OK, shown.stderr
    detail: dict[str, Any] = json.loads(shown.stdout)
    return detail


@pytest.fixture
async def db_url(tmp_path: Path) -> str:
    """A shop database: ``done`` completed, ``gone`` compensated (card declined), ``stuck`` and
    ``stuck2`` waiting in ``ship``."""
    url = f"sqlite:///{tmp_path / 'shop.db'}"
    store = store_from_url(url)
    shipping, received = shipping_that_answers_from(2)
    app = App(
        [
            build_orders(step_timeout=None),
            build_read_side(store),
            build_inventory(DEFAULT_STOCK),
            build_payment(),
            shipping,
            build_notifications(),
        ],
        transport=MemoryTransport(),
        config=AppConfig(prefix="cli"),
        store=store,
        contracts=contracts.ALL,
    )
    async with app:
        await app.send(ShipOrder(order_id="done", address="x"))  # the ignored first request
        await app.send(PlaceOrder(order_id="done", customer_id="c", items=ITEMS, address="x"))
        await app.send(PlaceOrder(order_id="gone", customer_id="c", items=DECLINED, address="x"))
        for order_id in ("stuck", "stuck2"):
            await app.send(PlaceOrder(order_id=order_id, customer_id="c", items=ITEMS, address="x"))

        async def settled() -> bool:
            states = {r.saga_id: r.state for r in await store.list_sagas()}
            return (
                states
                == {
                    "order-done": "completed",
                    "order-gone": "compensated",
                    "order-stuck": "ship",
                    "order-stuck2": "ship",
                }
                and received["stuck"] == received["stuck2"] == 1
            )

        await eventually(settled, what="the four orders to settle")
    return url


def test_list_shows_the_newest_first_and_filters_by_status_or_state(db_url: str) -> None:
    """``list`` prints a table; ``--state`` takes a status or a state name; json is parseable."""
    table = sagas("list", "handlers.app:app", "--db-url", db_url)
    assert table.returncode == EXIT_OK, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:4] == ["SAGA", "ID", "SAGA", "STATUS"]
    assert [line.split()[0] for line in lines[1:]] == [
        "order-stuck2",
        "order-stuck",
        "order-gone",
        "order-done",
    ]
    running = sagas("list", "handlers.app:app", "--db-url", db_url, "--state", "running")
    assert [line.split()[0] for line in running.stdout.splitlines()[1:]] == [
        "order-stuck2",
        "order-stuck",
    ]
    shipping = sagas(
        "list", "handlers.app:app", "--db-url", db_url, "--state", "ship", "--limit", "1",
        "--json",
    )  # fmt: skip
    assert shipping.returncode == EXIT_OK, shipping.stderr
    (only,) = json.loads(shipping.stdout)
    assert (only["saga_id"], only["status"], only["state"]) == ("order-stuck2", "running", "ship")
    compensated = sagas(
        "list", "handlers.app:app", "--db-url", db_url, "--state", "compensated",
        "--saga", "order", "--json",
    )  # fmt: skip
    (gone,) = json.loads(compensated.stdout)
    assert gone["reason"] == "charge failed: card declined: over limit"


def test_list_rejects_an_unknown_state_or_saga(db_url: str) -> None:
    """An unknown ``--state`` or ``--saga`` is a usage error naming what exists."""
    state = sagas("list", "handlers.app:app", "--db-url", db_url, "--state", "shipping")
    assert state.returncode == EXIT_USAGE
    assert "charge:compensating" in state.stderr
    assert "compensation_failed" in state.stderr
    saga = sagas("list", "handlers.app:app", "--db-url", db_url, "--saga", "refund")
    assert saga.returncode == EXIT_USAGE
    assert "its sagas are: order" in saga.stderr


def test_show_prints_state_data_and_the_timeline(db_url: str) -> None:
    """``show`` lists each message in, its transition, the messages out and ignored ones."""
    shown = sagas("show", "handlers.app:app", "order-gone", "--db-url", db_url)
    assert shown.returncode == EXIT_OK, shown.stderr
    out = shown.stdout
    assert "status       compensated" in out
    assert "reason       charge failed: card declined: over limit" in out
    assert '"total_cents":500000' in out
    for transition in (
        "start -> reserve  [running]",
        "reserve -> charge  [running]",
        "charge -> reserve:compensating  [compensating]",
        "reserve:compensating -> compensated  [compensated]",
    ):
        assert transition in out
    assert "in orders.place_order" in out
    # Keyed ids (``<saga id>/<version>/<n>/<tag>``); no timeout id: step_timeout=None.
    assert re.search(r"out order-gone/1/0/[0-9a-f]{16}, order-gone/1/1/[0-9a-f]{16}\n", out)

    detail = json.loads(
        sagas("show", "handlers.app:app", "order-done", "--db-url", db_url, "--json").stdout
    )
    assert detail["status"] == "completed"
    assert detail["completed"] == ["reserve", "charge", "ship"]
    assert detail["data"]["payment_id"] == "pay-done"
    assert [h["to_state"] for h in detail["history"]] == ["reserve", "charge", "ship", "completed"]


def test_show_of_an_unknown_id_exits_1(db_url: str) -> None:
    """No saga with that id: a clear message and exit 1."""
    shown = sagas("show", "handlers.app:app", "order-nope", "--db-url", db_url)
    assert shown.returncode == EXIT_REFUSED
    assert "no saga 'order-nope'" in shown.stderr


def test_graph_draws_the_definition_as_mermaid() -> None:
    """``graph`` prints a stateDiagram-v2 with wire-name labels and marked compensation."""
    graph = sagas("graph", "handlers.app:app", "order")
    assert graph.returncode == EXIT_OK, graph.stderr
    lines = graph.stdout.splitlines()
    assert lines[0] == "stateDiagram-v2"
    for line in (
        '    state "charge:compensating" as charge_compensating',
        "    [*] --> reserve : orders.place_order",
        "    reserve --> charge : inventory.inventory_reserved",
        "    ship --> completed : shipping.order_shipped",
        # The shop's pivot has no deadline: only its failure reply leads to compensation.
        "    ship --> charge_compensating : compensate: shipping.shipping_failed",
        "    charge_compensating --> reserve_compensating : compensate: payment.payment_refunded",
        "    completed --> [*]",
        "    compensated --> [*]",
        "    class charge_compensating,compensated,reserve_compensating compensation",
    ):
        assert line in lines
    unknown = sagas("graph", "handlers.app:app", "refund")
    assert unknown.returncode == EXIT_USAGE
    assert "has no saga 'refund'" in unknown.stderr


def test_abort_and_resume_on_a_memory_app_keep_messages_in_the_outbox(db_url: str) -> None:
    """On memory:// nothing is published: abort ends the saga, resume leaves its command queued."""
    aborted = sagas(
        "abort",
        "handlers.app:app",
        "order-stuck2",
        "--reason",
        "customer called",
        "--db-url",
        db_url,
    )
    assert aborted.returncode == EXIT_OK, aborted.stderr
    assert "aborted order-stuck2: aborted" in aborted.stdout
    again = sagas("abort", "handlers.app:app", "order-stuck2", "--db-url", db_url)
    assert again.returncode == EXIT_REFUSED
    assert "aborted already" in again.stderr
    finished = sagas("resume", "handlers.app:app", "order-done", "--db-url", db_url)
    assert finished.returncode == EXIT_REFUSED
    assert "completed already" in finished.stderr
    nobody = sagas("resume", "handlers.app:app", "order-nobody", "--db-url", db_url)
    assert nobody.returncode == EXIT_REFUSED

    resumed = sagas("resume", "handlers.app:app", "order-stuck", "--db-url", db_url)
    assert resumed.returncode == EXIT_OK, resumed.stderr
    assert "resumed order-stuck: running in state 'ship'" in resumed.stdout
    assert "in the outbox: order-stuck/" in resumed.stdout
    assert "--amqp-url" in resumed.stdout
    shown = json.loads(
        sagas("show", "handlers.app:app", "order-stuck2", "--db-url", db_url, "--json").stdout
    )
    assert (shown["status"], shown["reason"]) == ("aborted", "customer called")
    assert shown["history"][-1]["message_type"] == "operator.abort"


@pytest.mark.rabbitmq
async def test_resume_publishes_on_the_broker(db_url: str, amqp_url: str, prefix: str) -> None:
    """With --amqp-url, resume sends the waiting step's command to its queue at once."""
    env = {"LEVERET_SHOP_PREFIX": prefix}
    resumed = sagas(
        "resume", "handlers.app:app", "order-stuck", "--db-url", db_url, "--amqp-url", amqp_url,
        env=env,
    )  # fmt: skip
    assert resumed.returncode == EXIT_OK, resumed.stderr
    assert "sent: order-stuck/" in resumed.stdout
    transport = AmqpTransport(amqp_url)
    await transport.connect()
    try:
        queue = f"{prefix}.shipping.{ShipOrder.__wire_name__}"
        assert await transport.queue_depth(queue) == 1
    finally:
        await transport.close()
    store = store_from_url(db_url)
    try:
        record = await store.get_saga("order-stuck")
        assert record is not None
        assert record.status is SagaStatus.RUNNING
        assert await store.pending_outbox() == []
    finally:
        await store.close()


def test_unreachable_broker_exits_3_and_changes_nothing(db_url: str) -> None:
    """No broker at --amqp-url within --connect-timeout: exit 3 before touching the saga."""
    resumed = sagas(
        "resume", "handlers.app:app", "order-stuck", "--db-url", db_url,
        "--amqp-url", "amqp://guest:secret@127.0.0.1:9/", "--connect-timeout", "1",
    )  # fmt: skip
    assert resumed.returncode == EXIT_UNREACHABLE
    assert "cannot reach the broker" in resumed.stderr
    assert "secret" not in resumed.stderr
    shown = json.loads(
        sagas("show", "handlers.app:app", "order-stuck", "--db-url", db_url, "--json").stdout
    )
    assert shown["history"][-1]["to_state"] == "ship"
    assert all(h["message_type"] != "operator.resume" for h in shown["history"])


def test_apps_without_sagas_and_bad_specs_are_usage_errors() -> None:
    """MODULE:APP that does not load, or runs no sagas, exits 2 with the reason."""
    hello = sagas("list", "examples.hello:app")
    assert hello.returncode == EXIT_USAGE
    assert "runs no sagas" in hello.stderr
    missing = sagas("graph", "handlers.nope:app", "order")
    assert missing.returncode == EXIT_USAGE
    assert "handlers.nope" in missing.stderr
