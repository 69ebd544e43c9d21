"""``leveret breakers MODULE:APP``: registered by ``framework.cli``.

Shows the state and metrics of every circuit breaker, per worker.

The command loads the app (for its prefix, its breakers and its broker URL), asks every running
worker over the breakers' control exchange (``<prefix>.breakers.<group>``) and prints what each
one answers within ``--timeout`` seconds. Workers answer only a request sent with their own
broker user (and signed with the app's secret, when there is one: ``AppConfig.secret`` or
``LEVERET_SECRET``), so ``--amqp-url`` must log in as the workers' user. An app on
``memory://`` runs in one process only, so for it the command lists the declared breakers and
their settings.

Exit codes: 0 answers printed (or nothing to ask), 1 no worker answered, 2 the app does not load
or the broker refused the request, 3 the broker could not be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from framework.errors import (
    AccessRefused,
    BrokerAccessDenied,
    BrokerUnreachable,
    ConfigurationError,
    PublishFailed,
)
from framework.resilience.calls import ExternalCall
from framework.resilience.control import (
    BreakerStatus,
    ControlSeal,
    StatusReply,
    StatusRequest,
    control_exchange,
    decode_reply,
    encode,
    status_inbox,
)
from framework.resilience.registry import control_secret
from framework.transport.base import Delivery, QueueSpec, Topology
from framework.transport.memory import MemoryTransport
from framework.urls import redact

if TYPE_CHECKING:
    from framework.app import App

__all__ = ["ask_workers", "register"]

EXIT_OK = 0
EXIT_NO_ANSWER = 1
EXIT_USAGE = 2
EXIT_BROKER_UNREACHABLE = 3


def register(commands: Any) -> None:
    """Add the ``breakers`` command to the ``leveret`` subparsers."""
    parser = commands.add_parser(
        "breakers",
        help="show the circuit breakers of a running app, per worker",
        description=(
            "Ask every running worker of MODULE:APP for the state and metrics of its circuit "
            "breakers (over the breakers' control exchange) and print them."
        ),
    )
    parser.add_argument("app", metavar="MODULE:APP", help="the App, e.g. handlers.app:app")
    parser.add_argument("--amqp-url", metavar="URL", help="RabbitMQ URL instead of the app's own")
    parser.add_argument(
        "--timeout",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="how long to collect answers from workers (default 2)",
    )
    parser.add_argument("--json", action="store_true", help="print the answers as JSON")
    parser.set_defaults(command=_breakers)


def _breakers(args: argparse.Namespace) -> int:
    # The command sits above the app layer; imported here so resilience never imports it.
    from framework.worker import configure_transport, load_app

    try:
        app = load_app(args.app)
        configure_transport(app, url=args.amqp_url)
    except ConfigurationError as exc:
        print(f"leveret: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if app.breakers is None or not len(app.breakers):
        print(f"{args.app} declares no circuit breakers")
        return EXIT_OK
    if isinstance(app.transport, MemoryTransport):
        print(
            f"{args.app} runs on memory://: its breakers live in the process that serves it. "
            "Declared:"
        )
        _print_declared(app)
        return EXIT_OK
    if not args.timeout > 0:
        print("leveret: --timeout must be more than 0 seconds", file=sys.stderr)
        return EXIT_USAGE
    try:
        replies = asyncio.run(ask_workers(app, timeout=args.timeout))
    except BrokerAccessDenied as exc:  # a configuration error, not an outage
        print(f"leveret: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokerUnreachable as exc:
        print(f"leveret: {exc}", file=sys.stderr)
        return EXIT_BROKER_UNREACHABLE
    except AccessRefused as exc:
        print(f"leveret: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(msgspec.json.encode(replies).decode())
        return EXIT_OK if replies else EXIT_NO_ANSWER
    if not replies:
        print(
            f"no worker of {args.app} answered within {args.timeout:g}s on "
            f"{redact(app.url)} (is `leveret run {args.app}` serving there?)"
        )
        return EXIT_NO_ANSWER
    _print_replies(app, replies, args.timeout)
    return EXIT_OK


async def ask_workers(app: App, *, timeout: float) -> list[StatusReply]:
    """Every worker's status reply that arrives within ``timeout`` seconds, by worker id.

    Only replies sent with the workers' credentials (and signature) count.

    Raises:
        BrokerUnreachable: the broker did not answer.
        AccessRefused: the broker refused the request (the user may not write the exchange).
    """
    assert app.breakers is not None
    transport = app.transport
    await transport.connect()
    try:
        exchange = control_exchange(app.naming.prefix, app.breakers.group)
        seal = ControlSeal(exchange, user=transport.user, secret=control_secret(app))
        request_id = uuid.uuid4().hex
        inbox = status_inbox(exchange, request_id)
        await transport.declare(
            Topology(queues=(QueueSpec(inbox, durable=False, auto_delete=True),))
        )
        replies: dict[str, StatusReply] = {}

        async def on_reply(delivery: Delivery) -> None:
            await delivery.ack()
            if seal.refusal(delivery) is not None:
                return  # not from a worker: someone else published to the inbox
            try:
                reply = decode_reply(delivery.body)
            except msgspec.DecodeError:
                return
            if reply.request_id == request_id:
                replies[reply.worker] = reply

        consumer = await transport.consume(inbox, on_reply, prefetch=100)
        try:
            request = StatusRequest(reply_to=inbox, request_id=request_id, sent_at=seal.now())
            await transport.publish(
                seal.seal(encode(request)),
                exchange=exchange,
                routing_key="",
                mandatory=False,
            )
            # Workers do not announce themselves: whoever answers in time is counted.
            await asyncio.sleep(timeout)
        except AccessRefused:
            raise
        except PublishFailed:
            pass  # no control exchange: no worker has ever run with these breakers
        finally:
            await consumer.cancel()
        return sorted(replies.values(), key=lambda r: r.worker)
    finally:
        await transport.close()


def _print_replies(app: App, replies: list[StatusReply], timeout: float) -> None:
    assert app.breakers is not None
    print(
        f"{len(replies)} worker(s) of group {app.breakers.group!r} (prefix "
        f"{app.naming.prefix!r}) answered within {timeout:g}s"
    )
    for reply in replies:
        blocked = f", BLOCKED by the broker: {reply.blocked}" if reply.blocked else ""
        print(f"\nworker {reply.worker} (pid {reply.pid}){blocked}")
        _print_table([_row(b) for b in reply.breakers])


_HEADER = (
    "breaker",
    "state",
    "fail%",
    "slow%",
    "calls",
    "failed",
    "slow",
    "rejected",
    "retry in",
    "window",
)


def _row(status: BreakerStatus) -> tuple[str, ...]:
    state = status.state + (f" ({status.reason})" if status.reason else "")
    return (
        status.name,
        state,
        _percent(status.failure_rate),
        _percent(status.slow_call_rate),
        str(status.buffered),
        str(status.failed),
        str(status.slow),
        str(status.not_permitted),
        "-" if status.retry_after is None else f"{status.retry_after:.1f}s",
        status.window,
    )


def _print_declared(app: App) -> None:
    assert app.breakers is not None
    rows = []
    for breaker in app.breakers:
        m = breaker.metrics()
        declared = app.breakers.declaration(breaker.name)
        if isinstance(declared, ExternalCall):
            timeout = "" if declared.timeout is None else f", timeout {declared.timeout:g}s"
            gates, when_open = f"external calls{timeout}", "raise"
        else:
            gates = _target(declared.service, declared.routes, declared.messages)
            when_open = declared.when_open.value
        rows.append(
            (
                breaker.name,
                gates,
                f"{breaker.config.failure_rate_threshold:g}%",
                m.window,
                when_open,
                m.state.value,
            )
        )
    _print_table(rows, header=("breaker", "gates", "opens at", "window", "when open", "state"))


def _target(service: str | None, routes: tuple[str, ...], messages: tuple[Any, ...]) -> str:
    parts = [f"service {service}"] if service else []
    parts += list(routes) + [m.__wire_name__ for m in messages]
    return ", ".join(parts)


def _print_table(rows: Sequence[tuple[str, ...]], *, header: tuple[str, ...] = _HEADER) -> None:
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print(("  " + "  ".join(cells)).rstrip())


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
