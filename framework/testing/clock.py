"""A clock that moves only when a test moves it.

``Harness(app, clock=VirtualClock())`` runs the app's in-memory broker on it: message TTLs —
delayed retries, saga deadlines, expiring messages — come due when the test calls
``await harness.advance(seconds)``, never by real waiting. Calling it (``clock()``) reads it, like
the ``() -> float`` clocks elsewhere in leveret.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable

__all__ = ["VirtualClock"]


class _Timer:
    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class VirtualClock:
    """Seconds that pass only through ``fire_until`` (``Harness.advance`` calls it).

    Args:
        start: the time it shows first.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._timers: list[tuple[float, int, _Timer]] = []
        self._order = itertools.count()  # timers due at one instant fire in the order armed

    def __repr__(self) -> str:
        return f"<VirtualClock now={self._now:g} timers={len(self._pending())}>"

    def __call__(self) -> float:
        return self._now

    def now(self) -> float:
        """The current virtual time."""
        return self._now

    def call_at(self, when: float, callback: Callable[[], None]) -> _Timer:
        """Run ``callback`` once the clock reaches ``when`` (at the next move if it has)."""
        timer = _Timer(when, callback)
        heapq.heappush(self._timers, (when, next(self._order), timer))
        return timer

    def next_due(self) -> float | None:
        """When the earliest armed timer fires; None when none is armed."""
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        return self._timers[0][0] if self._timers else None

    def fire_until(self, when: float) -> int:
        """Move to the first instant at or before ``when`` that has timers due and fire them, or
        to ``when`` itself when none is due; returns how many fired.

        One instant at a time, so that the caller can let what the timers started run before
        later timers fire (a retry that fails again arms its next delay in the meantime).

        Raises:
            ValueError: ``when`` is in the past.
        """
        if when < self._now:
            raise ValueError(f"the clock cannot go back: {when!r} is before {self._now!r}")
        due = self.next_due()
        if due is None or due > when:
            self._now = when
            return 0
        self._now = max(self._now, due)
        fired = 0
        while (next_due := self.next_due()) is not None and next_due <= self._now:
            _, _, timer = heapq.heappop(self._timers)
            timer.cancelled = True
            timer.callback()
            fired += 1
        return fired

    def _pending(self) -> list[float]:
        return sorted(t.when for _, _, t in self._timers if not t.cancelled)
