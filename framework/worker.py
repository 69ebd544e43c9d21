"""One worker process: load the app, serve it until SIGTERM or SIGINT, drain, exit.

``leveret run`` starts these under a supervisor (``framework.supervisor``); run one by hand with
``python -m framework.worker MODULE:APP [--url URL] [--index I]``.

The exit code tells the supervisor what to do next (the codes every ``leveret`` command uses,
defined in ``framework.cli.exits``):

* ``EXIT_OK`` (0): stopped by a signal after draining.
* ``EXIT_FAILED`` (1): an unexpected error; the supervisor restarts the worker.
* ``EXIT_CONFIGURATION`` (2): the app cannot be loaded or set up (the broker refused its
  credentials or vhost among them), or failed on a configuration error while serving (a publish
  refused for lack of permission); restarting will not help.
* ``EXIT_BROKER_UNREACHABLE`` (3): no broker within the connect deadline at start-up.
* ``EXIT_TRANSPORT_FAILED`` (4): the connection failed for good while serving; the supervisor
  restarts the worker, which connects afresh.

With ``LEVERET_HEALTH_SOCKET`` set (the supervisor does it for ``--health-port``), the worker
serves ``GET /live`` and ``GET /ready`` on that Unix socket (``framework.health.http``).

The worker runs on uvloop when it is installed (``pip install 'leveret[uvloop]'``), unless
``LEVERET_LOOP=asyncio``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import dataclasses
import importlib
import os
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

import structlog

from framework.app import App
from framework.cli.exits import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
)
from framework.errors import BrokerUnreachable, ConfigurationError
from framework.logging import configure_logging, redact_text
from framework.urls import redact

__all__ = [
    "EXIT_BROKER_UNREACHABLE",
    "EXIT_CONFIGURATION",
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_TRANSPORT_FAILED",
    "WORKER_URL_ENV",
    "AppLoadError",
    "configure_transport",
    "connect_timeout_of",
    "load_app",
    "main",
    "serve",
]

# The worker's names for the codes every ``leveret`` command shares (``framework.cli.exits``).
EXIT_CONFIGURATION = EXIT_USAGE
EXIT_BROKER_UNREACHABLE = EXIT_UNREACHABLE
EXIT_TRANSPORT_FAILED = EXIT_INTERRUPTED

#: The supervisor hands a ``--amqp-url`` to its workers here rather than on their command line,
#: where any local user could read the password in ``ps``.
WORKER_URL_ENV = "LEVERET_WORKER_URL"
LOOP_ENV = "LEVERET_LOOP"  # "asyncio" keeps the standard loop even with uvloop installed

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
HEALTH_CHECK_TIMEOUT = 3.0  # deadline of each broker or store call of a readiness check
_PR_SET_PDEATHSIG = 1
_log = structlog.get_logger("leveret.worker")


class AppLoadError(ConfigurationError):
    """``MODULE:APP`` does not name an importable ``framework.App``; the message says why."""

    def __init__(self, spec: str, message: str) -> None:
        super().__init__(message)
        self.spec = spec


def load_app(spec: str) -> App:
    """Import ``module:attribute`` (the attribute may be dotted) and return the App it names.

    The current directory is put at the front of ``sys.path``, as ``python -m`` would, so that
    ``leveret run handlers.app:app`` finds the project's modules. A file path
    (``examples/hello.py:app``) is refused with the dotted module path to write instead.

    Raises:
        AppLoadError: the spec is malformed, the import fails, the attribute is missing or the
            object is not an App.
    """
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise AppLoadError(
            spec, f"{spec!r} is not MODULE:APP; name the module and its App, e.g. handlers.app:app"
        )
    if module_name.endswith(".py") or "/" in module_name or "\\" in module_name:
        raise AppLoadError(spec, _file_path_hint(spec, module_name, attribute))
    _put_cwd_on_path()
    module = _import(spec, module_name)
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            apps = sorted(name for name, value in vars(module).items() if isinstance(value, App))
            found = f"its apps are: {', '.join(apps)}" if apps else "it defines no App"
            raise AppLoadError(
                spec, f"module {module_name!r} has no attribute {attribute!r} ({found})"
            ) from None
    if not isinstance(target, App):
        raise AppLoadError(
            spec,
            f"{spec} is {_describe_object(target)}, not a framework.App: point at the App "
            "instance, e.g. `app = App([service], url=...)` in that module",
        )
    return target


def _file_path_hint(spec: str, path: str, attribute: str) -> str:
    """What to write instead of a file path: the dotted module path, from where to run it."""
    file = Path(path.replace("\\", "/"))
    if file.is_absolute() and file.is_relative_to(Path.cwd()):
        file = file.relative_to(Path.cwd())
    parts = [part for part in file.with_suffix("").parts if part not in ("", ".", "/")]
    where = f"{parts[0]}/" if len(parts) > 1 else f"{parts[0]}.py"
    return (
        f"{spec!r} is a file path: use the dotted module path: {'.'.join(parts)}:{attribute} "
        f"(run from the directory that holds {where})"
    )


def _put_cwd_on_path() -> None:
    """The current directory first on ``sys.path``: the project's ``handlers`` package wins over
    an installed one of the same name (``python -m`` does the same)."""
    cwd = os.getcwd()
    if sys.path[:1] in ([cwd], [""]):
        return
    if cwd in sys.path:
        sys.path.remove(cwd)
    sys.path.insert(0, cwd)


def _import(spec: str, module_name: str) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or module_name
        if module_name == missing or module_name.startswith(missing + "."):
            raise AppLoadError(
                spec,
                f"cannot import module {module_name!r}: no module named {missing!r} (run leveret "
                "from the project's directory or add that directory to PYTHONPATH)",
            ) from None
        raise AppLoadError(
            spec, f"importing module {module_name!r} failed: {_describe_error(exc)}"
        ) from exc
    except Exception as exc:
        raise AppLoadError(
            spec, f"importing module {module_name!r} failed: {_describe_error(exc)}"
        ) from exc


def _describe_error(exc: BaseException) -> str:
    where = ""
    frames = traceback.extract_tb(exc.__traceback__)
    if frames and not isinstance(exc, SyntaxError):  # a SyntaxError names its own place
        where = f" (at {frames[-1].filename}:{frames[-1].lineno})"
    return redact_text(f"{type(exc).__name__}: {exc}{where}")


def _describe_object(obj: object) -> str:
    if isinstance(obj, type):
        return f"the class {obj.__qualname__}"
    if isinstance(obj, ModuleType):
        return f"the module {obj.__name__}"
    return f"a {type(obj).__name__}"


def configure_transport(
    app: App, *, url: str | None = None, connect_timeout: float | None = None
) -> None:
    """Point ``app`` at ``url`` and/or give its AMQP transport another connect deadline.

    Raises:
        ConfigurationError: the URL scheme is unsupported or the app is already running.
    """
    if url is not None:
        app.use_url(url)
    if connect_timeout is None:
        return
    from framework.transport.amqp import AmqpConfig, AmqpTransport

    if not _is_amqp(app.url):
        if isinstance(app.transport, AmqpTransport):
            raise ConfigurationError(
                "--connect-timeout needs the app's broker URL: build the app with "
                "App(..., url='amqp://...') rather than transport=, or pass --amqp-url"
            )
        return  # the in-process broker connects at once
    base = app.transport.config if isinstance(app.transport, AmqpTransport) else AmqpConfig()
    config = dataclasses.replace(base, connect_timeout=connect_timeout)
    app.use_transport(AmqpTransport(app.url, config=config))


def connect_timeout_of(app: App) -> float | None:
    """The connect deadline of the app's transport, if it has one (AMQP)."""
    config = getattr(app.transport, "config", None)
    timeout = getattr(config, "connect_timeout", None)
    return float(timeout) if isinstance(timeout, int | float) else None


