"""``leveret run``: the supervisor, its workers, their exit codes, and credential-free logs.

Subprocess tests run ``python -m framework run`` (the ``leveret`` script's ``main``) from the
project directory against ``tests.apps.slow_app``, configured through environment variables, and
always kill their whole process group afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar, overload

import pytest
import structlog

from framework import App, AppConfig, Service
from framework.errors import ConfigurationError
from framework.logging import configure_logging, redact_credentials, redact_text
from framework.supervisor import RestartBackoff, SupervisorConfig
from framework.transport.amqp import AmqpConfig, AmqpTransport
from framework.transport.memory import MemoryBroker, MemoryTransport
from framework.worker import (
    EXIT_BROKER_UNREACHABLE,
    EXIT_CONFIGURATION,
    EXIT_OK,
    EXIT_TRANSPORT_FAILED,
    LOOP_ENV,
    AppLoadError,
    load_app,
    loop_factory,
    serve,
)
from tests.apps.slow_app import Work, build_app, work_queue
from tests.support.broker import list_queues, rabbitmqctl_available, vhost_of
from tests.support.poll import until

PROJECT = Path(__file__).resolve().parents[1]
T = TypeVar("T")


# -- helpers -----------------------------------------------------------------------------------


@overload
async def eventually(check: Callable[[], Awaitable[T]], *, timeout: float, what: str) -> T: ...
@overload
async def eventually(check: Callable[[], T], *, timeout: float, what: str) -> T: ...
async def eventually(check: Callable[[], Any], *, timeout: float, what: str) -> Any:
    """Poll ``check`` until it returns something truthy; fail the test after ``timeout`` s."""
    try:
        return await until(check, timeout=timeout, what=what, interval=0.05)
    except TimeoutError as exc:
        pytest.fail(str(exc))


class Leveret:
    """``python -m framework run ARGS`` in its own process group, output captured in files."""

    def __init__(self, tmp_path: Path, args: Sequence[str], env: Mapping[str, str]) -> None:
        self._out_path = tmp_path / "leveret.stdout"
        self._err_path = tmp_path / "leveret.stderr"
        self._files: list[IO[bytes]] = [self._out_path.open("wb"), self._err_path.open("wb")]
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("LEVERET_")}
        child_env.update(env)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "framework", "run", *args],
            cwd=PROJECT,
            env=child_env,
            stdin=subprocess.DEVNULL,
            stdout=self._files[0],
            stderr=self._files[1],
            start_new_session=True,  # its own group: the cleanup kills workers too
        )

    @property
    def stdout(self) -> str:
        return self._out_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self._err_path.read_text(errors="replace")

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """The JSON log lines written so far (optionally only the events called ``name``)."""
        found = []
        for line in self.stderr.splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict) and (name is None or event.get("event") == name):
                    found.append(event)
        return found

    def send(self, sig: int) -> None:
        self.process.send_signal(sig)

    async def exit_code(self, timeout: float) -> int:
        await eventually(
            lambda: self.process.poll() is not None, timeout=timeout, what="leveret to exit"
        )
        code = self.process.returncode
        assert code is not None
        return code

    def kill_everything(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        for file in self._files:
            file.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Callable[..., Leveret]]:
    """Starts ``leveret run`` processes; kills every one of them (and their workers) afterwards."""
    started: list[Leveret] = []

    def start(*args: str, env: Mapping[str, str]) -> Leveret:
        directory = tmp_path / f"run{len(started)}"
        directory.mkdir()
        leveret = Leveret(directory, args, env)
        started.append(leveret)
        return leveret

    yield start
    for leveret in started:
        leveret.kill_everything()


def run_leveret(
    *args: str, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m framework run ARGS`` to completion (for commands that fail fast)."""
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("LEVERET_")}
    child_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "framework", "run", *args],
        cwd=PROJECT,
        env=child_env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
        start_new_session=True,
    )


def handled(record: Path) -> list[int]:
    """Message numbers the app's handler recorded, in order."""
    if not record.exists():
        return []
    return [int(line) for line in record.read_text().split()]


