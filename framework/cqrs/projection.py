"""``Projection``: event handlers that keep a read model, idempotent by event id and rebuildable.

Each applied event runs in the transaction of its inbox row (``transactional=True``), and in that
same transaction the projection appends the event to ``leveret_event_log`` under the next
position of its checkpoint row in ``leveret_projection``. So the log holds exactly the events the
read model reflects, in the order they were applied; ``rebuild`` empties the read model's tables
and replays the log in that order, which gives the same read model as the live run.

An event already in the log (same message id) is skipped, on top of the per-queue inbox: a
projection applies each event once even when it reaches it twice.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

import msgspec
import structlog

from framework.context import Context
from framework.errors import ConfigurationError, RegistrationError
from framework.handlers import Service
from framework.messages import Event, MessageKind, kind_of
from framework.store.base import Store, StoreTx
from framework.store.migrations import Migrations, Step

__all__ = ["EVENT_LOG_MIGRATIONS", "EVENT_LOG_SCHEMA", "Projection", "find_projection"]

E = TypeVar("E", bound=Event)
Apply = Callable[[E, StoreTx], Awaitable[None]]
_log = structlog.get_logger("leveret.projection")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

EVENT_LOG_SCHEMA: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS leveret_projection (
        name TEXT PRIMARY KEY,
        position BIGINT NOT NULL,
        last_message_id TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS leveret_event_log (
        projection TEXT NOT NULL,
        position BIGINT NOT NULL,
        message_id TEXT NOT NULL,
        wire_name TEXT NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (projection, position),
        UNIQUE (projection, message_id)
    )""",
)

# The event log's own component of the versioned schema, shared by every projection.
EVENT_LOG_MIGRATIONS = Migrations("leveret_event_log", (Step(*EVENT_LOG_SCHEMA),))

# ``apply_live`` on PostgreSQL: skip a logged event, else bump the checkpoint and log the event
# at the new position; returns that position, no row when the event was logged before.
_LOG_EVENT_POSTGRES = (
    "WITH seen AS (SELECT 1 FROM leveret_event_log WHERE projection = ? AND message_id = ?),"
    " p AS (INSERT INTO leveret_projection (name, position, last_message_id)"
    " SELECT ?::text, 1, ?::text WHERE NOT EXISTS (SELECT 1 FROM seen)"
    " ON CONFLICT (name) DO UPDATE SET position = leveret_projection.position + 1,"
    " last_message_id = excluded.last_message_id RETURNING position),"
    " l AS (INSERT INTO leveret_event_log (projection, position, message_id, wire_name, body)"
    " SELECT ?::text, p.position, ?::text, ?::text, ?::text FROM p)"
    " SELECT position FROM p"
)


