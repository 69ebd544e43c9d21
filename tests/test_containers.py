"""Where the tests' servers come from: the variables, a container where Docker answers, or the
local defaults (``tests/support/containers.py``), and ``rabbitmqctl`` for a container broker.

No Docker engine runs here, so starting a container is not exercised; choosing, the Docker
probe and the ``rabbitmqctl`` routing are.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.support import broker, containers
from tests.support.second_node import free_port


class Probe:
    """A stand-in for ``docker_answers`` that counts its calls."""

    def __init__(self, answers: bool) -> None:
        self.answers = answers
        self.calls = 0

    def __call__(self) -> bool:
        self.calls += 1
        return self.answers


def test_set_variables_are_used_and_docker_is_not_asked() -> None:
    probe = Probe(True)
    env = {"LEVERET_AMQP_URL": "amqp://x/", "LEVERET_POSTGRES_URL": "postgresql://y/test"}
    assert containers.plan(env, probe) == []
    assert probe.calls == 0


def test_unset_variables_get_containers_where_docker_answers() -> None:
    assert containers.plan({}, Probe(True)) == ["amqp", "postgres"]
    assert containers.plan({"LEVERET_AMQP_URL": "amqp://x/"}, Probe(True)) == ["postgres"]
    # An empty variable counts as unset.
    assert containers.plan({"LEVERET_POSTGRES_URL": ""}, Probe(True)) == ["amqp", "postgres"]


def test_without_docker_the_local_defaults_are_used() -> None:
    probe = Probe(False)
    assert containers.plan({}, probe) == []
    assert probe.calls == 1


def test_mode_0_never_asks_docker() -> None:
    probe = Probe(True)
    assert containers.plan({"LEVERET_TESTCONTAINERS": "0"}, probe) == []
    assert probe.calls == 0


def test_mode_1_without_docker_is_an_error_not_a_fallback() -> None:
    with pytest.raises(containers.ContainerError, match="no Docker engine answers"):
        containers.plan({"LEVERET_TESTCONTAINERS": "1"}, Probe(False))
    assert containers.plan({"LEVERET_TESTCONTAINERS": "1"}, Probe(True)) == ["amqp", "postgres"]


def test_an_unknown_mode_is_refused_by_name() -> None:
    with pytest.raises(containers.ContainerError, match=r"LEVERET_TESTCONTAINERS='yes'.*auto"):
        containers.plan({"LEVERET_TESTCONTAINERS": "yes"}, Probe(True))


def test_docker_probe_says_no_quickly_when_nothing_listens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{free_port()}")
    started = time.monotonic()
    assert containers.docker_answers(timeout=2.0) is False
    assert time.monotonic() - started < 10


@contextlib.contextmanager
def fake_engine(path: Path, status: bytes) -> Iterator[list[bytes]]:
    """A Docker engine stand-in on a unix socket: answers each request with ``status``."""
    requests: list[bytes] = []
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = server.accept()
                with conn:
                    requests.append(conn.recv(1024))
                    conn.sendall(b"HTTP/1.1 " + status + b"\r\nContent-Length: 2\r\n\r\nOK")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield requests
    finally:
        with contextlib.suppress(OSError):
            server.shutdown(socket.SHUT_RDWR)  # wakes the accept() below; close() alone does not
        server.close()
        thread.join(timeout=5)


@pytest.mark.parametrize(("status", "answers"), [(b"200 OK", True), (b"500 Oops", False)])
def test_docker_probe_asks_the_engine_at_docker_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, status: bytes, answers: bool
) -> None:
    path = tmp_path / "docker.sock"
    with fake_engine(path, status) as requests:
        monkeypatch.setenv("DOCKER_HOST", f"unix://{path}")
        assert containers.docker_answers(timeout=2.0) is answers
    assert requests
    assert requests[0].startswith(b"GET /_ping ")


def test_docker_probe_says_no_for_a_missing_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'absent.sock'}")
    assert containers.docker_answers() is False


def test_no_services_start_nothing_and_leave_the_environment_alone() -> None:
    env = {"OTHER": "1"}
    with containers.started([], env) as urls:
        assert urls == {}
    assert env == {"OTHER": "1"}


@pytest.fixture
def routed() -> Iterator[list[tuple[Sequence[str], float]]]:
    calls: list[tuple[Sequence[str], float]] = []

    def runner(args: Sequence[str], timeout: float) -> str:
        calls.append((tuple(args), timeout))
        return "leveret-test\n"

    previous = broker.use_rabbitmqctl(runner)
    try:
        yield calls
    finally:
        assert broker.use_rabbitmqctl(previous) is runner


def test_rabbitmqctl_of_a_container_broker_runs_through_its_runner(
    routed: list[tuple[Sequence[str], float]],
) -> None:
    assert broker.rabbitmqctl("list_vhosts", "-q", timeout=7.0) == "leveret-test\n"
    assert broker.close_all_connections("v", "why") is None
    assert routed == [
        (("list_vhosts", "-q"), 7.0),
        (("close_all_connections", "-p", "v", "why"), 60.0),
    ]


def test_a_named_node_is_always_the_local_tool(
    routed: list[tuple[Sequence[str], float]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(broker.shutil, "which", lambda _name: None)
    with pytest.raises(broker.RabbitmqctlError, match="not installed"):
        broker.rabbitmqctl("status", node="rabbit@elsewhere")
    assert routed == []


def test_a_session_that_must_have_containers_stops_at_once_without_docker(
    tmp_path: Path,
) -> None:
    """``LEVERET_TESTCONTAINERS=1`` and no engine: pytest exits with a usage error naming the
    cause before any test runs, rather than testing against the local servers."""
    env = {
        **os.environ,
        "LEVERET_TESTCONTAINERS": "1",
        "DOCKER_HOST": f"unix://{tmp_path / 'absent.sock'}",
        "PYTHONPATH": str(Path(__file__).parent.parent),
    }
    env.pop("LEVERET_AMQP_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_worker.py"],
        cwd=Path(__file__).parent.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == pytest.ExitCode.USAGE_ERROR, done.stdout + done.stderr
    assert "no Docker engine answers" in done.stderr
