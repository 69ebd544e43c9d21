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


def test_main_job() -> None:
    """`python -m handlers` runs the shop in memory and reports every order's final status."""
    result = run(["-m", "handlers"])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "20 orders in" in lines[-2]
    assert "completed=15" in lines[-2]
    assert "failed=5" in lines[-2]
    assert "out of stock: rare-truffle" in result.stdout
    assert "amount over card limit" in result.stdout
    assert "no delivery to Atlantis" in result.stdout
