"""``leveret queues migrate MODULE:APP [--to quorum|classic]``: registered by ``framework.cli``.

Re-creates every queue of the app that exists on the broker with another type or other
arguments (a classic queue the app now declares as a quorum queue, a DLQ that gained a bound),
keeping its messages; queues already as declared are left alone. Stop the app's workers first.
``--to`` declares the app's queues as that type instead of what its ``AppConfig.queue_type``
says (so a classic app can be moved before its configuration changes).

Exit codes: 0 done (also when nothing needed migrating); 2 usage or configuration error (a bad
MODULE:APP, a queue with consumers, a message that cannot be copied, a move that stalled: rerun
once fixed, nothing is lost); 3 the broker could not be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from typing import Any

from framework.argtypes import positive_float
from framework.errors import BrokerUnreachable, ConfigurationError
from framework.queues.migrate import Migrated, migrate
from framework.routing import QUEUE_TYPES

__all__ = ["register"]

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_BROKER_UNREACHABLE = 3


def register(commands: Any) -> None:
    """Add ``queues migrate`` to the ``leveret`` subparsers."""
    queues = commands.add_parser(
        "queues",
        help="re-create an app's queues with another type or other arguments",
        description="Manage the queues an app owns on RabbitMQ.",
    )
    actions = queues.add_subparsers(title="actions", metavar="ACTION")

    def usage(_: argparse.Namespace) -> int:
        queues.print_help(sys.stderr)
        return EXIT_USAGE

    queues.set_defaults(command=usage)
    move = actions.add_parser(
        "migrate",
        help="re-create queues declared differently, keeping their messages",
        description=(
            "Re-create every queue of the app that exists with another type or other arguments "
            "(classic to quorum, a new DLQ bound...), moving its messages out and back, each "
            "confirmed before it is acked. Stop the app's workers first."
        ),
    )
    move.add_argument("app", metavar="MODULE:APP")
    move.add_argument(
        "--to", choices=QUEUE_TYPES, help="the queue type to declare (default: the app's own)"
    )
    move.add_argument(
        "--url",
        "--amqp-url",
        dest="url",
        metavar="URL",
        help="RabbitMQ URL(s) (default: the app's)",
    )
    move.add_argument(
        "--timeout",
        type=positive_float,
        default=10.0,
        metavar="S",
        help="seconds for each broker operation, and without a message in a move (default 10)",
    )
    move.set_defaults(command=_migrate)


def _migrate(args: argparse.Namespace) -> int:
    from framework.transport.amqp import AmqpConfig, AmqpTransport
    from framework.worker import load_app

    try:
        app = load_app(args.app)
        url = args.url or app.url
        if url.split("://", 1)[0].lower() not in ("amqp", "amqps"):
            raise ConfigurationError(
                "queues live on RabbitMQ: give the app an amqp:// URL or pass --url "
                "(a memory:// app's queues vanish with its process)"
            )
        naming = app.naming
        if args.to is not None:
            naming = dataclasses.replace(naming, queue_type=args.to)
        topology = app.topology_for(naming)
    except ConfigurationError as exc:
        print(f"leveret queues migrate: {exc}", file=sys.stderr)
        return EXIT_USAGE
    timeout = args.timeout
    transport = AmqpTransport(
        url,
        config=AmqpConfig(
            connect_timeout=timeout, declare_timeout=timeout, publish_timeout=timeout
        ),
    )

    def report(done: Migrated) -> None:
        print(f"re-created {done.queue} ({naming.queue_type}), {done.messages} message(s) kept")

    async def run() -> list[Migrated]:
        await transport.connect()
        try:
            return await migrate(transport, topology, idle=timeout, on_migrated=report)
        finally:
            await transport.close()

    try:
        done = asyncio.run(run())
    except ConfigurationError as exc:  # a refused login or vhost too (BrokerAccessDenied)
        print(f"leveret queues migrate: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokerUnreachable as exc:
        print(f"leveret queues migrate: {exc}", file=sys.stderr)
        return EXIT_BROKER_UNREACHABLE
    queues = len(topology.queues)
    print(f"{len(done)} of {queues} queue(s) re-created; the others were already as declared")
    return EXIT_OK