def _is_amqp(url: str) -> bool:
    return url.split("://", 1)[0].lower() in ("amqp", "amqps")


_START_RETRY_INTERVAL = 0.5


async def _start_within_deadline(app: App) -> None:
    """``app.start()``, tried again while the broker refuses, until the connect deadline.

    A worker may come up before its broker (a host booting, a broker restarting): a refused
    connection fails one attempt at once, so without this a worker started a second early
    exited 3 and its supervisor stopped the service (found by the fault suite). A broker that
    never answers uses up the deadline in its one attempt, as before.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + (connect_timeout_of(app) or 0.0)
    while True:
        try:
            await app.start()
            return
        except BrokerUnreachable as exc:
            # A refused login or vhost (BrokerAccessDenied) is refused again: not retried.
            if (
                isinstance(exc, ConfigurationError)
                or loop.time() + _START_RETRY_INTERVAL >= deadline
            ):
                raise
            _log.info("broker_not_reachable_yet", url=exc.url, reason=exc.reason)
        await asyncio.sleep(_START_RETRY_INTERVAL)


async def serve(app: App, stop: asyncio.Event) -> int:
    """Start ``app``, serve until ``stop`` is set or the transport fails, drain; the exit code.

    Draining is ``App.stop``: consumers are cancelled, in-flight handlers get
    ``config.shutdown_grace`` seconds, the rest are nacked with requeue.
    """
    # App.run() would serve too, but it raises BrokerUnreachable both when the first connect
    # fails and when recovery fails later; the supervisor must tell those apart (3 vs 4).
    starting = asyncio.create_task(_start_within_deadline(app))
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        starting.cancel()
        raise
    finally:
        stopping.cancel()
    if not starting.done():  # a signal arrived while connecting: nothing is in flight yet
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await starting
        await _close_quietly(app)
        return EXIT_OK
    error = starting.exception()
    if isinstance(error, ConfigurationError):  # a refused login too (BrokerAccessDenied)
        _log.error("app_start_failed", error=str(error))
        await _close_quietly(app)
        return EXIT_CONFIGURATION
    if isinstance(error, BrokerUnreachable):
        _log.error("broker_unreachable", url=error.url, reason=error.reason)
        await _close_quietly(app)
        return EXIT_BROKER_UNREACHABLE
    if error is not None:
        await _close_quietly(app)
        raise error

    failure = await app.wait_stopped_or_failed(stop)
    await app.stop()
    if isinstance(failure, ConfigurationError):  # logged by the app as app_failed
        return EXIT_CONFIGURATION
    if failure is not None:
        _log.error("transport_failed", error=str(failure), error_type=type(failure).__name__)
        return EXIT_TRANSPORT_FAILED
    return EXIT_OK


async def _close_quietly(app: App) -> None:
    try:
        await app.stop(grace=0)
        await app.transport.close()
    except Exception as exc:
        _log.warning("transport_close_failed", error=str(exc))


class _SignalLatch:
    """Remembers a stop signal that arrives before the event loop runs (during imports)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.install()

    def install(self) -> None:
        for sig in _STOP_SIGNALS:
            signal.signal(sig, self._record)

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum


