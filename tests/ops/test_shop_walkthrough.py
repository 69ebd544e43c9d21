"""The RabbitMQ walkthrough of docs/shop.md ("The shop on RabbitMQ"), run as the page says.

The commands are read from the page, not copied here, so the page cannot drift from what works:
the exports and the ``leveret run`` line, the Python block that places orders, every ops
command, SIGTERM, and the clean-up command. Only what the page leaves to the reader is filled
in: the broker URL (this run's vhost), the SQLite file (a temporary directory) and the health
port (a free one). At the end nothing of the prefix is left on the broker, and nothing in the
temporary directory the commands were given.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.test_shop_cleanup import names_on_broker

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent.parent
PAGE = ROOT / "docs" / "shop.md"
SECTION = "## The shop on RabbitMQ"
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
_EXPORT = re.compile(r"^export (\w+)=(\S+)")
# The clean-up command, in backquotes in the section's last paragraph.
_CLEANUP = re.compile(r"`([^`]*-m examples\.shop --reset[^`]*)`")
TERMINAL = {"completed", "compensated", "failed", "compensation_failed"}


@dataclass(frozen=True)
class Walkthrough:
    """What the section tells the reader to run, in order."""

    exports: dict[str, str]
    serve: str  # the `leveret run ... &` line, without the `&`
    client: str  # the Python block that places orders
    commands: list[str]  # the ops commands, comments dropped
    cleanup: str


def read_walkthrough() -> Walkthrough:
    text = PAGE.read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    section = text[start : end if end != -1 else len(text)]
    blocks = _FENCE.findall(section)
    shells = [code for lang, code in blocks if lang == "bash"]
    pythons = [code for lang, code in blocks if lang == "python"]
    assert (len(shells), len(pythons)) == (2, 1), "the walkthrough's shape changed: update me"
    exports: dict[str, str] = {}
    serve = ""
    for line in shells[0].splitlines():
        if (found := _EXPORT.match(line)) is not None:
            exports[found[1]] = found[2]
        elif line.startswith("leveret run"):
            serve = line.rstrip().removesuffix("&").strip()
    commands = [line.split("  #", 1)[0].strip() for line in shells[1].splitlines() if line.strip()]
    cleanup = _CLEANUP.search(section)
    assert serve, "the walkthrough has no `leveret run` line"
    assert commands, "the walkthrough has no ops commands"
    assert cleanup is not None, "the walkthrough has no clean-up command"
    return Walkthrough(exports, serve, pythons[0], commands, cleanup[1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def argv(command: str, port: int) -> list[str]:
    """A page command as this interpreter runs it: ``leveret`` and ``.venv/bin/python`` are
    this venv's, the page's health port is ``port``."""
    words = shlex.split(command.replace("8080", str(port)))
    if words[0] == "leveret":
        return [sys.executable, "-m", "framework", *words[1:]]
    if words[0].endswith("python"):
        return [sys.executable, *words[1:]]
    raise AssertionError(f"not a command this test knows how to run: {command}")


def test_the_shop_walkthrough_runs_as_written_and_leaves_nothing(
    amqp_url: str, tmp_path: Path
) -> None:
    """Every command of docs/shop.md's RabbitMQ walkthrough succeeds, in order; afterwards no
    queue or exchange of the prefix is left and the commands' temporary directory is empty."""
    page = read_walkthrough()
    prefix = page.exports["LEVERET_SHOP_PREFIX"]
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEVERET_")}
    env.update(page.exports)
    env.update(
        LEVERET_SHOP_URL=amqp_url,  # the page's amqp://user:password@rabbit:5672/shop
        LEVERET_SHOP_DB_URL=f"sqlite:///{tmp_path / 'shop.sqlite3'}",
        PYTHONPATH=str(ROOT),
        TMPDIR=str(temp),
    )
    port = free_port()

    def run(command: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            argv(command, port),
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
        return done

    served = subprocess.Popen(
        argv(page.serve, port),
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        client = subprocess.run(
            [sys.executable, "-c", page.client],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=90,  # waits for the workers' topology: mandatory sends need their queues
            check=False,
        )
        assert client.returncode == 0, client.stderr
        # Every order placed ends (one in five is a stock-out, compensated).
        placed = int(re.findall(r"range\((\d+)\)", page.client)[0])
        deadline = time.monotonic() + 60
        while True:
            listed = run(f"leveret sagas list handlers.app:app --limit {placed + 10} --json")
            statuses = [record["status"] for record in json.loads(listed.stdout)]
            if len(statuses) >= placed and set(statuses) <= TERMINAL:
                break
            assert time.monotonic() < deadline, f"sagas not all ended: {statuses}"
            time.sleep(0.5)
        outputs = {command: run(command).stdout for command in page.commands}
        status = next(out for cmd, out in outputs.items() if cmd.startswith("leveret status"))
        assert "READY" in status, status
        shown = next(out for cmd, out in outputs.items() if " sagas show " in cmd)
        assert "compensated" in shown, shown
        served.send_signal(signal.SIGTERM)
        assert served.wait(timeout=60) == 0
    finally:
        if served.poll() is None:
            os.killpg(served.pid, signal.SIGKILL)
            served.wait(timeout=30)
    run(page.cleanup)
    assert names_on_broker(amqp_url, prefix) == set()
    assert list(temp.iterdir()) == []
