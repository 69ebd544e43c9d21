"""What the SQLite and PostgreSQL stores share: column lists, row mapping, URL options.

Both stores keep the same tables (``leveret_sagas``, ``leveret_inbox``, ``leveret_outbox``,
``leveret_history``, ``leveret_meta``, and the version tables ``leveret_schema`` and
``leveret_schema_version``); only the column types and
placeholders differ. Sent outbox rows stay (with ``sent_at`` set) for ``outbox_retention``
seconds, so an operator can see what was published and when (``_retention``: pruned from the
sweeper, found by a partial index on ``sent_at``); pending reads use a partial index on unsent
rows. A row that can never be published (``StoreTx.fail_outbox``) moves to
``leveret_outbox_failed`` (schema step 2) with ``failed_at`` and ``error``, and stays there.
Inbox rows stay for ``inbox_retention`` seconds (``_retention``), found by an index on
``created_at``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import msgspec

from framework.errors import ConfigurationError
from framework.store.base import HistoryRow, OutboxRow, SagaRecord, SagaStatus

__all__ = [
    "HISTORY_COLUMNS",
    "OUTBOX_COLUMNS",
    "SAGA_COLUMNS",
    "SECRET",
    "Row",
    "emitted_json",
    "failed_from_row",
    "history_from_row",
    "history_params",
    "outbox_from_row",
    "outbox_params",
    "query_option",
    "saga_from_row",
    "saga_params",
]

SAGA_COLUMNS = (
    "saga_id, saga, correlation_id, status, state, data, version, created_at, updated_at, "
    "deadline_at, reason"
)
# The columns an insert supplies; ``position`` and ``sent_at`` are the store's.
OUTBOX_COLUMNS = (
    "message_id, exchange, routing_key, body, properties, mandatory, destination, saga_id, "
    "created_at, attempts"
)
# The ``leveret_meta`` row holding the sagas' secret (``Store.shared_secret``).
SECRET = "saga_secret"
HISTORY_COLUMNS = (
    "saga_id, version, at, message_id, message_type, from_state, to_state, status, emitted, note"
)


class Row(Protocol):
    """A result row of either driver (a tuple, an ``asyncpg.Record``), read by position."""

    def __getitem__(self, index: int, /) -> Any: ...


_emitted_decoder = msgspec.json.Decoder(list[str])
_T = TypeVar("_T", int, float)


def saga_params(record: SagaRecord) -> tuple[Any, ...]:
    """A record's values in ``SAGA_COLUMNS`` order."""
    return (
        record.saga_id,
        record.saga,
        record.correlation_id,
        record.status.value,
        record.state,
        record.data,
        record.version,
        record.created_at,
        record.updated_at,
        record.deadline_at,
        record.reason,
    )


def saga_from_row(row: Row) -> SagaRecord:
    """A record from a row selected with ``SAGA_COLUMNS``."""
    return SagaRecord(
        saga_id=row[0],
        saga=row[1],
        correlation_id=row[2],
        status=SagaStatus(row[3]),
        state=row[4],
        data=bytes(row[5]),
        version=row[6],
        created_at=row[7],
        updated_at=row[8],
        deadline_at=row[9],
        reason=row[10],
    )


def outbox_params(row: OutboxRow) -> tuple[Any, ...]:
    """A row's values in ``OUTBOX_COLUMNS`` order."""
    return (
        row.message_id,
        row.exchange,
        row.routing_key,
        row.body,
        row.properties,
        row.mandatory,
        row.destination,
        row.saga_id,
        row.created_at,
        row.attempts,
    )


def outbox_from_row(row: Row) -> OutboxRow:
    """A row selected with ``position, OUTBOX_COLUMNS``."""
    return OutboxRow(
        position=row[0],
        message_id=row[1],
        exchange=row[2],
        routing_key=row[3],
        body=bytes(row[4]),
        properties=bytes(row[5]),
        mandatory=bool(row[6]),
        destination=row[7],
        saga_id=row[8],
        created_at=row[9],
        attempts=row[10],
    )


def failed_from_row(row: Row) -> OutboxRow:
    """A row selected with ``position, OUTBOX_COLUMNS, failed_at, error``."""
    return msgspec.structs.replace(outbox_from_row(row), failed_at=row[11], error=row[12])


def emitted_json(emitted: Sequence[str]) -> str:
    """The ``emitted`` column's JSON text."""
    return msgspec.json.encode(list(emitted)).decode()


def history_params(row: HistoryRow) -> tuple[Any, ...]:
    """A row's values in ``HISTORY_COLUMNS`` order."""
    return (
        row.saga_id,
        row.version,
        row.at,
        row.message_id,
        row.message_type,
        row.from_state,
        row.to_state,
        row.status.value,
        emitted_json(row.emitted),
        row.note,
    )


def history_from_row(row: Row) -> HistoryRow:
    """A row selected with ``HISTORY_COLUMNS``."""
    return HistoryRow(
        saga_id=row[0],
        version=row[1],
        at=row[2],
        message_id=row[3],
        message_type=row[4],
        from_state=row[5],
        to_state=row[6],
        status=SagaStatus(row[7]),
        emitted=_emitted_decoder.decode(row[8]),
        note=row[9],
    )


def query_option(
    query: Mapping[str, str], name: str, kind: Callable[[str], _T], *, minimum: _T, where: str
) -> _T | None:
    """The number in query parameter ``name``, or None when absent.

    Raises:
        ConfigurationError: the value is not a number of ``kind`` at least ``minimum``.
    """
    raw = query.get(name)
    if raw is None:
        return None
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or (isinstance(value, float) and not math.isfinite(value)) or value < minimum:
        raise ConfigurationError(
            f"store URL {where}: {name}={raw!r} must be a {kind.__name__} >= {minimum}"
        )
    return value