def command_line(pid: int) -> str:
    """The command line of a running process, as ``ps`` shows it to every local user."""
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def broker_counts(amqp_url: str, queue: str) -> tuple[int, int, int] | None:
    """``(ready, unacked, consumers)`` of ``queue`` when rabbitmqctl is usable, else None."""
    if not rabbitmqctl_available():
        return None
    return list_queues(vhost_of(amqp_url))[queue]


@pytest.fixture
async def publisher(amqp_url: str, prefix: str) -> Any:
    """A non-consuming copy of the slow app on the test's vhost and prefix, to send ``Work``."""
    app = build_app(url=amqp_url, prefix=prefix)
    app.use_transport(
        AmqpTransport(amqp_url, config=AmqpConfig(connect_timeout=5.0, publish_timeout=5.0))
    )
    await app.start(consume=False)
    yield app
    await app.stop(grace=0)


def slow_env(amqp_url: str, prefix: str, tmp_path: Path, **settings: str) -> dict[str, str]:
    env = {
        "LEVERET_TEST_URL": amqp_url,
        "LEVERET_TEST_PREFIX": prefix,
        "LEVERET_TEST_RECORD": str(tmp_path / "handled.txt"),
        "LEVERET_TEST_PIDS": str(tmp_path / "pids"),
        "LEVERET_LOG_FORMAT": "json",
    }
    (tmp_path / "pids").mkdir(exist_ok=True)
    env.update({f"LEVERET_TEST_{k.upper()}": v for k, v in settings.items()})
    return env


# -- draining on SIGTERM -----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.rabbitmq
@pytest.mark.timeout(120)
async def test_sigterm_drains_in_flight_handlers_and_exits_0(
    served: Callable[..., Leveret], publisher: App, amqp_url: str, prefix: str, tmp_path: Path
) -> None:
    """SIGTERM with handlers in flight: they finish, the rest stay queued, none lost, exit 0."""
    total = 20
    for n in range(total):
        await publisher.send(Work(n=n))
    env = slow_env(amqp_url, prefix, tmp_path, handler_seconds="1", prefetch="2")
    leveret = served("tests.apps.slow_app:app", "--workers", "2", "--amqp-url", amqp_url, env=env)
    record = tmp_path / "handled.txt"

    await eventually(
        lambda: len(leveret.events("app_started")) == 2, timeout=30, what="both workers to consume"
    )
    await eventually(lambda: len(handled(record)) >= 2, timeout=30, what="handled messages")
    for spawned in leveret.events("worker_spawned"):  # `ps` shows argv to every local user
        argv = command_line(spawned["pid"])
        assert amqp_url not in argv, argv
        assert "--url" not in argv, argv
    at_signal = len(handled(record))
    leveret.send(signal.SIGTERM)

    assert await leveret.exit_code(timeout=60) == EXIT_OK, leveret.stderr
    done = handled(record)
    queue = work_queue(publisher)
    ready = await publisher.transport.queue_depth(queue)
    assert len(done) == len(set(done)), f"a message was handled twice: {done}"
    assert set(done) <= set(range(total))
    assert len(done) + ready == total, f"handled {done}, {ready} left of {total}"
    assert len(done) > at_signal, "handlers in flight at SIGTERM did not get to finish"
    assert ready > 0, "the workers kept consuming after SIGTERM"
    assert sum(e["in_flight"] for e in leveret.events("draining")) >= 1
    counts = broker_counts(amqp_url, queue)
    if counts is not None:
        assert counts[1:] == (0, 0), f"unacked/consumers left behind: {counts}"
    assert [e["exit_code"] for e in leveret.events("worker_exited")] == [0, 0]
    assert not leveret.events("worker_restarted")


