"""``leveret db upgrade|check TARGET``: registered by ``framework.cli``.

``TARGET`` is ``MODULE:APP`` (the app's store with every component of its services' schemas;
``--db-url`` names another database) or a store URL (leveret's own tables only). ``upgrade``
applies the missing steps under the upgrade lock (``framework.store.migrations``): run it as a
deploy step, once, before the new workers start; a second runner waits for the first and finds
nothing left to do. ``check`` only reads the versions.

Exit codes: 0 done (also when nothing was missing; ``check``: the schema is current); 1
``check``: steps are missing, or ``upgrade``: a step failed (those before it stay applied); 2
a usage or configuration error (a bad TARGET, an app without a store, tables newer than this
leveret); 3 the database could not be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from framework.errors import ConfigurationError
from framework.logging import redact_text
from framework.store.base import Store, StoreUnreachable, store_from_url
from framework.store.migrations import Migrations, PendingStep
from framework.urls import redact

__all__ = ["register"]

EXIT_OK = 0
EXIT_BEHIND = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3


def register(commands: Any) -> None:
    """Add ``db upgrade|check`` to the ``leveret`` subparsers."""
    db = commands.add_parser(
        "db",
        help="create and migrate the store's tables (a deploy step)",
        description="Manage the versioned schema of a store: leveret's tables and the services'.",
    )
    actions = db.add_subparsers(title="actions", metavar="ACTION")

    def usage(_: argparse.Namespace) -> int:
        db.print_help(sys.stderr)
        return EXIT_USAGE

    db.set_defaults(command=usage)
    for name, command, help_text in (
        ("upgrade", _upgrade, "apply the schema steps the database lacks, under a lock"),
        ("check", _check, "list the schema steps the database lacks (exit 1 if any)"),
    ):
        action = actions.add_parser(name, help=help_text, description=help_text)
        action.add_argument(
            "target",
            metavar="TARGET",
            help="MODULE:APP (its store and services' tables) or a store URL (leveret's tables)",
        )
        action.add_argument(
            "--db-url", metavar="URL", help="with MODULE:APP: this database instead of the app's"
        )
        action.set_defaults(command=command)


def _upgrade(args: argparse.Namespace) -> int:
    async def run(store: Store, migrations: tuple[Migrations, ...]) -> int:
        applied = await store.upgrade(migrations)
        if applied:
            print(f"{redact(store.url)}: applied {_steps(applied)}")
        else:
            print(f"{redact(store.url)}: the schema is current")
        return EXIT_OK

    return _with_store(args, run)


def _check(args: argparse.Namespace) -> int:
    async def run(store: Store, migrations: tuple[Migrations, ...]) -> int:
        pending = await store.pending_steps(migrations)
        if pending:
            print(f"{redact(store.url)}: missing {_steps(pending)}: run `leveret db upgrade`")
            return EXIT_BEHIND
        print(f"{redact(store.url)}: the schema is current")
        return EXIT_OK

    return _with_store(args, run)


def _with_store(args: argparse.Namespace, run: Any) -> int:
    from framework.logging import configure_logging
    from framework.worker import load_app

    migrations: tuple[Migrations, ...] = ()
    try:
        configure_logging()
        if "://" in args.target:
            if args.db_url is not None:
                raise ConfigurationError("--db-url goes with MODULE:APP, not with a store URL")
            store = store_from_url(args.target)
        else:
            app = load_app(args.target)
            if args.db_url is not None:
                store = store_from_url(args.db_url)
            elif app.store is not None:
                store = app.store
            else:
                raise ConfigurationError(
                    f"{args.target} has no store (no saga, no transactional handler): "
                    "give its database with --db-url"
                )
            migrations = app.migrations
    except ConfigurationError as exc:
        return _fail(EXIT_USAGE, str(exc))

    async def main() -> int:
        try:
            return int(await run(store, migrations))
        finally:
            await store.close()

    try:
        return asyncio.run(main())
    except StoreUnreachable as exc:
        return _fail(EXIT_UNREACHABLE, str(exc))
    except ConfigurationError as exc:
        return _fail(EXIT_USAGE, str(exc))
    except Exception as exc:  # a step failed: the database's error, for the operator
        return _fail(EXIT_BEHIND, redact_text(f"{type(exc).__name__}: {exc}"))


def _steps(steps: list[PendingStep]) -> str:
    return ", ".join(str(step) for step in steps)


def _fail(code: int, message: str) -> int:
    print(f"leveret db: {message}", file=sys.stderr)
    return code
