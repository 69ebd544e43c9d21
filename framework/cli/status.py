"""``leveret status MODULE:APP``: readiness from the command line.

Connects to the app's broker without consuming, then prints what a worker's ``/ready`` checks
(the broker answers, each handler queue has a consumer, the store answers) with each queue's
ready messages, consumers and dead letters, as the broker counts them. ``--health-url`` also
asks a running ``leveret run --health-port`` for its ``/live`` and ``/ready``.

An app on the in-process broker (``memory://``) is refused: its queues live only in the
process that runs it; pass ``--amqp-url``. A SQLite store file that does not exist is not
created: the command exits 3 and says where it looked.

Exit codes: 0 ready; 1 not ready (or the health URL says so); 2 the app does not load, is on
memory:// or a URL is unusable; 3 the broker or the database could not be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import urllib.error
import urllib.request
from typing import Any

import msgspec

from framework.argtypes import positive_float
from framework.cli._common import (
    add_amqp_url,
    add_app,
    add_db_url,
    add_json,
    check_amqp_url,
    existing_store,
    load,
    print_json,
    readable_handler,
    require_broker,
    table,
)
from framework.cli.exits import EXIT_FAILED, EXIT_OK
from framework.health.checks import Readiness, readiness

__all__ = ["register"]


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
    add_app(parser)
    add_amqp_url(parser)
    add_db_url(parser)
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
    add_json(parser)
    parser.set_defaults(command=_status)


def _status(args: argparse.Namespace) -> int:
    from framework.store.base import store_from_url
    from framework.worker import configure_transport

    check_amqp_url(args.amqp_url)
    app = load(args.app)
    configure_transport(app, url=args.amqp_url, connect_timeout=args.timeout)
    require_broker(app, args.app, what="leveret status")
    if args.db_url is not None:
        app.use_store(store_from_url(args.db_url))
    if app.store is not None:
        existing_store(app.store, db_url_given=args.db_url is not None)

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

    report = asyncio.run(check())  # a refused login is a ConfigurationError: exit 2
    served: dict[str, tuple[int, Any]] = {}
    if args.health_url:
        base = args.health_url.rstrip("/")
        for path in ("/live", "/ready"):
            served[path] = _get(base + path, args.timeout)
    if args.json:
        body: dict[str, Any] = msgspec.to_builtins(report)
        if served:
            body["served"] = {path: answer for path, (_, answer) in served.items()}
        print_json(body)
    else:
        _print(args.app, report, served)
    served_ok = all(status == 200 for status, _ in served.values())
    return EXIT_OK if report.ready and served_ok else EXIT_FAILED


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
    rows = [
        (
            q.queue,
            readable_handler(q.handler),
            _cell(q.messages),
            _cell(q.consumers),
            _cell(q.dead_letters),
        )
        for q in report.queues
    ]
    print()
    for line in table(
        ("queue", "handler", "ready", "consumers", "dead letters"),
        rows,
        indent="  ",
        right={2, 3, 4},
    ):
        print(line)
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
