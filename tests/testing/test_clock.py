"""VirtualClock: time that moves only when told, one instant at a time."""

from __future__ import annotations

import pytest

from framework.testing import VirtualClock


def test_timers_fire_in_order_one_instant_at_a_time() -> None:
    """fire_until stops at the first instant with timers due, so the caller can run in between."""
    clock = VirtualClock()
    fired: list[str] = []
    clock.call_at(5.0, lambda: fired.append("b"))
    clock.call_at(1.0, lambda: fired.append("a"))
    clock.call_at(5.0, lambda: fired.append("c"))
    assert clock.fire_until(10.0) == 1
    assert (clock.now(), fired) == (1.0, ["a"])
    assert clock.fire_until(10.0) == 2
    assert (clock(), fired) == (5.0, ["a", "b", "c"])
    assert clock.fire_until(10.0) == 0
    assert clock.now() == 10.0


def test_cancelled_timers_do_not_fire() -> None:
    """A cancelled timer is skipped, and next_due ignores it."""
    clock = VirtualClock(start=100.0)
    fired: list[int] = []
    timer = clock.call_at(101.0, lambda: fired.append(1))
    clock.call_at(102.0, lambda: fired.append(2))
    timer.cancel()
    assert clock.next_due() == 102.0
    while clock.fire_until(200.0):
        pass
    assert fired == [2]
    assert clock.next_due() is None


def test_a_timer_in_the_past_fires_at_the_next_move() -> None:
    """A timer armed for a time already passed fires when the clock is next moved, even by 0."""
    clock = VirtualClock(start=10.0)
    fired: list[float] = []
    clock.call_at(3.0, lambda: fired.append(clock.now()))
    assert clock.fire_until(10.0) == 1
    assert fired == [10.0]


def test_the_clock_cannot_go_back() -> None:
    """Moving to an earlier time is a mistake, not a no-op."""
    clock = VirtualClock(start=5.0)
    with pytest.raises(ValueError, match="cannot go back"):
        clock.fire_until(4.0)
