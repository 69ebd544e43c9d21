"""The ``leveret`` command line.

``leveret projections rebuild MODULE:APP NAME`` rebuilds a read model from its event log.

``leveret run MODULE:APP [--workers N] [--amqp-url URL] [--connect-timeout S]
[--log-format json|console] [--log-level LEVEL] [--metrics-port PORT]`` serves an app with a
supervisor and N workers.

``leveret contracts export|check`` and ``leveret asyncapi`` live in ``framework.schema.cli``;
``leveret breakers`` lives in ``framework.resilience.cli``;
``leveret sagas list|show|graph|resume|abort`` lives in ``framework.saga.cli``;
``leveret dlq list|show|replay|purge`` lives in ``framework.dlq.cli``;
``leveret status`` lives in ``framework.health.cli``;
``leveret queues migrate`` lives in ``framework.queues.cli``;
``leveret db upgrade|check`` lives in ``framework.store.cli``.

Exit codes of ``leveret run``: 0 drained cleanly after SIGTERM/SIGINT; 1 a worker had to be
killed or failed while draining; 2 a usage or configuration error (bad MODULE:APP, a memory://
app with several workers, a --metrics-port that cannot be bound); 3 the broker could not be
reached within the connect deadline. ``--upgrade-db`` upgrades the app's store (``leveret db
upgrade``) once, before the workers start; without it a worker on PostgreSQL refuses a schema
that is behind (exit 2).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Sequence
from importlib import metadata

import structlog

from framework.app import App
from framework.argtypes import port_number, positive_float, positive_int
from framework.dlq import cli as dlq_cli
from framework.errors import ConfigurationError
from framework.health import cli as status_cli
from framework.logging import LEVELS, LOG_FORMAT_ENV, LOG_LEVEL_ENV, configure_logging
from framework.queues import cli as queues_cli
from framework.resilience import cli as breakers_cli
from framework.saga import cli as saga_cli
from framework.schema import cli as schema_cli
from framework.store import cli as db_cli
from framework.store.base import StoreUnreachable
from framework.store.migrations import PendingStep
from framework.supervisor import Supervisor, SupervisorConfig
from framework.transport.memory import MemoryTransport
from framework.worker import (
    EXIT_BROKER_UNREACHABLE,
    EXIT_CONFIGURATION,
    EXIT_FAILED,
    configure_transport,
    connect_timeout_of,
    load_app,
)

__all__ = ["main"]

_log = structlog.get_logger("leveret.cli")

# Time for a worker to close its connections after its handlers' grace period (App.stop waits up
# to 5 s for cancelled handlers, then closes the transport).
STOP_MARGIN = 10.0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (``sys.argv[1:]`` by default), run the command, return its exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    command: Callable[[argparse.Namespace], int] | None = getattr(args, "command", None)
    if command is None:
        parser.print_help(sys.stderr)
        return EXIT_CONFIGURATION
    return command(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="leveret", description="Run and inspect leveret services on RabbitMQ."
    )
    parser.add_argument("--version", action="version", version=f"leveret {_version()}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="serve an app with N worker processes",
        description=(
            "Serve MODULE:APP with a supervisor and N worker processes. SIGTERM or SIGINT drains "
            "the workers (in-flight handlers get the app's shutdown_grace) and exits 0; a worker "
            "that dies is restarted; exit 3 when the broker cannot be reached in time."
        ),
    )
    run.add_argument("app", metavar="MODULE:APP", help="the App to serve, e.g. handlers.app:app")
    run.add_argument(
        "--workers", type=positive_int, default=1, metavar="N", help="worker processes (default 1)"
    )
    run.add_argument(
        "--amqp-url",
        metavar="URL",
        help="RabbitMQ URL instead of the app's own, e.g. amqp://user:password@host:5672/vhost",
    )
    run.add_argument(
        "--connect-timeout",
        type=positive_float,
        metavar="SECONDS",
        help="how long a worker may take to reach the broker before the command exits 3",
    )
    run.add_argument(
        "--log-format",
        choices=("json", "console"),
        help=f"log line format (default: console on a terminal, json otherwise; {LOG_FORMAT_ENV})",
    )
    run.add_argument(
        "--log-level",
        type=str.lower,
        choices=tuple(LEVELS),
        help=f"lowest level logged (default info; {LOG_LEVEL_ENV})",
    )
    run.add_argument(
        "--health-port",
        type=port_number,
        metavar="PORT",
        help="serve GET /live and /ready on this port, over every worker (see README)",
    )
    run.add_argument(
        "--health-host",
        default="0.0.0.0",  # probes come from outside the container
        metavar="HOST",
        help="address of the health port (default 0.0.0.0)",
    )
    run.add_argument(
        "--metrics-port",
        type=port_number,
        metavar="PORT",
        help="serve Prometheus metrics of every worker, summed, on http://0.0.0.0:PORT/metrics "
        "(needs pip install 'leveret[prometheus]')",
    )
    run.add_argument(
        "--upgrade-db",
        action="store_true",
        help="apply missing schema steps to the app's store before the workers start (what "
        "`leveret db upgrade MODULE:APP` does; the embedded SQLite default does it anyway)",
    )
    run.set_defaults(command=_run)
    schema_cli.register(commands)  # contracts export|check, asyncapi
    breakers_cli.register(commands)  # breakers
    saga_cli.register(commands)  # sagas list|show|graph|resume|abort
    dlq_cli.register(commands)  # dlq list|show|replay|purge
    status_cli.register(commands)  # status
    queues_cli.register(commands)  # queues migrate
    db_cli.register(commands)  # db upgrade|check

    projections = commands.add_parser("projections", help="inspect and rebuild read models")
    actions = projections.add_subparsers(title="actions", metavar="ACTION")
    rebuild = actions.add_parser(
        "rebuild",
        help="empty a projection's read model and replay its event log",
        description=(
            "Empty the tables of projection NAME of MODULE:APP and replay its event log in the "
            "order the events were first applied, in one transaction of the app's store."
        ),
    )
    rebuild.add_argument("app", metavar="MODULE:APP", help="the App, e.g. handlers.app:app")
    rebuild.add_argument("name", metavar="NAME", help="the projection, e.g. orders_view")
    rebuild.set_defaults(command=_rebuild_projection)
    return parser


def _run(args: argparse.Namespace) -> int:
    # Flags go into the environment so that the workers, which inherit it, log alike.
    if args.log_format:
        os.environ[LOG_FORMAT_ENV] = args.log_format
    if args.log_level:
        os.environ[LOG_LEVEL_ENV] = args.log_level
    try:
        configure_logging()
        if args.amqp_url is not None and not _is_amqp(args.amqp_url):
            raise ConfigurationError(
                "--amqp-url must start with amqp:// or amqps://, "
                "e.g. amqp://user:password@host:5672/vhost"
            )
        app = load_app(args.app)
        configure_transport(app, url=args.amqp_url, connect_timeout=args.connect_timeout)
    except ConfigurationError as exc:
        return _usage_error(str(exc))
    if isinstance(app.transport, MemoryTransport) and args.workers > 1:
        return _usage_error(
            f"{args.app} uses the in-process broker (memory://), which cannot be shared by "
            f"{args.workers} worker processes: use --workers 1, or "
            "--amqp-url amqp://user:password@host:5672/vhost to serve it from RabbitMQ"
        )
    if args.upgrade_db and app.store is not None:
        try:
            applied = asyncio.run(_upgrade_db(app))
        except ConfigurationError as exc:
            return _usage_error(str(exc))
        except StoreUnreachable as exc:
            _log.error("store_unreachable", url=exc.url, reason=exc.reason)
            return EXIT_BROKER_UNREACHABLE
        _log.info("db_upgraded", steps=[str(step) for step in applied])
    metrics = None
    if args.metrics_port is not None:
        try:
            from framework.metrics import MetricsServer

            metrics = MetricsServer(args.metrics_port)
        except ConfigurationError as exc:
            return _usage_error(str(exc))
        _log.info("metrics_serving", port=metrics.port)
    config = SupervisorConfig(
        workers=args.workers,
        url=args.amqp_url,
        broker_url=app.url if _is_amqp(app.url) else "",
        connect_timeout=connect_timeout_of(app),
        stop_timeout=app.config.shutdown_grace + STOP_MARGIN,
        health_port=args.health_port,
        health_host=args.health_host,
        metrics=metrics,
    )
    try:
        return asyncio.run(Supervisor(args.app, config=config).run())
    except Exception:
        _log.exception("supervisor_failed")
        return EXIT_FAILED
    finally:
        if metrics is not None:
            metrics.close()


async def _upgrade_db(app: App) -> list[PendingStep]:
    """``app.upgrade_db()`` on a store closed afterwards (the workers open their own)."""
    assert app.store is not None
    try:
        return await app.upgrade_db()
    finally:
        await app.store.close()


def _rebuild_projection(args: argparse.Namespace) -> int:
    from framework.cqrs import find_projection

    try:
        configure_logging()
        app = load_app(args.app)
        projection = find_projection(app.services, args.name)
        assert projection is not None
        store = app.store
        if store is None:
            raise ConfigurationError(f"{args.app} has no store to rebuild {args.name!r} in")
    except ConfigurationError as exc:
        return _usage_error(str(exc))

    async def rebuild() -> int:
        try:
            await app.upgrade_db()
            return await projection.rebuild(store)
        finally:
            await store.close()

    count = asyncio.run(rebuild())
    print(f"rebuilt projection {args.name!r} from {count} events")
    return 0


def _usage_error(message: str) -> int:
    print(f"leveret: {message}", file=sys.stderr)
    return EXIT_CONFIGURATION


def _is_amqp(url: str) -> bool:
    return url.split("://", 1)[0].lower() in ("amqp", "amqps")


def _version() -> str:
    try:
        return metadata.version("leveret")
    except metadata.PackageNotFoundError:
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
