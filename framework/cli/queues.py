"""``leveret queues migrate MODULE:APP [--to quorum|classic]``: re-create an app's queues.

Re-creates every queue of the app that exists on the broker with another type or other
arguments (a classic queue the app now declares as a quorum queue, a DLQ that gained a bound),
keeping its messages; queues already as declared are left alone. Stop the app's workers first.
``--to`` declares the app's queues as that type instead of what its ``AppConfig.queue_type``
says (so a classic app can be moved before its configuration changes).

Exit codes: 0 done (also when nothing needed migrating); 2 usage or configuration error (a bad
MODULE:APP, a memory:// app without --amqp-url, a queue with consumers, a message that cannot be
copied, a move that stalled: rerun once fixed, nothing is lost); 3 the broker could not be
reached.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from typing import Any

from framework.argtypes import positive_float
from framework.cli._common import (
    AMQP_EXAMPLE,
    add_amqp_url,
    add_app,
    check_amqp_url,
    is_amqp,
    load,
    require_broker,
)
from framework.cli.exits import EXIT_OK, EXIT_USAGE
from framework.errors import ConfigurationError
from framework.queues.migrate import Migrated, migrate
from framework.routing import QUEUE_TYPES

__all__ = ["register"]


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
    add_app(move)
    move.add_argument(
        "--to", choices=QUEUE_TYPES, help="the queue type to declare (default: the app's own)"
    )
    add_amqp_url(move, old_url=True)
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

    check_amqp_url(args.amqp_url)
    app = load(args.app)
    if args.amqp_url is None:
        require_broker(app, args.app, what="leveret queues migrate")
    url = args.amqp_url or app.url
    if not is_amqp(url):
        raise ConfigurationError(
            f"{args.app} has no broker URL to migrate on (it was given a transport): pass "
            f"--amqp-url {AMQP_EXAMPLE}"
        )
    naming = app.naming
    if args.to is not None:
        naming = dataclasses.replace(naming, queue_type=args.to)
    topology = app.topology_for(naming)
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

    done = asyncio.run(run())  # a refused login is a ConfigurationError: exit 2
    queues = len(topology.queues)
    print(f"{len(done)} of {queues} queue(s) re-created; the others were already as declared")
    return EXIT_OK