@pytest.mark.slow
@pytest.mark.rabbitmq
@pytest.mark.timeout(120)
async def test_sigterm_past_shutdown_grace_requeues_unfinished_messages(
    served: Callable[..., Leveret], publisher: App, amqp_url: str, prefix: str, tmp_path: Path
) -> None:
    """Handlers still running when the grace period ends are cancelled, their messages requeued."""
    for n in range(5):
        await publisher.send(Work(n=n))
    env = slow_env(
        amqp_url, prefix, tmp_path, handler_seconds="300", prefetch="2", shutdown_grace="0.5"
    )
    leveret = served("tests.apps.slow_app:app", "--amqp-url", amqp_url, env=env)
    queue = work_queue(publisher)

    async def two_in_flight() -> bool:
        return await publisher.transport.queue_depth(queue) == 3

    await eventually(two_in_flight, timeout=30, what="the worker to take two messages")
    leveret.send(signal.SIGTERM)

    assert await leveret.exit_code(timeout=60) == EXIT_OK, leveret.stderr
    assert handled(tmp_path / "handled.txt") == []
    assert await publisher.transport.queue_depth(queue) == 5
    assert leveret.events("drain_cancelled_handlers")


# -- restarts ----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.rabbitmq
@pytest.mark.timeout(120)
async def test_killed_worker_is_restarted_and_processing_continues(
    served: Callable[..., Leveret], publisher: App, amqp_url: str, prefix: str, tmp_path: Path
) -> None:
    """SIGKILL of a worker: the supervisor logs it, starts another, and every message is handled."""
    env = slow_env(amqp_url, prefix, tmp_path, handler_seconds="0.2", prefetch="2")
    leveret = served("tests.apps.slow_app:app", "--workers", "2", "--amqp-url", amqp_url, env=env)
    record = tmp_path / "handled.txt"
    await eventually(
        lambda: len(leveret.events("app_started")) == 2, timeout=30, what="both workers to consume"
    )
    for n in range(10):
        await publisher.send(Work(n=n))
    await eventually(lambda: handled(record), timeout=30, what="a handled message")

    victim = next(e["pid"] for e in leveret.events("worker_spawned") if e["index"] == 0)
    os.kill(victim, signal.SIGKILL)
    restarted = await eventually(
        lambda: leveret.events("worker_restarted"), timeout=30, what="worker_restarted"
    )
    new_pid = restarted[0]["pid"]
    assert restarted[0]["index"] == 0
    assert new_pid != victim
    exited = leveret.events("worker_exited")
    assert exited[0]["pid"] == victim, exited
    assert exited[0]["signal"] == "SIGKILL", exited
    await eventually(
        lambda: len(leveret.events("app_started")) == 3,
        timeout=30,
        what="the new worker to consume",
    )

    for n in range(10, 30):
        await publisher.send(Work(n=n))
    await eventually(
        lambda: set(handled(record)) == set(range(30)), timeout=60, what="all 30 messages handled"
    )
    await eventually(
        lambda: (tmp_path / "pids" / str(new_pid)).exists(),
        timeout=30,
        what="the new worker to handle a message",
    )
    leveret.send(signal.SIGTERM)
    assert await leveret.exit_code(timeout=60) == EXIT_OK, leveret.stderr


def process_gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie nobody reaped counts as exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
async def test_workers_stop_when_the_supervisor_is_killed(
    served: Callable[..., Leveret], tmp_path: Path
) -> None:
    """SIGKILL of the supervisor leaves no orphan: its workers get SIGTERM, drain and exit 0."""
    leveret = served(
        "tests.apps.slow_app:app", "--workers", "1", env={"LEVERET_LOG_FORMAT": "json"}
    )
    await eventually(lambda: leveret.events("app_started"), timeout=30, what="the worker")
    (worker,) = (e["pid"] for e in leveret.events("worker_spawned"))
    leveret.send(signal.SIGKILL)
    await eventually(lambda: process_gone(worker), timeout=30, what="the orphaned worker to exit")
    assert [e["signal"] for e in leveret.events("worker_stopping")] == ["SIGTERM"]
    assert [e["exit_code"] for e in leveret.events("worker_stopped")] == [EXIT_OK]


