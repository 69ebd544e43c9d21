"""What a test reads back from a ``Harness``: a saga's state, a pending timer, a settle that
did not finish."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from framework.errors import LeveretError
from framework.store.base import HistoryRow, SagaStatus

__all__ = ["PendingTimer", "SagaView", "SettleTimeout"]


@dataclass(frozen=True, slots=True)
class SagaView:
    """One saga instance as the store holds it (``Harness.saga``).

    Args:
        saga_id: ``<saga name>-<key>``.
        saga: the saga's name.
        status: running, compensating, completed, compensated, compensation_failed, failed
            or aborted.
        state: the state it is in: a step's name while it waits for that step's reply,
            ``<step>:compensating`` while it undoes it, or a state of your own rules.
        data: the saga's state Struct, decoded.
        completed: the steps done so far, in order (compensation undoes them in reverse).
        reason: why it failed or compensated, if it did.
        version: transitions saved so far.
        timeline: every message it took, with the state before and after (oldest first).
    """

    saga_id: str
    saga: str
    status: SagaStatus
    state: str
    data: Any
    completed: tuple[str, ...]
    reason: str | None
    version: int
    timeline: tuple[HistoryRow, ...]

    @property
    def states(self) -> list[str]:
        """The states it went through, from the first one entered to the current one."""
        entered = [row.to_state for row in self.timeline if row.note is None]
        return [s for i, s in enumerate(entered) if i == 0 or s != entered[i - 1]]


@dataclass(frozen=True, slots=True)
class PendingTimer:
    """A message waiting in a delay queue for its time (``Harness.timers``).

    Args:
        due_in: seconds from now until it is delivered.
        kind: ``deadline`` (a saga's timeout), ``retry`` (a handler's delayed retry) or
            ``delayed`` (anything else sent through the delay tier, e.g. a command a circuit
            breaker deferred).
        queue: the handler queue it is delivered to.
        type: its wire name.
        message_id: its id.
        saga_id: the saga it belongs to, if any.
        delay_queue: the delay queue holding it.
    """

    due_in: float
    kind: str
    queue: str
    type: str | None
    message_id: str | None
    saga_id: str | None
    delay_queue: str

    def describe(self) -> str:
        """``in 30s: saga deadline saga.order.timeout of order-o-1 for shop.orders...``."""
        what = {"deadline": "saga deadline", "retry": "retry of"}.get(self.kind, self.kind)
        of = f" of {self.saga_id}" if self.saga_id else ""
        return f"in {self.due_in:g}s: {what} {self.type}{of} for {self.queue}"


class SettleTimeout(LeveretError, TimeoutError):
    """``Harness.settle`` gave up: handlers still run or messages still wait.

    Args:
        seconds: how long it waited.
        busy: one line per handler queue still at work.
        timers: what waits in delay queues meanwhile.
        virtual: whether the harness runs on a ``VirtualClock`` (then no timer is waited for).
    """

    def __init__(
        self, seconds: float, *, busy: list[str], timers: list[PendingTimer], virtual: bool
    ) -> None:
        lines = [f"the app did not settle within {seconds:g}s"]
        lines += ["busy queues:", *(f"  {line}" for line in busy)] if busy else ["no busy queue"]
        if timers:
            if virtual:
                note = "not waited for: advance() fires them"
            else:
                note = "delayed retries are waited for in real time; saga deadlines are not"
            lines += [f"pending timers ({note}):", *(f"  {t.describe()}" for t in timers)]
        if not virtual and any(t.kind != "deadline" for t in timers):
            lines.append(
                "to skip the waiting, run the harness on a virtual clock: "
                "Harness(app, clock=VirtualClock()) and await harness.advance(seconds)"
            )
        super().__init__("\n".join(lines))
        self.seconds = seconds
        self.busy = busy
        self.timers = timers
