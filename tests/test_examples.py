"""The examples and the main job run as a new user would run them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        check=False,
    )


def test_hello_example_in_memory() -> None:
    """examples/hello.py greets through a command and an event on the in-process broker."""
    result = run(["examples/hello.py"], {"LEVERET_URL": "memory://"})
    assert result.returncode == 0, result.stderr
    assert "Hello, leveret!" in result.stdout


def test_queries_example_in_memory() -> None:
    """examples/queries.py answers two concurrent queries."""
    result = run(["examples/queries.py"], {"LEVERET_URL": "memory://"})
    assert result.returncode == 0, result.stderr
    assert "apple: 12 units" in result.stdout
    assert "pear: 3 units" in result.stdout


@pytest.mark.rabbitmq
def test_hello_example_on_rabbitmq(amqp_url: str) -> None:
    """The same example runs unchanged on RabbitMQ by changing its URL."""
    result = run(["examples/hello.py"], {"LEVERET_URL": amqp_url})
    assert result.returncode == 0, result.stderr
    assert "Hello, leveret!" in result.stdout


def test_main_job(tmp_path: Path) -> None:
    """`python -m examples.shop` runs the shop in memory, reports, checks its invariants, and
    removes its temporary database."""
    result = run(["-m", "examples.shop", "--orders", "60"], {"TMPDIR": str(tmp_path)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert list(tmp_path.iterdir()) == []
    assert "completed" in result.stdout
    assert "compensated: stock-out" in result.stdout
    assert "compensated: card declined" in result.stdout
    assert "compensated: shipping failed" in result.stdout
    assert "sagas/s" in result.stdout
    assert "invariants hold" in result.stdout
    # The read side's answers to ListOrders, counted per final status and step: the shipped
    # orders and the two kinds of cancelled ones (rejected at the stock, released afterwards).
    table = result.stdout.split("read model (ListOrders)")[1].split("\n\n")[0]
    rows = {tuple(line.split()[:2]): int(line.split()[2]) for line in table.splitlines()[1:]}
    completed = rows[("completed", "shipped")]
    rejected = rows[("cancelled", "inventory_rejected")]
    released = rows[("cancelled", "inventory_released")]
    assert completed + rejected + released == 60


def test_main_job_compares_the_two_flows(tmp_path: Path) -> None:
    """`python -m examples.shop --choreography` runs the same orders through the orchestrated
    and the choreographed shop, checks both, and prints the comparison from that run."""
    args = ["-m", "examples.shop", "--orders", "60", "--choreography"]
    result = run(args, {"TMPDIR": str(tmp_path)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert list(tmp_path.iterdir()) == []
    assert result.stdout.count("invariants hold") == 2
    assert "choreographed outcome" in result.stdout
    assert "order trail of" in result.stdout
    table = result.stdout.split("the same 60 orders")[1].split("\n\n")[0]
    rows = {line[:34].strip(): line[34:].split() for line in table.splitlines()[1:]}
    published = [float(n) for n in rows["messages published per order"]]
    commands = [float(n) for n in rows["commands"]]
    # The saga commands each service; the choreography sends PlaceOrder and NotifyCustomer only.
    assert commands[1] == 2.0
    assert commands[0] > commands[1]
    assert published[0] > published[1]
    assert float(rows["to the order trail"][1]) > 0
    assert rows["invariants"] == ["hold", "hold"]
    assert all(float(n) > 0 for n in rows["orders/s (sagas/s)"])