def consuming_workers(
    leveret: Leveret, *, workers: int, killed: int | None = None
) -> dict[int, int]:
    """Index -> pid of every worker position, once each one's latest worker is alive (and not
    ``killed``, which may not have died yet) and consuming (it logged ``app_started``); empty
    while any position is not."""
    spawned: dict[int, list[int]] = {}
    for event in leveret.events("worker_spawned"):
        spawned.setdefault(event["index"], []).append(event["pid"])
    started = [e["worker"] for e in leveret.events("app_started")]
    up = {
        index: pids[-1]
        for index, pids in spawned.items()
        if started.count(index) == len(pids) and pids[-1] != killed and not process_gone(pids[-1])
    }
    return up if len(up) == workers else {}


KILLS = 3  # the fault suite's repeated_kills scenario kills more, under load
BACK_WITHIN = 3.0  # seconds from a SIGKILL until both workers consume again
SERVING_BEFORE_KILL = 2.5  # seconds both workers consume before the next SIGKILL


@pytest.mark.slow
@pytest.mark.rabbitmq
@pytest.mark.timeout(120)
async def test_worker_killed_again_and_again_is_back_within_seconds_each_time(
    served: Callable[..., Leveret], amqp_url: str, prefix: str, tmp_path: Path
) -> None:
    """Three SIGKILLs of a serving worker: each time both workers consume again within 3 s."""
    env = slow_env(amqp_url, prefix, tmp_path)
    leveret = served("tests.apps.slow_app:app", "--workers", "2", "--amqp-url", amqp_url, env=env)
    up = await eventually(
        lambda: consuming_workers(leveret, workers=2), timeout=30, what="both workers to consume"
    )
    for kill in range(1, KILLS + 1):
        # The killer's cadence (3-4 s from kill to kill, as in the chaos run of issue 17),
        # not a wait for anything. The same position every time: the worst case for a backoff.
        await asyncio.sleep(SERVING_BEFORE_KILL)
        victim = up[0]
        os.kill(victim, signal.SIGKILL)
        up = await eventually(
            functools.partial(consuming_workers, leveret, workers=2, killed=victim),
            timeout=BACK_WITHIN,
            what=f"both workers to consume within {BACK_WITHIN:g}s of kill {kill}",
        )

    exits = [e for e in leveret.events("worker_exited") if not e.get("stopping")]
    assert [e["signal"] for e in exits] == ["SIGKILL"] * KILLS, exits
    # Each victim had been up for seconds: every restart waited the initial delay, none longer.
    assert [e["restart_in"] for e in exits] == [RestartBackoff().initial] * KILLS, exits
    assert len(leveret.events("worker_restarted")) == KILLS
    leveret.send(signal.SIGTERM)
    assert await leveret.exit_code(timeout=60) == EXIT_OK, leveret.stderr


def restart_delays(backoff: RestartBackoff, runs: Sequence[float]) -> list[float]:
    """The delays the supervisor waits after workers of one position ran ``runs`` seconds each."""
    delays: list[float] = []
    restart = 0
    for ran_for in runs:
        restart = backoff.next_restart(restart, ran_for)
        delays.append(backoff.delay(restart))
    return delays


def test_restart_backoff_doubles_to_a_cap_while_workers_die_young() -> None:
    """A crash loop (each worker dead within healthy_after) waits 0.5, 1, 2 ... up to 10 s."""
    backoff = RestartBackoff(initial=0.5, maximum=10.0, healthy_after=2.0)
    delays = restart_delays(backoff, [0.3] * 7)
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_restart_backoff_starts_over_after_a_worker_that_started_fine() -> None:
    """One worker up for healthy_after ends a crash loop: the next restart waits ``initial``."""
    backoff = RestartBackoff(initial=0.5, maximum=10.0, healthy_after=2.0)
    delays = restart_delays(backoff, [0.3, 0.3, 0.3, 0.3, 2.0, 0.3, 0.3])
    assert delays == [0.5, 1.0, 2.0, 4.0, 0.5, 1.0, 2.0]


