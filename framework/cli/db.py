"""``leveret db upgrade|check TARGET``: the store's versioned schema.

``TARGET`` is ``MODULE:APP`` (the app's store with every component of its services' schemas;
``--db-url`` names another database) or a store URL (leveret's own tables only). ``upgrade``
applies the missing steps under the upgrade lock (``framework.store.migrations``): run it as a
deploy step, once, before the new workers start; a second runner waits for the first and finds
nothing left to do. ``check`` only reads the versions.

Exit codes: 0 done (also when nothing was missing; ``check``: the schema is current); 1
``check``: steps are missing, or ``upgrade``: a step failed (those before it stay applied); 2
a usage or configuration error (a bad TARGET, an app without a store, tables newer than this
leveret); 3 the database could not be reached. ``check`` never creates a SQLite file: one that
does not exist lacks every step (exit 1).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from framework.cli._common import CommandError, add_db_url, load, missing_sqlite_file
from framework.cli.exits import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from framework.errors import ConfigurationError
from framework.logging import redact_text
from framework.store.base import Store, StoreUnreachable, store_from_url
from framework.store.migrations import Migrations, PendingStep
from framework.urls import redact

__all__ = ["register"]


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
        add_db_url(action, help="with MODULE:APP: this database instead of the app's")
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
        reader, where = store, ""
        if missing_sqlite_file(store) is not None:  # what a new file lacks, without creating it
            reader, where = store_from_url("sqlite://:memory:"), " (no database file yet)"
        try:
            pending = await reader.pending_steps(migrations)
        finally:
            if reader is not store:
                await reader.close()
        if pending:
            print(
                f"{redact(store.url)}{where}: missing {_steps(pending)}: run `leveret db upgrade`"
            )
            return EXIT_FAILED
        print(f"{redact(store.url)}: the schema is current")
        return EXIT_OK

    return _with_store(args, run)


def _with_store(args: argparse.Namespace, run: Any) -> int:
    from framework.logging import configure_logging

    migrations: tuple[Migrations, ...] = ()
    configure_logging()
    if "://" in args.target:
        if args.db_url is not None:
            raise ConfigurationError("--db-url goes with MODULE:APP, not with a store URL")
        store = store_from_url(args.target)
    else:
        app = load(args.target)
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

    async def main() -> int:
        try:
            return int(await run(store, migrations))
        finally:
            if missing_sqlite_file(store) is None:  # closing a SQLite store creates its file
                await store.close()

    try:
        return asyncio.run(main())
    except (StoreUnreachable, ConfigurationError):
        raise  # exit 3 and 2, by ``framework.cli.main``
    except Exception as exc:  # a step failed: the database's error, for the operator
        raise CommandError(EXIT_FAILED, redact_text(f"{type(exc).__name__}: {exc}")) from None


def _steps(steps: list[PendingStep]) -> str:
    return ", ".join(str(step) for step in steps)
