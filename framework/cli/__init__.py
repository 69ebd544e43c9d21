"""The ``leveret`` command line: one package, a module per command, ``_common`` for what they share.

==============  =======================================================================
module          commands
==============  =======================================================================
``run``         ``leveret run MODULE:APP``: a supervisor and N worker processes
``status``      ``leveret status MODULE:APP``: readiness, queue depths, consumers
``dlq``         ``leveret dlq list|show|replay|purge``: dead-letter queues
``sagas``       ``leveret sagas list|show|graph|resume|abort``
``breakers``    ``leveret breakers MODULE:APP``: circuit breakers, per worker
``projections`` ``leveret projections list|rebuild``: read models
``queues``      ``leveret queues migrate MODULE:APP``: re-create queues of another type
``db``          ``leveret db upgrade|check``: the store's versioned schema
``contracts``   ``leveret contracts export|check`` and ``leveret asyncapi``
==============  =======================================================================

Every command takes the app as a positional ``MODULE:APP``, the broker as ``--amqp-url``, the
store as ``--db-url`` and asks for machine output with ``--json``; exit codes are those of
``framework.cli.exits``. ``docs/cli.md`` is the reference, checked against this parser by
``tests/unit/test_cli_reference.py``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib import metadata

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (``sys.argv[1:]`` by default), run the command, return its exit code."""
    from framework.cli._common import CommandError
    from framework.cli.exits import EXIT_UNREACHABLE, EXIT_USAGE
    from framework.errors import BrokerUnreachable, ConfigurationError
    from framework.store.base import StoreUnreachable

    parser = _parser()
    args = parser.parse_args(argv)
    command: Callable[[argparse.Namespace], int] | None = getattr(args, "command", None)
    if command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return command(args)
    except CommandError as exc:
        message, code = str(exc), exc.code
    except ConfigurationError as exc:  # a refused login or vhost too (BrokerAccessDenied)
        message, code = str(exc), EXIT_USAGE
    except (BrokerUnreachable, StoreUnreachable) as exc:
        message, code = str(exc), EXIT_UNREACHABLE
    print(f"leveret: {message}", file=sys.stderr)
    return code


def _parser() -> argparse.ArgumentParser:
    """The whole ``leveret`` parser (``tests/unit/test_docs_code.py`` checks commands with it)."""
    # Imported here, not at the top: the worker imports ``framework.cli.exits`` and must not
    # load every command (nor import itself back through ``run``).
    from framework.cli import (
        breakers,
        contracts,
        db,
        dlq,
        projections,
        queues,
        run,
        sagas,
        status,
    )

    parser = argparse.ArgumentParser(
        prog="leveret",
        description="Run and inspect leveret services on RabbitMQ. Exit codes: 0 ok; 1 a check "
        "failed or nothing matched; 2 usage or configuration error; 3 the broker or the "
        "database cannot be reached; 4 the connection failed partway.",
    )
    parser.add_argument("--version", action="version", version=f"leveret {_version()}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    for module in (run, status, dlq, sagas, breakers, projections, queues, db, contracts):
        module.register(commands)
    return parser


def _version() -> str:
    try:
        return metadata.version("leveret")
    except metadata.PackageNotFoundError:
        return "unknown"