def test_restart_backoff_keeps_the_initial_delay_for_workers_killed_every_few_seconds() -> None:
    """The chaos run of issue 17: workers SIGKILLed 3-4 s after their start never wait longer."""
    assert restart_delays(RestartBackoff(), [3.5, 3.0, 4.0, 2.5, 3.5] * 4) == [0.5] * 20


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"initial": -1.0}, "initial must be at least 0"),
        ({"initial": 5.0, "maximum": 1.0}, r"maximum \(1.0\) must be at least initial \(5.0\)"),
        ({"healthy_after": -0.5}, "healthy_after must be at least 0"),
    ],
)
def test_restart_backoff_refuses_impossible_settings(
    settings: dict[str, float], message: str
) -> None:
    """Negative times and a cap below the first delay are refused when configured."""
    with pytest.raises(ValueError, match=message):
        RestartBackoff(**settings)


def test_supervisor_config_needs_at_least_one_worker() -> None:
    """A supervisor of zero workers is refused when configured."""
    with pytest.raises(ValueError, match="at least 1"):
        SupervisorConfig(workers=0)


# -- broker unreachable ------------------------------------------------------------------------


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections and never speaks AMQP (connects hang)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        yield server.getsockname()[1]


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("listener", ["refused", "silent"])
def test_unreachable_broker_exits_3_and_never_shows_the_password(
    listener: str, request: pytest.FixtureRequest
) -> None:
    """No broker at the URL: exit 3 within the connect deadline, stderr names it with ***."""
    port = 1 if listener == "refused" else request.getfixturevalue("silent_port")
    url = f"amqp://guest:hunter2@127.0.0.1:{port}/"
    began = time.monotonic()
    done = run_leveret(
        "tests.apps.slow_app:app",
        "--workers",
        "2",
        "--amqp-url",
        url,
        "--connect-timeout",
        "2",
        "--log-format",
        "json",
    )
    took = time.monotonic() - began
    assert done.returncode == EXIT_BROKER_UNREACHABLE, done.stderr
    assert took < 30
    last = done.stderr.strip().splitlines()[-1]
    redacted = f"amqp://guest:***@127.0.0.1:{port}/"
    assert last == f"leveret: cannot reach the broker at {redacted} within 2s"
    assert "hunter2" not in done.stdout + done.stderr
    unreachable = [
        json.loads(line) for line in done.stderr.splitlines() if '"broker_unreachable"' in line
    ]
    assert unreachable
    assert unreachable[0]["url"] == f"amqp://guest:***@127.0.0.1:{port}/"
    assert '"worker_restarted"' not in done.stderr


async def test_serve_returns_3_when_the_broker_is_unreachable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``serve`` turns BrokerUnreachable at start-up into EXIT_BROKER_UNREACHABLE."""
    service = Service("idle")
    app = App(
        [service],
        transport=AmqpTransport(
            "amqp://guest:hunter2@127.0.0.1:1/", config=AmqpConfig(connect_timeout=2.0)
        ),
    )
    assert await serve(app, asyncio.Event()) == EXIT_BROKER_UNREACHABLE
    assert "hunter2" not in capsys.readouterr().out


async def test_serve_waits_for_a_broker_that_comes_up_within_the_deadline(
    amqp_url: str, prefix: str
) -> None:
    """A worker started while the broker refuses connections keeps trying until the connect
    deadline, and serves once the broker is up (the proxy resets, then passes)."""
    from urllib.parse import urlsplit

    from tests.support.fault_proxy import ProxyMode, fault_proxy

    parts = urlsplit(amqp_url)
    async with fault_proxy(parts.hostname or "127.0.0.1", parts.port or 5672) as proxy:
        proxy.set_mode(ProxyMode.RESET)
        app = App(
            [Service("idle")],
            config=AppConfig(prefix=prefix),
            transport=AmqpTransport(
                proxy.url_for(amqp_url), config=AmqpConfig(connect_timeout=30.0)
            ),
        )
        stop = asyncio.Event()
        serving = asyncio.create_task(serve(app, stop))
        await eventually(lambda: proxy.accepted >= 2, timeout=20, what="a second attempt")
        assert not serving.done()
        proxy.set_mode(ProxyMode.PASS)
        await eventually(lambda: proxy.connections > 0, timeout=20, what="a connection")
        await eventually(lambda: app._started, timeout=20, what="the app to start")
        stop.set()
        assert await asyncio.wait_for(serving, 30) == EXIT_OK


# -- the in-process lifecycle ------------------------------------------------------------------


class GivingUpTransport(MemoryTransport):
    """The memory transport plus the AMQP transport's ``wait_failed``, failing on demand."""

    def __init__(self) -> None:
        super().__init__(MemoryBroker())
        self.failure: asyncio.Future[BaseException] | None = None

    async def wait_failed(self) -> BaseException:
        self.failure = asyncio.get_running_loop().create_future()
        return await self.failure