def _stop_with_parent(parent_pid: int | None) -> None:
    """Ask Linux to send us SIGTERM (a drain) when the supervisor dies, even by SIGKILL."""
    if parent_pid is None or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the supervisor died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


async def _run(app: App, latch: _SignalLatch, *, index: int) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal(signum: int) -> None:
        if not stop.is_set():
            _log.info("worker_stopping", signal=signal.Signals(signum).name)
        stop.set()

    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, on_signal, sig)
    if latch.received is not None:
        on_signal(latch.received)
    _log.info("worker_started", pid=os.getpid(), url=redact(app.url))
    health = await _serve_health(app)
    try:
        return await serve(app, stop)
    finally:
        for sig in _STOP_SIGNALS:
            loop.remove_signal_handler(sig)
        if health is not None:
            health.close()


async def _serve_health(app: App) -> asyncio.Server | None:
    """``/live`` and ``/ready`` on the Unix socket the supervisor named, if it named one."""
    from framework.health.http import HEALTH_SOCKET_ENV, serve_unix, worker_endpoints

    path = os.environ.get(HEALTH_SOCKET_ENV)
    if not path:
        return None
    try:
        return await serve_unix(path, worker_endpoints(app, timeout=HEALTH_CHECK_TIMEOUT))
    except OSError as exc:
        _log.error("health_socket_failed", path=path, error=str(exc))
        return None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m framework.worker", description="Run one leveret worker process."
    )
    parser.add_argument("app", metavar="MODULE:APP", help="the App to serve, e.g. handlers.app:app")
    parser.add_argument(
        "--url", help=f"broker URL instead of the app's own (or set {WORKER_URL_ENV})"
    )
    parser.add_argument("--index", type=int, default=0, help="worker number, for the logs")
    parser.add_argument("--connect-timeout", type=float, default=None, metavar="SECONDS")
    parser.add_argument("--supervisor-pid", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--metrics",
        action="store_true",
        help="count into prometheus-client's multiprocess files (leveret run --metrics-port)",
    )
    return parser


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed and not turned off; None means asyncio's.

    Raises:
        ConfigurationError: ``LEVERET_LOOP`` is set to something else than asyncio or uvloop,
            or to uvloop while it is not installed.
    """
    wanted = os.environ.get(LOOP_ENV, "").strip().lower()
    if wanted not in ("", "asyncio", "uvloop"):
        raise ConfigurationError(f"{LOOP_ENV}={wanted!r}: use asyncio or uvloop")
    if wanted == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if wanted == "uvloop":
            raise ConfigurationError(
                f"{LOOP_ENV}=uvloop but uvloop is not installed: pip install 'leveret[uvloop]'"
            ) from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def main(argv: Sequence[str] | None = None) -> int:
    """Run one worker until it is told to stop; return its exit code (see the module docstring)."""
    latch = _SignalLatch()
    args = _parser().parse_args(argv)
    _stop_with_parent(args.supervisor_pid)
    try:
        configure_logging()
    except ConfigurationError as exc:
        print(f"leveret: {exc}", file=sys.stderr)
        return EXIT_CONFIGURATION
    structlog.contextvars.bind_contextvars(worker=args.index)
    try:
        app = load_app(args.app)
        configure_transport(
            app,
            url=args.url or os.environ.get(WORKER_URL_ENV) or None,
            connect_timeout=args.connect_timeout,
        )
        if args.metrics:
            from framework.metrics import PrometheusMetrics

            app.observe(PrometheusMetrics())
    except ConfigurationError as exc:
        _log.error("app_load_failed", app=args.app, error=str(exc))
        return EXIT_CONFIGURATION
    try:
        new_loop = loop_factory()
    except ConfigurationError as exc:
        _log.error("event_loop_unavailable", error=str(exc))
        return EXIT_CONFIGURATION
    try:
        with asyncio.Runner(loop_factory=new_loop) as runner:
            code = runner.run(_run(app, latch, index=args.index))
    except Exception:
        _log.exception("worker_failed")
        code = EXIT_FAILED
    latch.install()  # closing the loop reset the handlers; a late SIGTERM must not change the code
    _log.info("worker_stopped", pid=os.getpid(), exit_code=code)
    return code


if __name__ == "__main__":
    sys.exit(main())
