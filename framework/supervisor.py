"""The supervisor behind ``leveret run``: N worker processes, restarted when they die.

* Each worker is ``python -m framework.worker MODULE:APP --index I`` with the supervisor's
  environment, working directory, stdout and stderr.
* SIGTERM or SIGINT: every worker gets SIGTERM and drains; the supervisor waits up to
  ``stop_timeout`` seconds, then kills the stragglers (exit 1). All drained: exit 0.
* A worker that exits while the supervisor is not stopping is restarted (``RestartBackoff``):
  after 0.5 s if it had run for 2 s, whatever ended it; a crash loop of workers dying
  sooner waits longer each time, up to 10 s. Not when its first start could not reach the broker
  or load the app: then every worker is stopped and the supervisor exits with that worker's code
  (3 or 2). A *restarted* worker that cannot reach the broker is restarted again: that is an
  outage.
* With ``health_port``, ``/live`` and ``/ready`` are served on that port, aggregated over the
  workers, each asked on a Unix socket of its own (``framework.health.http``).
* No orphans: workers are killed if the supervisor fails, and on Linux each worker asks the kernel
  for SIGTERM should the supervisor die without cleaning up (SIGKILL, OOM).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog

from framework.backoff import Backoff
from framework.health.http import HEALTH_SOCKET_ENV
from framework.urls import redact
from framework.worker import (
    EXIT_BROKER_UNREACHABLE,
    EXIT_CONFIGURATION,
    EXIT_FAILED,
    EXIT_OK,
    HEALTH_CHECK_TIMEOUT,
    WORKER_URL_ENV,
)

if TYPE_CHECKING:
    from framework.metrics import MetricsServer

__all__ = ["RestartBackoff", "Supervisor", "SupervisorConfig"]

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# prometheus-client's multiprocess directory (framework.metrics.MULTIPROCESS_ENV; not imported
# here, so that the supervisor runs without the `prometheus` extra).
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
# A worker killed by the stop signal itself (before it installed its handlers) had nothing in
# flight: that is a clean stop too.
_CLEAN_STOP = frozenset({EXIT_OK, -signal.SIGTERM, -signal.SIGINT})
_FATAL = frozenset({EXIT_BROKER_UNREACHABLE, EXIT_CONFIGURATION})
_log = structlog.get_logger("leveret.supervisor")


@dataclass(frozen=True, slots=True)
class RestartBackoff:
    """How long a worker that died waits before it is started again.

    A worker that had run ``healthy_after`` seconds had started fine, whatever ended it (a
    SIGKILL, the OOM killer, a lost connection): it is restarted after ``initial`` seconds, and
    so the sequence starts over. Only a worker dying sooner than that is in a crash loop: each
    such death waits twice as long as the one before, up to ``maximum``. The threshold is short,
    like supervisord's ``startsecs`` rather than Kubernetes' ten minutes: a worker killed from
    outside every few seconds (an OOM killer, a chaos test) must not wait longer each time.

    Args:
        initial: seconds before the first restart of a sequence.
        maximum: the cap of the doubling.
        healthy_after: seconds from its start after which a worker counts as started fine; past
            its imports and its connect, well short of the interval of an outside killer.

    Raises:
        ValueError: a negative delay, a ``maximum`` below ``initial``, or a negative
            ``healthy_after``.
    """

    initial: float = 0.5
    maximum: float = 10.0
    healthy_after: float = 2.0
    _doubling: Backoff = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.initial < 0:
            raise ValueError(f"initial must be at least 0 seconds, got {self.initial}")
        if self.maximum < self.initial:
            raise ValueError(
                f"maximum ({self.maximum}) must be at least initial ({self.initial}) seconds"
            )
        if self.healthy_after < 0:
            raise ValueError(f"healthy_after must be at least 0 seconds, got {self.healthy_after}")
        doubling = Backoff(initial=self.initial, multiplier=2, maximum=self.maximum, jitter=0)
        object.__setattr__(self, "_doubling", doubling)

    def next_restart(self, previous: int, ran_for: float) -> int:
        """The number in its sequence of the restart after a worker that ran ``ran_for``
        seconds: 1 after one that had started fine, else one more than ``previous`` (the
        number of the restart before; 0: this worker position was never restarted)."""
        if previous == 0 or ran_for >= self.healthy_after:
            return 1
        return previous + 1

    def delay(self, restart: int) -> float:
        """Seconds before restart number ``restart`` of a sequence."""
        return self._doubling.delay(restart)


@dataclass(frozen=True, slots=True)
class SupervisorConfig:
    """What the supervisor runs and how it stops.

    Args:
        workers: how many worker processes (at least 1).
        url: broker URL the workers use instead of the app's own (passed in their environment,
            never on their command line).
        broker_url: the URL the workers connect to, for error messages (shown redacted).
        connect_timeout: the workers' connect deadline, passed on when set.
        stop_timeout: seconds between forwarding SIGTERM and killing workers still running;
            the app's ``shutdown_grace`` plus a margin for closing connections.
        backoff: restart delays.
        python: the interpreter that runs the workers.
        health_port: serve ``/live`` and ``/ready`` on this port, aggregated over the workers
            (``framework.health.http``); None serves nothing.
        health_host: the address to serve them on.
        metrics: the ``--metrics-port`` endpoint: workers then count into its directory.
    """

    workers: int = 1
    url: str | None = None
    broker_url: str = ""
    connect_timeout: float | None = None
    stop_timeout: float = 20.0
    backoff: RestartBackoff = field(default_factory=RestartBackoff)
    python: str = sys.executable
    health_port: int | None = None
    health_host: str = "0.0.0.0"  # probes come from outside the container
    metrics: MetricsServer | None = None

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")


@dataclass(slots=True)
class _Slot:
    """One worker position: its current process and restart history."""

    index: int
    process: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    sequence: int = 0  # the number of its last restart in the current sequence (RestartBackoff)
    restarts: int = 0
    final_code: int | None = None


class Supervisor:
    """Run ``config.workers`` workers of ``app_spec`` until a signal or a fatal worker exit.

    Args:
        app_spec: ``MODULE:APP``, checked by the caller (``load_app``) before the supervisor runs.
        config: worker count, broker URL and timings.
    """

    def __init__(self, app_spec: str, *, config: SupervisorConfig) -> None:
        self.app_spec = app_spec
        self.config = config
        self._slots = [_Slot(index) for index in range(config.workers)]
        self._stop = asyncio.Event()
        self._fatal: int | None = None
        self._killed = False
        self._health_dir: str | None = None

    @property
    def pids(self) -> list[int]:
        """Pids of the workers running now."""
        return [
            slot.process.pid
            for slot in self._slots
            if slot.process is not None and slot.process.returncode is None
        ]

    def stop(self) -> None:
        """Begin a drain, as SIGTERM would."""
        self._stop.set()

    async def run(self) -> int:
        """Start the workers, keep them running, drain on a signal; return the exit code."""
        loop = asyncio.get_running_loop()
        for sig in _STOP_SIGNALS:
            loop.add_signal_handler(sig, self._on_signal, sig)
        _log.info(
            "supervisor_started",
            app=self.app_spec,
            workers=self.config.workers,
            pid=os.getpid(),
            url=redact(self.config.broker_url) or None,
        )
        health = None
        try:
            health = await self._serve_health()
        except OSError as exc:
            for sig in _STOP_SIGNALS:
                loop.remove_signal_handler(sig)
            print(
                f"leveret: cannot serve health on port {self.config.health_port}: {exc}",
                file=sys.stderr,
                flush=True,
            )
            return EXIT_CONFIGURATION
        try:
            async with asyncio.TaskGroup() as group:
                watchers = [group.create_task(self._keep_running(slot)) for slot in self._slots]
                await self._stop.wait()
                await self._drain(watchers)
        finally:
            for sig in _STOP_SIGNALS:
                loop.remove_signal_handler(sig)
            await self._kill_all()
            if health is not None:
                health.close()
            if self._health_dir is not None:
                shutil.rmtree(self._health_dir, ignore_errors=True)
        code = self._exit_code()
        _log.info("supervisor_stopped", exit_code=code)
        fatal = self._fatal_message()
        if fatal is not None:
            print(f"leveret: {fatal}", file=sys.stderr, flush=True)
        return code

    async def _serve_health(self) -> asyncio.Server | None:
        """The aggregated health endpoints; each worker serves its own on a Unix socket."""
        if self.config.health_port is None:
            return None
        from framework.health.http import serve_tcp
        from framework.health.supervised import WorkerView, supervisor_endpoints

        self._health_dir = tempfile.mkdtemp(prefix="leveret-health-")

        def workers() -> list[WorkerView]:
            return [
                WorkerView(
                    index=slot.index,
                    pid=slot.process.pid
                    if slot.process is not None and slot.process.returncode is None
                    else None,
                    socket=self._health_socket(slot),
                )
                for slot in self._slots
            ]

        endpoints = supervisor_endpoints(workers, timeout=2 * HEALTH_CHECK_TIMEOUT + 1.0)
        server = await serve_tcp(self.config.health_host, self.config.health_port, endpoints)
        _log.info("health_serving", host=self.config.health_host, port=self.config.health_port)
        return server

    def _health_socket(self, slot: _Slot) -> str:
        assert self._health_dir is not None
        return os.path.join(self._health_dir, f"worker-{slot.index}.sock")

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self._stop.is_set():
            _log.info("supervisor_signal_ignored", signal=name, reason="already stopping")
            return
        _log.info("supervisor_stopping", signal=name)
        self._stop.set()

    async def _keep_running(self, slot: _Slot) -> None:
        while True:
            process = await self._spawn(slot)
            if slot.restarts:
                _log.info(
                    "worker_restarted", index=slot.index, pid=process.pid, restarts=slot.restarts
                )
            code = await process.wait()
            if self.config.metrics is not None:
                self.config.metrics.worker_exited(process.pid)
            ran_for = time.monotonic() - slot.started_at
            if self._stop.is_set():
                slot.final_code = code
                _log.info(
                    "worker_exited",
                    index=slot.index,
                    pid=process.pid,
                    stopping=True,
                    **_exit_fields(code),
                )
                return
            # A wrong URL or app fails the first start; a restarted worker that cannot reach
            # the broker is in an outage (the fault suite: a link blackholed, then confirms
            # dropped) and is restarted like any other, or one outage would stop the service.
            fatal = code in _FATAL and not (code == EXIT_BROKER_UNREACHABLE and slot.restarts)
            delay = None
            if not fatal:
                slot.sequence = self.config.backoff.next_restart(slot.sequence, ran_for)
                delay = self.config.backoff.delay(slot.sequence)
            _log.warning(
                "worker_exited",
                index=slot.index,
                pid=process.pid,
                ran_for=round(ran_for, 3),
                restart_in=delay,
                **_exit_fields(code),
            )
            if delay is None:
                self._fail(code)
                return
            try:
                async with asyncio.timeout(delay):
                    await self._stop.wait()
                return  # stopping while waiting to restart: nothing left to drain here
            except TimeoutError:
                slot.restarts += 1

    async def _spawn(self, slot: _Slot) -> asyncio.subprocess.Process:
        command = [
            self.config.python,
            "-m",
            "framework.worker",
            self.app_spec,
            "--index",
            str(slot.index),
            "--supervisor-pid",
            str(os.getpid()),
        ]
        if self.config.connect_timeout is not None:
            command += ["--connect-timeout", repr(self.config.connect_timeout)]
        if self.config.metrics is not None:
            command.append("--metrics")
        process = await asyncio.create_subprocess_exec(
            *command, env=self._worker_env(slot), stdin=asyncio.subprocess.DEVNULL
        )
        slot.process = process
        slot.started_at = time.monotonic()
        _log.info("worker_spawned", index=slot.index, pid=process.pid)
        if self._stop.is_set():  # the drain began while this one was starting
            _send(process, signal.SIGTERM)
        return process

    def _worker_env(self, slot: _Slot) -> Mapping[str, str]:
        env = dict(os.environ)
        if self.config.url is not None:
            env[WORKER_URL_ENV] = self.config.url
        else:
            env.pop(WORKER_URL_ENV, None)
        env.pop(HEALTH_SOCKET_ENV, None)
        if self._health_dir is not None:
            env[HEALTH_SOCKET_ENV] = self._health_socket(slot)
        if self.config.metrics is not None:
            env[MULTIPROCESS_ENV] = self.config.metrics.directory
        return env

    def _fail(self, code: int) -> None:
        if self._fatal is None:
            self._fatal = code
        if not self._stop.is_set():
            _log.error("supervisor_giving_up", exit_code=code)
            self._stop.set()

    async def _drain(self, watchers: Sequence[asyncio.Task[None]]) -> None:
        running = [s for s in self._slots if s.process is not None and s.process.returncode is None]
        _log.info(
            "workers_draining",
            pids=[s.process.pid for s in running if s.process],
            timeout=self.config.stop_timeout,
        )
        for slot in running:
            if slot.process is not None:
                _send(slot.process, signal.SIGTERM)
        _, pending = await asyncio.wait(watchers, timeout=self.config.stop_timeout)
        if not pending:
            return
        stragglers = self.pids
        _log.error("workers_killed", pids=stragglers, timeout=self.config.stop_timeout)
        self._killed = True
        for slot in self._slots:
            if slot.process is not None and slot.process.returncode is None:
                _send(slot.process, signal.SIGKILL)
        await asyncio.wait(pending)

    async def _kill_all(self) -> None:
        """Last resort on the way out: no worker outlives the supervisor."""
        alive = [
            s.process for s in self._slots if s.process is not None and s.process.returncode is None
        ]
        for process in alive:
            _send(process, signal.SIGKILL)
        for process in alive:
            try:
                async with asyncio.timeout(5.0):
                    await process.wait()
            except TimeoutError:
                _log.error("worker_not_reaped", pid=process.pid)

    def _exit_code(self) -> int:
        if self._fatal is not None:
            return self._fatal
        if self._killed:
            return EXIT_FAILED
        finals = [s.final_code for s in self._slots if s.final_code is not None]
        return EXIT_OK if all(code in _CLEAN_STOP for code in finals) else EXIT_FAILED

    def _fatal_message(self) -> str | None:
        if self._fatal == EXIT_BROKER_UNREACHABLE:
            within = (
                f" within {self.config.connect_timeout:g}s"
                if self.config.connect_timeout is not None
                else ""
            )
            where = f" at {redact(self.config.broker_url)}" if self.config.broker_url else ""
            return f"cannot reach the broker{where}{within}"
        if self._fatal == EXIT_CONFIGURATION:
            return (
                "a worker could not load or start the app, or stopped on a configuration error "
                "(such as a publish the broker refused for lack of permission); see its log above"
            )
        if self._killed:
            return f"workers still running {self.config.stop_timeout:g}s after SIGTERM were killed"
        return None


def _exit_fields(code: int) -> dict[str, object]:
    if code >= 0:
        return {"exit_code": code}
    try:
        return {"signal": signal.Signals(-code).name}
    except ValueError:
        return {"signal": -code}


def _send(process: asyncio.subprocess.Process, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # it exited on its own meanwhile
        process.send_signal(sig)