async def test_serve_returns_4_when_the_transport_gives_up() -> None:
    """A transport that cannot recover while serving makes ``serve`` return 4 (restart me)."""
    transport = GivingUpTransport()
    app = App([Service("idle")], transport=transport)
    serving = asyncio.create_task(serve(app, asyncio.Event()))
    await eventually(
        lambda: transport.failure is not None, timeout=10, what="serve to watch the transport"
    )
    assert transport.failure is not None
    transport.failure.set_result(ConnectionError("consumers not restored"))
    assert await serving == EXIT_TRANSPORT_FAILED


async def test_serve_lets_an_in_flight_handler_finish_then_returns_0() -> None:
    """Stop while a handler runs: the handler completes and its message is acked, then exit 0."""
    entered, release = asyncio.Event(), asyncio.Event()
    finished: list[int] = []
    service = Service("slow")

    @service.command
    async def work(cmd: Work) -> None:
        entered.set()
        await release.wait()
        finished.append(cmd.n)

    broker = MemoryBroker()
    app = App([service], transport=MemoryTransport(broker), config=AppConfig(prefix="drain"))
    sender = App([service], transport=MemoryTransport(broker), config=AppConfig(prefix="drain"))
    stop = asyncio.Event()
    serving = asyncio.create_task(serve(app, stop))
    await sender.start(consume=False)
    try:
        await sender.send(Work(n=7))
        async with asyncio.timeout(10):
            await entered.wait()
        stop.set()
        release.set()
        assert await serving == EXIT_OK
        assert finished == [7]
        assert await sender.transport.queue_depth(work_queue(sender)) == 0
    finally:
        await sender.stop(grace=0)


# -- usage errors ------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_workers_run_on_uvloop_when_installed_unless_turned_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With uvloop installed a worker's loop is uvloop's; LEVERET_LOOP=asyncio keeps asyncio's."""
    pytest.importorskip("uvloop")
    monkeypatch.delenv(LOOP_ENV, raising=False)
    factory = loop_factory()
    assert factory is not None
    loop = factory()
    try:
        assert type(loop).__module__.startswith("uvloop")
    finally:
        loop.close()
    monkeypatch.setenv(LOOP_ENV, "asyncio")
    assert loop_factory() is None


def test_unknown_event_loop_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """LEVERET_LOOP names asyncio or uvloop; anything else is refused with what to set."""
    monkeypatch.setenv(LOOP_ENV, "trio")
    with pytest.raises(ConfigurationError, match="use asyncio or uvloop"):
        loop_factory()


