"""``leveret breakers``: per-worker state and metrics from running apps."""

from __future__ import annotations

import asyncio
import json
import sys

import pytest

from framework import cli
from tests.apps.breaker_app import build_app

APP = "tests.apps.breaker_app:app"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, prefix: str) -> str:
    """Point the module app at this test's prefix (it is built when the command loads it)."""
    monkeypatch.setenv("LEVERET_TEST_PREFIX", prefix)
    monkeypatch.delitem(sys.modules, "tests.apps.breaker_app", raising=False)
    return prefix


async def test_breakers_shows_every_workers_state(
    amqp_url: str, env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two running workers answer; the table shows each one's breakers and their numbers."""
    workers = [build_app(amqp_url, env), build_app(amqp_url, env)]
    for worker in workers:
        await worker.start()
    try:
        assert workers[0].breakers is not None
        workers[0].breakers["inventory"].transition_to_forced_open()
        code = await asyncio.to_thread(
            cli.main, ["breakers", APP, "--amqp-url", amqp_url, "--timeout", "1"]
        )
        out = capsys.readouterr().out
        assert code == 0
        assert "2 worker(s) of group 'orders'" in out
        table = [line.split() for line in out.splitlines() if line.startswith("  ")]
        rows = [row for row in table if row[0] in ("inventory", "reports")]
        assert [row[0] for row in rows] == ["inventory", "reports"] * 2
        assert sorted(row[1] for row in rows if row[0] == "inventory") == ["closed", "forced_open"]
        assert "forced_open (manual)" in out
        assert "last 20 calls" in out
        code = await asyncio.to_thread(
            cli.main, ["breakers", APP, "--amqp-url", amqp_url, "--timeout", "1", "--json"]
        )
        answers = json.loads(capsys.readouterr().out)
        assert code == 0
        states = sorted(b["state"] for a in answers for b in a["breakers"])
        assert states == ["closed", "closed", "closed", "forced_open"]
    finally:
        for worker in workers:
            await worker.stop(grace=0)


async def test_breakers_without_a_running_worker(
    amqp_url: str, env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nobody answers: the command says so and exits 1."""
    code = await asyncio.to_thread(
        cli.main, ["breakers", APP, "--amqp-url", amqp_url, "--timeout", "0.3"]
    )
    assert code == 1
    assert "no worker of tests.apps.breaker_app:app answered within 0.3s" in capsys.readouterr().out


def test_breakers_of_a_memory_app_lists_the_declarations(
    env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An in-process app cannot be asked: its declared breakers are listed instead."""
    assert cli.main(["breakers", APP]) == 0
    out = capsys.readouterr().out
    assert "runs on memory://" in out
    assert "service inventory" in out
    assert "reports.#" in out


def test_breakers_of_an_unknown_app(capsys: pytest.CaptureFixture[str]) -> None:
    """A MODULE:APP that does not load is a usage error (exit 2)."""
    assert cli.main(["breakers", "tests.apps.nothing_here:app"]) == 2
    assert "leveret:" in capsys.readouterr().err


async def test_breakers_signs_its_request_with_the_workers_secret(
    amqp_url: str, env: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With LEVERET_SECRET the workers answer the command only when it has the same secret."""
    monkeypatch.setenv("LEVERET_SECRET", "the-workers-secret-0123456789")
    worker = build_app(amqp_url, env)
    await worker.start()
    try:
        args = ["breakers", APP, "--amqp-url", amqp_url, "--timeout", "0.5"]
        assert await asyncio.to_thread(cli.main, args) == 0
        assert "1 worker(s) of group 'orders'" in capsys.readouterr().out
        monkeypatch.setenv("LEVERET_SECRET", "another-secret-0123456789")
        monkeypatch.delitem(sys.modules, "tests.apps.breaker_app", raising=False)
        assert await asyncio.to_thread(cli.main, args) == 1
        assert "no worker of tests.apps.breaker_app:app answered" in capsys.readouterr().out
    finally:
        await worker.stop(grace=0)
