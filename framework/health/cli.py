"""``leveret status MODULE:APP``: readiness from the command line, registered by ``framework.cli``.

Connects to the app's broker without consuming, then prints what a worker's ``/ready`` checks
(the broker answers, each handler queue has a consumer, the store answers) with each queue's
ready messages, consumers and dead letters, as the broker counts them. ``--health-url`` also
asks a running ``leveret run --health-port`` for its ``/live`` and ``/ready``.

Exit codes: 0 ready; 1 not ready (or the health URL says so); 2 the app does not load or a URL
is unusable; 3 the broker could not be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import urllib.error
import urllib.request
from typing import Any

import msgspec

from framework.argtypes import positive_float
from framework.errors import BrokerAccessDenied, BrokerUnreachable, ConfigurationError
from framework.health.checks import Readiness, readiness

__all__ = ["register"]

EXIT_READY = 0
EXIT_NOT_READY = 1
EXIT_USAGE = 2
EXIT_BROKER_UNREACHABLE = 3


def register(commands: Any) -> None:
    """Add ``status`` to the ``leveret`` subparsers."""
    parser = commands.add_parser(
        "status",
        help="is the app ready? queue depths and consumers, from the broker",
        description=(
            "Check what a worker's /ready checks — the broker answers, every handler queue has "
            "a consumer, the store answers — and print each queue's ready messages, consumers "
            "and dead letters as the broker counts them."
        ),
    )
    parser.add_argument("app", metavar="MODULE:APP", help="the App, e.g. handlers.app:app")
    parser.add_argument("--amqp-url", metavar="URL", help="RabbitMQ URL instead of the app's own")
    parser.add_argument("--db-url", metavar="URL", help="the store instead of the app's own")
    parser.add_argument(
        "--health-url",
        metavar="URL",
        help="also ask a running `leveret run --health-port` here, e.g. http://host:8080",
    )
    parser.add_argument(
        "--timeout",
        type=positive_float,
        default=5.0,
        metavar="SECONDS",
        help="deadline of each broker, store or HTTP call (default 5)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(command=_status)


def _status(args: argparse.Namespace) -> int:
    from framework.store.base import store_from_url
    from framework.worker import configure_transport, load_app

    try:
        app = load_app(args.app)
        configure_transport(app, url=args.amqp_url, connect_timeout=args.timeout)
        if args.db_url is not None:
            app.use_store(store_from_url(args.db_url))
    except ConfigurationError as exc:
        print(f"leveret: {exc}", file=sys.stderr)
        return EXIT_USAGE

    async def check() -> Readiness:
        await app.transport.connect()
        try:
            if app.query_transport is not None:
                await app.query_transport.connect()
            return await readiness(app, timeout=args.timeout)
        finally:
            await app.transport.close()
            if app.query_transport is not None:
                await app.query_transport.close()
            if app.store is not None:
                await app.store.close()

    try:
        report = asyncio.run(check())
    except BrokerAccessDenied as exc:  # a configuration error, not an outage
        print(f"leveret: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokerUnreachable as exc:
        print(f"leveret: {exc}", file=sys.stderr)
        return EXIT_BROKER_UNREACHABLE
    served: dict[str, tuple[int, Any]] = {}
    if args.health_url:
        base = args.health_url.rstrip("/")
        for path in ("/live", "/ready"):
            served[path] = _get(base + path, args.timeout)
    if args.json:
        body: dict[str, Any] = msgspec.to_builtins(report)
        if served:
            body["served"] = {path: answer for path, (_, answer) in served.items()}
        print(msgspec.json.encode(body).decode())
    else:
        _print(args.app, report, served)
    served_ok = all(status == 200 for status, _ in served.values())
    return EXIT_READY if report.ready and served_ok else EXIT_NOT_READY


def _get(url: str, timeout: float) -> tuple[int, Any]:
    """Status and JSON body of ``GET url``; status 0 when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # operator's URL
            return response.status, msgspec.json.decode(response.read())
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, msgspec.json.decode(exc.read())
        except msgspec.DecodeError:
            return exc.code, {"error": str(exc)}
    except (OSError, ValueError, msgspec.DecodeError) as exc:
        return 0, {"error": f"{type(exc).__name__}: {exc}"}


def _cell(value: int | None) -> str:
    return "?" if value is None else str(value)


def _print(spec: str, report: Readiness, served: dict[str, tuple[int, Any]]) -> None:
    print(f"{spec}: {'READY' if report.ready else 'NOT READY'}")
    for check in report.checks:
        if not check.name.startswith("consumer "):
            print(f"  {'ok  ' if check.ok else 'FAIL'}  {check.name}: {check.detail}")
    rows = [("queue", "handler", "ready", "consumers", "dead letters")]
    rows += [
        (
            q.queue,
            q.handler,
            _cell(q.messages),
            _cell(q.consumers),
            _cell(q.dead_letters),
        )
        for q in report.queues
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print()
    for row in rows:
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
        cells += [cell.rjust(width) for cell, width in zip(row[2:], widths[2:], strict=True)]
        print(("  " + "  ".join(cells)).rstrip())
    missing = [c for c in report.checks if c.name.startswith("consumer ") and not c.ok]
    for check in missing:
        print(f"  FAIL  {check.name}: {check.detail}")
    for path, (status, body) in served.items():
        verdict = "ok" if status == 200 else f"FAIL ({status or 'no answer'})"
        print(f"\nserved {path}: {verdict}")
        for worker in body.get("workers", []) if isinstance(body, dict) else []:
            failing = [c["name"] for c in worker.get("checks", []) if not c.get("ok")]
            detail = worker.get("detail") or (
                "ok" if worker.get("ok") else "failing: " + ", ".join(failing or ["?"])
            )
            print(f"  worker {worker.get('index')} (pid {worker.get('pid')}): {detail}")