class Projection:
    """A read model fed by events of one service, with a checkpoint and a replayable log.

    Args:
        name: the projection's name (its checkpoint row, its log, ``leveret projections
            rebuild``); a SQL identifier.
        service: the service whose event handlers feed it; the projection adds the event log's
            tables and its own to the service's schema (``Service.add_schema``).
        tables: the read model's tables, emptied by ``rebuild``.
        schema: those tables, a component of the versioned schema named
            ``projection:<name>``: SQL strings (its step 1) or ``Step(...)`` objects in order.

    Raises:
        RegistrationError: a name or table is not a plain SQL identifier.
    """

    def __init__(
        self,
        name: str,
        *,
        service: Service,
        tables: Sequence[str],
        schema: Sequence[str] | Sequence[Step] = (),
    ) -> None:
        for identifier in (name, *tables):
            if not _IDENTIFIER.match(identifier):
                raise RegistrationError(
                    f"projection {name!r}: {identifier!r} is not a plain SQL identifier "
                    "(letters, digits and '_')"
                )
        if find_projection([service], name, missing_ok=True) is not None:
            raise RegistrationError(f"service {service.name!r} already has projection {name!r}")
        self.name = name
        self.service = service
        self.tables = tuple(tables)
        self._appliers: dict[str, tuple[type[Event], Apply[Any]]] = {}
        service.add_schema(EVENT_LOG_MIGRATIONS)
        if schema:
            service.add_schema(Migrations.of(f"projection:{name}", schema))
        service.projections.append(self)

    def __repr__(self) -> str:
        return f"Projection({self.name!r}, events={sorted(self._appliers)})"

    def on(self, apply: Apply[E]) -> Apply[E]:
        """Apply an event to the read model: ``async def apply(evt: MyEvent, tx: StoreTx)``.

        Registers a transactional event handler on the service. ``apply`` must only change the
        read model through ``tx`` and depend on nothing but the event and the tables, so that
        a rebuild reproduces it.

        Raises:
            RegistrationError: the first parameter is not annotated with an Event class, or
                the projection already applies that event.
        """
        where = f"{apply.__module__}:{apply.__qualname__}"
        hints = typing.get_type_hints(apply)
        params = [p for p in hints if p != "return"]
        event_type = hints.get(params[0]) if params else None
        if not isinstance(event_type, type) or _kind_or_none(event_type) is not MessageKind.EVENT:
            raise RegistrationError(
                f"{where}: annotate its first parameter with the Event class it applies "
                f"(projection {self.name!r} applies events only)"
            )
        event_type = typing.cast(type[Event], event_type)
        wire = event_type.__wire_name__
        if wire in self._appliers:
            raise RegistrationError(f"projection {self.name!r} already applies {wire!r}")
        self._appliers[wire] = (event_type, apply)

        async def project(evt: Event, ctx: Context) -> None:
            await self.apply_live(ctx.tx, evt, ctx.message_id)

        project.__annotations__ = {"evt": event_type, "ctx": Context, "return": None}
        project.__module__ = apply.__module__
        project.__qualname__ = project.__name__ = f"{apply.__qualname__}[projection]"
        self.service.event(transactional=True)(project)
        return apply

    async def apply_live(self, tx: StoreTx, event: Event, message_id: str) -> bool:
        """Log ``event`` at the next position and apply it; False if it was applied before."""
        name = self.name
        wire = type(event).__wire_name__
        if tx.dialect == "postgresql":
            # The four statements below in one round trip; the upsert locks the checkpoint row
            # as the UPDATE does, so the log order is still the commit order.
            logged = await tx.fetchone(
                _LOG_EVENT_POSTGRES,
                name,
                message_id,
                name,
                message_id,
                name,
                message_id,
                wire,
                msgspec.json.encode(event).decode(),
            )
            if logged is None:
                return False
            await self._appliers[wire][1](event, tx)
            return True
        seen = await tx.fetchone(
            "SELECT 1 FROM leveret_event_log WHERE projection = ? AND message_id = ?",
            name,
            message_id,
        )
        if seen is not None:
            return False
        await tx.execute(
            "INSERT INTO leveret_projection (name, position) VALUES (?, 0) "
            "ON CONFLICT (name) DO NOTHING",
            name,
        )
        # The row lock (PostgreSQL) orders concurrent workers: log order is commit order.
        await tx.execute(
            "UPDATE leveret_projection SET position = position + 1, last_message_id = ? "
            "WHERE name = ?",
            message_id,
            name,
        )
        row = await tx.fetchone("SELECT position FROM leveret_projection WHERE name = ?", name)
        assert row is not None
        await tx.execute(
            "INSERT INTO leveret_event_log (projection, position, message_id, wire_name, body) "
            "VALUES (?, ?, ?, ?, ?)",
            name,
            row[0],
            message_id,
            wire,
            msgspec.json.encode(event).decode(),
        )
        await self._appliers[wire][1](event, tx)
        return True

    async def position(self, store: Store) -> int:
        """How many events the read model reflects (0 before the first)."""
        async with store.transaction() as tx:
            row = await tx.fetchone(
                "SELECT position FROM leveret_projection WHERE name = ?", self.name
            )
        return int(row[0]) if row is not None else 0

    async def rebuild(self, store: Store) -> int:
        """Empty the read model's tables and replay the event log in order; returns the count.

        Runs in one transaction: readers see the old read model until it commits. Logged events
        this projection no longer applies are skipped.
        """
        async with store.transaction() as tx:
            await tx.execute(  # wait for (and then hold off) live appliers of this projection
                "UPDATE leveret_projection SET position = position WHERE name = ?", self.name
            )
            for table in self.tables:
                await tx.execute(f"DELETE FROM {table}")  # identifiers checked in __init__
            rows = await tx.fetchall(
                "SELECT wire_name, body FROM leveret_event_log WHERE projection = ? "
                "ORDER BY position",
                self.name,
            )
            replayed = 0
            for wire, body in rows:
                applier = self._appliers.get(wire)
                if applier is None:
                    continue
                event_type, apply = applier
                await apply(msgspec.json.decode(body, type=event_type), tx)
                replayed += 1
        _log.info("projection_rebuilt", projection=self.name, events=replayed)
        return replayed


def _kind_or_none(cls: type) -> MessageKind | None:
    try:
        return kind_of(cls)
    except RegistrationError:
        return None


def find_projection(
    services: Iterable[Service], name: str, *, missing_ok: bool = False
) -> Projection | None:
    """The projection called ``name`` among ``services``.

    Raises:
        ConfigurationError: there is none (unless ``missing_ok``); the message lists the known
            projections.
    """
    known: list[str] = []
    for service in services:
        for projection in service.projections:
            if projection.name == name:
                found: Projection = projection
                return found
            known.append(projection.name)
    if missing_ok:
        return None
    listed = ", ".join(sorted(known)) or "none"
    raise ConfigurationError(f"no projection named {name!r}; this app's projections: {listed}")
