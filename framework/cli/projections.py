"""``leveret projections list|rebuild``: an app's read models, from its store.

``list`` prints every projection of MODULE:APP with how many events its read model reflects
(its checkpoint) and the last one applied; ``rebuild`` empties one read model and replays its
event log. The store is the app's own unless ``--db-url`` names another.

Exit codes: 0 done; 2 usage or configuration error (MODULE:APP does not load, no store, an
unknown projection); 3 the database could not be reached (or its SQLite file does not exist).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING, Any

from framework.cli._common import (
    add_app,
    add_db_url,
    add_json,
    existing_store,
    load,
    print_json,
    print_table,
    usage_error,
)
from framework.cli.exits import EXIT_OK, EXIT_USAGE
from framework.logging import configure_logging

if TYPE_CHECKING:
    from framework.app import App
    from framework.cqrs import Projection
    from framework.store.base import Store

__all__ = ["register"]


def register(commands: Any) -> None:
    """Add ``projections list|rebuild`` to the ``leveret`` subparsers."""
    projections = commands.add_parser(
        "projections",
        help="inspect and rebuild read models",
        description="Inspect and rebuild the read models (projections) of MODULE:APP.",
    )
    actions = projections.add_subparsers(title="actions", metavar="ACTION")

    def usage(_: argparse.Namespace) -> int:
        projections.print_help(sys.stderr)
        return EXIT_USAGE

    projections.set_defaults(command=usage)
    listing = actions.add_parser(
        "list",
        help="every projection, the events its read model reflects and the last one applied",
        description=(
            "List the projections of MODULE:APP: their service, their tables, how many events "
            "the read model reflects (its checkpoint) and the id of the last one applied. "
            "Reads only."
        ),
    )
    add_app(listing)
    add_db_url(listing)
    add_json(listing)
    listing.set_defaults(command=_list)

    rebuild = actions.add_parser(
        "rebuild",
        help="empty a projection's read model and replay its event log",
        description=(
            "Empty the tables of projection NAME of MODULE:APP and replay its event log in the "
            "order the events were first applied, in one transaction of the app's store."
        ),
    )
    add_app(rebuild)
    rebuild.add_argument("name", metavar="NAME", help="the projection, e.g. orders_view")
    add_db_url(rebuild)
    rebuild.set_defaults(command=_rebuild)


def _store(app: App, args: argparse.Namespace) -> Store:
    from framework.store.base import store_from_url

    if args.db_url is not None:
        app.use_store(store_from_url(args.db_url))
    if app.store is None:
        raise usage_error(f"{args.app} has no store: name its database with --db-url URL")
    return existing_store(app.store, db_url_given=args.db_url is not None)


def _list(args: argparse.Namespace) -> int:
    from framework.cqrs.projection import EVENT_LOG_MIGRATIONS

    configure_logging(level="error")
    app = load(args.app)
    projections = [p for service in app.services for p in service.projections]
    if not projections:
        raise usage_error(f"{args.app} has no projections")
    store = _store(app, args)

    async def read() -> list[dict[str, Any]]:
        try:
            pending = await store.pending_steps([EVENT_LOG_MIGRATIONS])
            logged = not any(step.component == EVENT_LOG_MIGRATIONS.name for step in pending)
            return [await _row(store, p, logged=logged) for p in projections]
        finally:
            await store.close()

    rows = asyncio.run(read())
    if args.json:
        print_json(rows)
        return EXIT_OK
    print_table(
        ("projection", "service", "events", "last event", "tables"),
        [
            (
                r["name"],
                r["service"],
                str(r["position"]),
                r["last_message_id"] or "-",
                ", ".join(r["tables"]),
            )
            for r in rows
        ],
        right={2},
    )
    return EXIT_OK


async def _row(store: Store, projection: Projection, *, logged: bool) -> dict[str, Any]:
    position, last = 0, None
    if logged:  # else the event log's tables do not exist yet: nothing applied
        async with store.transaction() as tx:
            row = await tx.fetchone(
                "SELECT position, last_message_id FROM leveret_projection WHERE name = ?",
                projection.name,
            )
        if row is not None:
            position, last = int(row[0]), row[1]
    return {
        "name": projection.name,
        "service": projection.service.name,
        "position": position,
        "last_message_id": last,
        "tables": list(projection.tables),
    }


def _rebuild(args: argparse.Namespace) -> int:
    from framework.cqrs import find_projection

    configure_logging()
    app = load(args.app)
    projection = find_projection(app.services, args.name)
    assert projection is not None
    store = _store(app, args)

    async def rebuild() -> int:
        try:
            await app.upgrade_db()
            return await projection.rebuild(store)
        finally:
            await store.close()

    count = asyncio.run(rebuild())
    print(f"rebuilt projection {args.name!r} from {count} events")
    return EXIT_OK