def test_memory_app_with_several_workers_is_refused() -> None:
    """``--workers 2`` on a memory:// app exits 2 naming both ways out, before any worker starts."""
    done = run_leveret("tests.apps.slow_app:app", "--workers", "2", "--log-format", "json")
    assert done.returncode == EXIT_CONFIGURATION
    assert "in-process broker" in done.stderr
    assert "--workers 1" in done.stderr
    assert "--amqp-url" in done.stderr
    assert "worker_spawned" not in done.stderr


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("tests.apps.no_such_module:app", "no module named 'tests.apps.no_such_module'"),
        ("tests.apps.slow_app:missing", "module 'tests.apps.slow_app' has no attribute 'missing'"),
        (
            "tests.apps.slow_app:Work",
            "tests.apps.slow_app:Work is the class Work, not a framework.App",
        ),
        ("tests.apps.slow_app", "'tests.apps.slow_app' is not MODULE:APP"),
    ],
)
def test_bad_app_spec_exits_2_with_one_clear_error(spec: str, message: str) -> None:
    """A MODULE:APP that does not name an App is reported once, before any worker, with exit 2."""
    done = run_leveret(spec, "--workers", "2", "--amqp-url", "amqp://guest:guest@127.0.0.1:1/")
    assert done.returncode == EXIT_CONFIGURATION
    assert done.stderr.count(message) == 1, done.stderr
    assert done.stderr.startswith("leveret: ")
    assert "worker_spawned" not in done.stderr


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.parametrize("workers", ["0", "-1", "two"])
def test_workers_must_be_a_positive_number(workers: str) -> None:
    """``--workers`` below 1 or not a number is a usage error (exit 2)."""
    done = run_leveret("tests.apps.slow_app:app", "--workers", workers)
    assert done.returncode == 2
    assert "--workers" in done.stderr


