"""Retention of the stores' bookkeeping rows: sent outbox rows and inbox rows.

A ``Pruner`` decides when rows older than a retention are deleted (at most once a minute, or
once per retention if that is shorter), so callers may ask it as often as they like: a prune
that is not due costs one clock reading.
Rows go in chunks of ``PRUNE_CHUNK`` (one statement and commit each), so a prune after a long
pause or a long backlog never holds a database's write lock for long. Both prunes run from the
outbox sweeper (``Store.prune_inbox``, ``Store.prune_outbox``), off the handlers' and the
publishers' path.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from framework.errors import ConfigurationError

__all__ = [
    "INBOX_RETENTION",
    "PRUNE_CHUNK",
    "PRUNE_EVERY",
    "Pruner",
    "check_chunk",
    "check_inbox_retention",
    "inbox_retention_option",
]

#: Seconds an inbox row is kept by default: 7 days.
INBOX_RETENTION = 7 * 24 * 3600.0
#: Rows (inbox or sent outbox) one delete statement removes at most.
PRUNE_CHUNK = 5000
#: Seconds between two prunes at most.
PRUNE_EVERY = 60.0


class Pruner:
    """Decides when rows older than the retention are deleted (at most once a minute, or once
    per retention if that is shorter).

    Args:
        retention: seconds a row is kept; None keeps rows forever (no prune is ever due). 0
            (the outbox's "delete when sent") prunes once a minute: rows a longer retention
            left behind still go.
        clock: the time source (seconds since the epoch).
    """

    def __init__(self, retention: float | None, clock: Callable[[], float]) -> None:
        self.retention = retention
        self._clock = clock
        self._every = min(retention, PRUNE_EVERY) if retention else PRUNE_EVERY
        self._last = -math.inf

    def now(self) -> float:
        """The current time by the injected clock."""
        return self._clock()

    def cutoff(self, now: float) -> float | None:
        """The timestamp before which rows go, when a prune is due at ``now``; else None."""
        if self.retention is None or now - self._last < self._every:
            return None
        self._last = now
        return now - self.retention


def check_chunk(chunk: int) -> int:
    """``chunk`` if it is a valid prune chunk (rows per delete statement, >= 1).

    Raises:
        ConfigurationError: ``chunk`` is not an int >= 1 (a chunk of 0 would never finish).
    """
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ConfigurationError(f"prune chunk={chunk!r} must be an int >= 1 (rows per delete)")
    return chunk


def check_inbox_retention(value: float | None, where: str) -> float | None:
    """``value`` if it is a valid inbox retention (seconds > 0, or None for forever).

    Raises:
        ConfigurationError: ``value`` is 0, negative or not finite.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(
            f"{where}: inbox_retention={value!r} must be a number of seconds > 0, or None to "
            "keep inbox rows forever"
        )
    if not math.isfinite(value) or value <= 0:
        raise ConfigurationError(
            f"{where}: inbox_retention={value!r} must be a number of seconds > 0, or None to "
            "keep inbox rows forever (0 would turn duplicate detection off)"
        )
    return float(value)


def inbox_retention_option(
    query: Mapping[str, str], default: float | None, *, where: str
) -> float | None:
    """The inbox retention in query parameter ``inbox_retention`` (``none``: forever), or
    ``default`` when absent.

    Raises:
        ConfigurationError: the value is neither ``none`` nor a number of seconds > 0.
    """
    raw = query.get("inbox_retention")
    if raw is None:
        return default
    if raw.strip().lower() == "none":
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ConfigurationError(
            f"store URL {where}: inbox_retention={raw!r} must be a number of seconds > 0, or "
            "none to keep inbox rows forever (0 would turn duplicate detection off)"
        )
    return value
