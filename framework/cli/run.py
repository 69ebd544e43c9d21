"""``leveret run MODULE:APP``: serve an app with a supervisor and N worker processes.

Exit codes: 0 drained cleanly after SIGTERM/SIGINT; 1 a worker had to be killed or failed while
draining; 2 a usage or configuration error (bad MODULE:APP, a memory:// app with several
workers, a --metrics-port that cannot be bound); 3 the broker could not be reached within the
connect deadline. ``--upgrade-db`` upgrades the app's store (``leveret db upgrade``) once, before
the workers start; without it a worker on PostgreSQL refuses a schema that is behind (exit 2).
"""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import TYPE_CHECKING, Any

import structlog

from framework.argtypes import port_number, positive_float, positive_int
from framework.cli._common import (
    AMQP_EXAMPLE,
    add_amqp_url,
    add_app,
    check_amqp_url,
    is_amqp,
    load,
    usage_error,
)
from framework.cli.exits import EXIT_FAILED, EXIT_UNREACHABLE
from framework.logging import LEVELS, LOG_FORMAT_ENV, LOG_LEVEL_ENV, configure_logging

if TYPE_CHECKING:
    from framework.app import App
    from framework.store.migrations import PendingStep

__all__ = ["register"]

_log = structlog.get_logger("leveret.cli")

# Time for a worker to close its connections after its handlers' grace period (App.stop waits up
# to 5 s for cancelled handlers, then closes the transport).
STOP_MARGIN = 10.0


def register(commands: Any) -> None:
    """Add ``run`` to the ``leveret`` subparsers."""
    run = commands.add_parser(
        "run",
        help="serve an app with N worker processes",
        description=(
            "Serve MODULE:APP with a supervisor and N worker processes. SIGTERM or SIGINT drains "
            "the workers (in-flight handlers get the app's shutdown_grace) and exits 0; a worker "
            "that dies is restarted; exit 3 when the broker cannot be reached in time."
        ),
    )
    add_app(run)
    run.add_argument(
        "--workers", type=positive_int, default=1, metavar="N", help="worker processes (default 1)"
    )
    add_amqp_url(run)
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
        help="serve GET /live and /ready on this port, over every worker",
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


def _run(args: argparse.Namespace) -> int:
    from framework.store.base import StoreUnreachable
    from framework.supervisor import Supervisor, SupervisorConfig
    from framework.transport.memory import MemoryTransport
    from framework.worker import configure_transport, connect_timeout_of

    # Flags go into the environment so that the workers, which inherit it, log alike.
    if args.log_format:
        os.environ[LOG_FORMAT_ENV] = args.log_format
    if args.log_level:
        os.environ[LOG_LEVEL_ENV] = args.log_level
    configure_logging()
    check_amqp_url(args.amqp_url)
    app = load(args.app)
    configure_transport(app, url=args.amqp_url, connect_timeout=args.connect_timeout)
    if isinstance(app.transport, MemoryTransport) and args.workers > 1:
        raise usage_error(
            f"{args.app} uses the in-process broker (memory://), which cannot be shared by "
            f"{args.workers} worker processes: use --workers 1, or "
            f"--amqp-url {AMQP_EXAMPLE} to serve it from RabbitMQ"
        )
    if args.upgrade_db and app.store is not None:
        try:
            applied = asyncio.run(_upgrade_db(app))
        except StoreUnreachable as exc:
            _log.error("store_unreachable", url=exc.url, reason=exc.reason)
            return EXIT_UNREACHABLE
        _log.info("db_upgraded", steps=[str(step) for step in applied])
    metrics = None
    if args.metrics_port is not None:
        from framework.metrics import MetricsServer

        metrics = MetricsServer(args.metrics_port)
        _log.info("metrics_serving", port=metrics.port)
    config = SupervisorConfig(
        workers=args.workers,
        url=args.amqp_url,
        broker_url=app.url if is_amqp(app.url) else "",
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