def test_load_app_names_where_an_import_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception while importing the app's module is reported with its type, text and line."""
    (tmp_path / "broken_app_for_leveret.py").write_text(
        "URL = 'amqp://u:hunter2@h/'\nraise RuntimeError(f'cannot use {URL}')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(AppLoadError) as caught:
        load_app("broken_app_for_leveret:app")
    text = str(caught.value)
    assert "importing module 'broken_app_for_leveret' failed: RuntimeError: cannot use" in text
    assert "broken_app_for_leveret.py:2" in text
    assert "hunter2" not in text
    assert "amqp://u:***@h/" in text
    sys.modules.pop("broken_app_for_leveret", None)


# -- logging -----------------------------------------------------------------------------------


class TtyStream(io.StringIO):
    """A text stream that claims to be a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def clean_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Undo ``configure_logging``: structlog defaults, the root logger's handlers and level."""
    import logging

    monkeypatch.delenv("LEVERET_LOG_LEVEL", raising=False)
    monkeypatch.delenv("LEVERET_LOG_FORMAT", raising=False)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.reset_defaults()
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


def test_redact_credentials_masks_passwords_in_every_string_value() -> None:
    """The processor masks ``user:password@`` in top-level, nested and event strings alike."""
    event = {
        "event": "connect to amqp://app:s3cret@rabbit:5672/shop failed",
        "url": "amqps://app:p%40ss@rabbit/",
        "nested": {"urls": ["postgresql://db:pw@pg/shop", ("amqp://:only@h/",)]},
        "count": 3,
        "plain": "amqp://rabbit:5672/shop",
    }
    out = redact_credentials(None, "info", event)
    assert out["event"] == "connect to amqp://app:***@rabbit:5672/shop failed"
    assert out["url"] == "amqps://app:***@rabbit/"
    assert out["nested"] == {"urls": ["postgresql://db:***@pg/shop", ("amqp://:***@h/",)]}
    assert out["count"] == 3
    assert out["plain"] == "amqp://rabbit:5672/shop"
    assert "s3cret" not in repr(out)
    assert "pw@" not in repr(out)


def test_redact_text_handles_odd_passwords() -> None:
    """Passwords with ``/`` or ``:`` and several URLs in one text are all masked."""
    text = "a amqp://u:pa/ss:x@h1/ b redis://:tok@h2:6379/0 c http://h3/x@y"
    assert redact_text(text) == "a amqp://u:***@h1/ b redis://:***@h2:6379/0 c http://h3/x@y"


def test_json_lines_when_not_a_terminal(clean_logging: None) -> None:
    """Off a terminal the logs are JSON with timestamp, level, logger and a redacted traceback."""
    stream = io.StringIO()
    configure_logging(stream=stream)
    log = structlog.get_logger("leveret.test")
    log.info("worker_started", url="amqp://guest:hunter2@h:5672/", index=1)
    try:
        raise RuntimeError("lost amqp://guest:hunter2@h:5672/")
    except RuntimeError:
        log.exception("worker_failed")
    started, failed = (json.loads(line) for line in stream.getvalue().splitlines())
    assert started["event"] == "worker_started"
    assert started["level"] == "info"
    assert started["logger"] == "leveret.test"
    assert started["url"] == "amqp://guest:***@h:5672/"
    assert started["index"] == 1
    assert started["timestamp"].endswith("Z")
    assert "RuntimeError: lost amqp://guest:***@h:5672/" in failed["exception"]
    assert "hunter2" not in stream.getvalue()


def test_console_lines_on_a_terminal(clean_logging: None) -> None:
    """On a terminal the logs are readable lines, tracebacks included, passwords still masked."""
    stream = TtyStream()
    configure_logging(stream=stream)
    log = structlog.get_logger("leveret.test")
    try:
        raise RuntimeError("lost amqp://guest:hunter2@h:5672/")
    except RuntimeError:
        log.exception("worker_failed", url="amqp://guest:hunter2@h:5672/")
    output = stream.getvalue()
    assert "worker_failed" in output
    assert not output.lstrip().startswith("{")
    assert "RuntimeError: lost amqp://guest:***@h:5672/" in output
    assert "hunter2" not in output


def test_environment_overrides_format_and_level(
    clean_logging: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``LEVERET_LOG_FORMAT`` and ``LEVERET_LOG_LEVEL`` win over the arguments."""
    monkeypatch.setenv("LEVERET_LOG_FORMAT", "json")
    monkeypatch.setenv("LEVERET_LOG_LEVEL", "warning")
    stream = TtyStream()
    configure_logging(json=False, level="debug", stream=stream)
    log = structlog.get_logger("leveret.test")
    log.info("ignored_fact")
    log.warning("breaker_opened", destination="payments")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0])["event"] == "breaker_opened"


def test_standard_library_records_are_formatted_and_redacted(clean_logging: None) -> None:
    """Warnings from libraries using ``logging`` (aio-pika) come out as JSON, passwords masked."""
    import logging

    stream = io.StringIO()
    configure_logging(json=True, stream=stream)
    logging.getLogger("aio_pika.robust_connection").warning(
        "reconnecting to %s", "amqp://guest:hunter2@h/"
    )
    logging.getLogger("aio_pika.robust_connection").info("chatty detail")
    (line,) = stream.getvalue().splitlines()
    record = json.loads(line)
    assert record["event"] == "reconnecting to amqp://guest:***@h/"
    assert record["logger"] == "aio_pika.robust_connection"
    assert record["level"] == "warning"


def test_aio_pikas_own_lines_about_a_lost_connection_are_dropped(clean_logging: None) -> None:
    """A traceback per channel and a line per reconnect attempt from aio-pika are left out
    (the transport logs the loss and the recovery once, naming the node); its other warnings
    pass."""
    import logging

    stream = io.StringIO()
    configure_logging(json=True, stream=stream)
    try:
        raise RuntimeError("connection closed")
    except RuntimeError:
        logging.getLogger("aio_pika.tools").exception(
            "Callback %r error: %s", "<OneShotCallback _on_close>", "closed"
        )
    logging.getLogger("aio_pika.robust_connection").warning(
        'Connection attempt to "%s" failed: %s. Reconnecting after %r seconds.', "h", "x", 1
    )
    logging.getLogger("aio_pika.robust_connection").warning("something else went wrong")
    (line,) = stream.getvalue().splitlines()
    assert json.loads(line)["event"] == "something else went wrong"


def test_unknown_level_or_format_is_a_configuration_error(
    clean_logging: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A misspelt level or format names the setting and the accepted values."""
    with pytest.raises(ConfigurationError, match="debug, info, warning, error, critical"):
        configure_logging(level="verbose", stream=io.StringIO())
    monkeypatch.setenv("LEVERET_LOG_FORMAT", "xml")
    with pytest.raises(ConfigurationError, match=r"LEVERET_LOG_FORMAT='xml'.*json or console"):
        configure_logging(stream=io.StringIO())
