"""Versioned schemas: numbered steps per component, applied by ``leveret db upgrade``.

Every set of tables has a component name and an ordered list of ``Step``s: leveret's own
(``leveret``: sagas, inbox, outbox, history, meta), the projections' event log, and each
service's (``Service(schema=...)``, named after the service). The table ``leveret_schema`` keeps,
per component, how many of its steps the database has: its version.

Schema changes are a deploy step: ``leveret db upgrade`` (``App.upgrade_db()`` from Python)
applies the missing steps under a lock (PostgreSQL: an advisory lock; SQLite: ``BEGIN
IMMEDIATE``), so two runners never race and each step runs once. A worker starting on
PostgreSQL only reads the versions: on a schema that is behind it refuses to start
(``SchemaBehind``) instead of running DDL against tables that live transactions hold — in a chaos
run, ``CREATE INDEX IF NOT EXISTS`` on the busy inbox deadlocked with saga transactions.

A database from before versioning (``leveret_schema_version`` but no ``leveret_schema``) counts
as being at that version of ``leveret``; the services' first steps, ``CREATE ... IF NOT EXISTS``
as before, run again harmlessly and are recorded.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from framework.errors import ConfigurationError, RegistrationError
from framework.urls import redact

__all__ = [
    "CORE",
    "Migrations",
    "PendingStep",
    "SchemaBehind",
    "Step",
    "collect",
    "plan",
]

#: The component of leveret's own tables.
CORE = "leveret"
# The version table; ``component`` is a name above, ``version`` the number of steps applied.
VERSION_TABLE = "leveret_schema"


class Step:
    """One numbered step of a component's schema: statements run in order, in one transaction.

    Args:
        statements: the SQL, for every dialect.
        sqlite: the SQL on SQLite instead of ``statements``.
        postgresql: the SQL on PostgreSQL instead of ``statements``.

    A step, once released, never changes: a change is a new step (``ALTER TABLE ...``).
    """

    __slots__ = ("postgresql", "sqlite", "statements")

    def __init__(
        self,
        *statements: str,
        sqlite: Sequence[str] | None = None,
        postgresql: Sequence[str] | None = None,
    ) -> None:
        for sql in (*statements, *(sqlite or ()), *(postgresql or ())):
            if not isinstance(sql, str):
                raise RegistrationError(f"Step(...) takes SQL strings, not {sql!r}")
        self.statements = tuple(statements)
        self.sqlite = None if sqlite is None else tuple(sqlite)
        self.postgresql = None if postgresql is None else tuple(postgresql)

    def for_dialect(self, dialect: str) -> tuple[str, ...]:
        """The statements to run on ``dialect`` (``"sqlite"`` or ``"postgresql"``)."""
        own = {"sqlite": self.sqlite, "postgresql": self.postgresql}.get(dialect)
        return self.statements if own is None else own

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Step):
            return NotImplemented
        return (self.statements, self.sqlite, self.postgresql) == (
            other.statements,
            other.sqlite,
            other.postgresql,
        )

    def __hash__(self) -> int:
        return hash((self.statements, self.sqlite, self.postgresql))

    def __repr__(self) -> str:
        return f"Step({len(self.statements)} statements)"


@dataclass(frozen=True)
class Migrations:
    """The ordered steps of one component's schema; step ``n`` brings it to version ``n``.

    Args:
        name: the component (a service's name for ``Service(schema=...)``).
        steps: the steps, oldest first.
    """

    name: str
    steps: tuple[Step, ...]

    @classmethod
    def of(cls, name: str, schema: Iterable[str | Step]) -> Migrations:
        """Steps from a service's ``schema``: plain SQL strings are its step 1 (the form from
        before versioning), ``Step`` objects are its steps in order.

        Raises:
            RegistrationError: ``schema`` mixes strings and steps.
        """
        items: list[Any] = list(schema)
        if all(isinstance(item, str) for item in items):
            return cls(name, (Step(*items),) if items else ())
        if all(isinstance(item, Step) for item in items):
            return cls(name, tuple(items))
        raise RegistrationError(
            f"schema of {name!r} mixes SQL strings and Step objects: give either the "
            "statements of one step, or a list of Step(...) in order"
        )


@dataclass(frozen=True)
class PendingStep:
    """A step a database has not applied: ``component`` from ``version - 1`` to ``version``."""

    component: str
    version: int
    statements: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.component} {self.version}"


class SchemaBehind(ConfigurationError):
    """The store's schema lacks steps this code needs; a worker does not start on it.

    Args:
        url: the store (password redacted).
        pending: the missing steps.
    """

    def __init__(self, url: str, pending: Sequence[PendingStep]) -> None:
        steps = ", ".join(str(step) for step in pending)
        super().__init__(
            f"the store at {redact(url)} needs schema steps it has not applied ({steps}): run "
            f"`leveret db upgrade MODULE:APP` (or `leveret db upgrade {redact(url)}` for "
            "leveret's own tables) as a deploy step before starting the workers, or start "
            "them with `leveret run --upgrade-db` / AppConfig(upgrade_db=True)"
        )
        self.url = redact(url)
        self.pending = tuple(pending)


def collect(services: Iterable[Any]) -> tuple[Migrations, ...]:
    """The components of ``services`` (``Service.migrations``), each once.

    Raises:
        ConfigurationError: two services declare different steps under one name.
    """
    found: dict[str, Migrations] = {}
    for service in services:
        for migrations in service.migrations:
            known = found.setdefault(migrations.name, migrations)
            if known != migrations:
                raise ConfigurationError(
                    f"two different schemas are named {migrations.name!r}: give each service's "
                    "tables a component of their own"
                )
    return tuple(found.values())


def plan(
    found: Mapping[str, int], components: Sequence[Migrations], dialect: str, where: str
) -> list[PendingStep]:
    """The steps ``components`` need on a database at versions ``found``, in order.

    Raises:
        ConfigurationError: leveret's own tables are newer than this leveret (a service's may
            be: its steps are meant to keep older code working while a deploy rolls out).
    """
    pending: list[PendingStep] = []
    for component in components:
        version = found.get(component.name, 0)
        if component.name == CORE and version > len(component.steps):
            raise ConfigurationError(
                f"the store at {redact(where)} has schema version {version}, newer than this "
                f"leveret's {len(component.steps)}: upgrade leveret, or point it at another "
                "database"
            )
        for number, step in enumerate(component.steps[version:], start=version + 1):
            pending.append(PendingStep(component.name, number, step.for_dialect(dialect)))
    return pending
