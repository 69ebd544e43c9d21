"""``leveret breakers MODULE:APP``: the circuit breakers of a running app.

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
import uuid
from typing import TYPE_CHECKING, Any

import msgspec

from framework.argtypes import positive_float
from framework.cli._common import (
    add_amqp_url,
    add_app,
    add_json,
    check_amqp_url,
    load,
    print_json,
    print_table,
)
from framework.cli.exits import EXIT_FAILED, EXIT_OK
from framework.errors import AccessRefused, PublishFailed
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
    add_app(parser)
    add_amqp_url(
        parser, help="RabbitMQ URL instead of the app's own, logged in as the workers' user"
    )
    parser.add_argument(
        "--timeout",
        type=positive_float,
        default=2.0,
        metavar="SECONDS",
        help="how long to collect answers from workers (default 2)",
    )
    add_json(parser)
    parser.set_defaults(command=_breakers)


def _breakers(args: argparse.Namespace) -> int:
    from framework.worker import configure_transport

    check_amqp_url(args.amqp_url)
    app = load(args.app)
    configure_transport(app, url=args.amqp_url)
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
    # A refused login or request (BrokerAccessDenied, AccessRefused) is a ConfigurationError.
    replies = asyncio.run(ask_workers(app, timeout=args.timeout))
    if args.json:
        print_json(replies)
        return EXIT_OK if replies else EXIT_FAILED
    if not replies:
        print(
            f"no worker of {args.app} answered within {args.timeout:g}s on "
            f"{redact(app.url)} (is `leveret run {args.app}` serving there?)"
        )
        return EXIT_FAILED
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
        print_table(_HEADER, [_row(b) for b in reply.breakers], indent="  ")


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
    print_table(("breaker", "gates", "opens at", "window", "when open", "state"), rows, indent="  ")


def _target(service: str | None, routes: tuple[str, ...], messages: tuple[Any, ...]) -> str:
    parts = [f"service {service}"] if service else []
    parts += list(routes) + [m.__wire_name__ for m in messages]
    return ", ".join(parts)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
