"""Harness time: advance() on a VirtualClock fires delayed retries and saga deadlines without
real waiting; settle() never waits for a saga deadline and says what it waits for."""

from __future__ import annotations

import asyncio
import time

import pytest

from framework import ConfigurationError
from framework.testing import Harness, SagaStatus, SettleTimeout, VirtualClock
from tests.testing.loyalty import Enroll, Hold, Loyalty, Stamp


async def test_advance_fires_delayed_retries_in_virtual_time() -> None:
    """A handler failing twice runs again at 5 s and 35 s of virtual time, and nothing sooner."""
    shop = Loyalty(delays=(5.0, 30.0))
    started = time.monotonic()
    async with Harness(shop.app, clock=VirtualClock()) as harness:
        await harness.app.send(Stamp(card="c-1", failures=2))
        await harness.settle()
        assert shop.attempts == {"c-1": 1}
        [timer] = await harness.timers()
        assert (timer.kind, timer.due_in, timer.type) == ("retry", 5.0, "points.stamp")
        await harness.advance(4.9)
        assert shop.attempts == {"c-1": 1}
        await harness.advance(0.1)
        assert shop.attempts == {"c-1": 2}
        await harness.advance(30)
        assert shop.attempts == {"c-1": 3}
        assert [c.wire_name for c in harness.emitted_by("points")] == ["points.stamped"]
        assert await harness.timers() == []
    assert time.monotonic() - started < 5


async def test_one_advance_fires_the_timers_armed_within_its_window() -> None:
    """advance(60) runs the retry at 5 s, and the one it arms for 35 s, in one call."""
    shop = Loyalty(delays=(5.0, 30.0))
    async with Harness(shop.app, clock=VirtualClock()) as harness:
        await harness.app.send(Stamp(card="c-2", failures=2))
        await harness.advance(60)
        assert shop.attempts == {"c-2": 3}
        assert harness.clock is not None
        assert harness.clock.now() == 60


async def test_a_saga_deadline_fires_and_compensates() -> None:
    """Past the points step's deadline the saga undoes the points, then the card, and ends
    compensated."""
    shop = Loyalty(points_timeout=30.0)
    async with Harness(shop.app, clock=VirtualClock()) as harness:
        await harness.app.send(Enroll(member_id="lost-1"))
        await harness.settle()
        saga = await harness.saga("enrollment-lost-1")
        assert (saga.status, saga.state, saga.completed) == (
            SagaStatus.RUNNING,
            "points",
            ("card",),
        )
        [deadline] = await harness.timers()
        assert (deadline.kind, deadline.due_in, deadline.saga_id) == (
            "deadline",
            30.0,
            "enrollment-lost-1",
        )
        await harness.advance(29)
        assert (await harness.saga("enrollment-lost-1")).status is SagaStatus.RUNNING
        await harness.advance(1)
        saga = await harness.saga("enrollment-lost-1")
        assert saga.status is SagaStatus.COMPENSATED
        assert saga.states == [
            "card",
            "points",
            "points:compensating",
            "card:compensating",
            "compensated",
        ]
        assert saga.data.member_id == "lost-1"
        assert [c.wire_name for c in harness.emitted_by("loyalty")][-2:] == [
            "points.debit_points",
            "cards.revoke_card",
        ]


async def test_a_saga_that_completes_shows_its_data() -> None:
    """harness.saga decodes the saga's state Struct and lists the steps done; the deadline
    left armed is ignored when it fires."""
    shop = Loyalty()
    async with Harness(shop.app, clock=VirtualClock()) as harness:
        await harness.app.send(Enroll(member_id="ann"))
        await harness.settle()
        saga = await harness.saga("enrollment-ann")
        assert (saga.status, saga.data.points, saga.completed) == (
            SagaStatus.COMPLETED,
            100,
            ("card", "points"),
        )
        assert saga.timeline[0].message_type == "loyalty.enroll"
        [stale] = await harness.timers()  # armed on entering "points", left behind
        await harness.advance(stale.due_in)
        saga = await harness.saga("enrollment-ann")
        assert saga.status is SagaStatus.COMPLETED
        assert saga.timeline[-1].note == "ignored: saga already completed"


async def test_real_clock_settle_does_not_wait_for_a_deadline_sharing_a_retry_delay() -> None:
    """A step deadline equal to a retry delay shares its delay queue; settle() returns anyway."""
    shop = Loyalty(points_timeout=30.0, delays=(30.0,))
    async with Harness(shop.app) as harness:
        await harness.app.send(Enroll(member_id="lost-2"))
        async with asyncio.timeout(3):
            await harness.settle()
        [deadline] = await harness.timers()
        assert deadline.kind == "deadline"
        assert deadline.delay_queue == "loyalty.delay.30000"


async def test_settle_timeout_names_the_busy_queue_and_the_pending_timers() -> None:
    """A settle that gives up raises a TimeoutError that lists what is still at work."""
    shop = Loyalty()
    async with Harness(shop.app, clock=VirtualClock()) as harness:
        await harness.app.send(Enroll(member_id="lost-3"))
        await harness.settle()
        await harness.app.send(Hold(card="h-1"))
        with pytest.raises(SettleTimeout) as failed:
            await harness.settle(timeout=0.2)
        assert isinstance(failed.value, TimeoutError)
        text = str(failed.value)
        assert "loyalty.points.points.hold (points.hold): 1 running" in text
        assert "in 30s: saga deadline saga.enrollment.timeout of enrollment-lost-3" in text
        assert "advance() fires them" in text
        assert [t.kind for t in failed.value.timers] == ["deadline"]
        shop.release.set()
        await harness.settle()


async def test_advance_needs_a_virtual_clock() -> None:
    """On the real clock advance() says how to get a virtual one."""
    async with Harness(Loyalty().app) as harness:
        with pytest.raises(ConfigurationError, match=r"clock=VirtualClock\(\)"):
            await harness.advance(1)


async def test_saga_lookup_errors_say_what_exists() -> None:
    """An unknown saga id names the app's saga id form."""
    async with Harness(Loyalty().app) as harness:
        with pytest.raises(LookupError, match="enrollment-<key>"):
            await harness.saga("enrollment-nobody")
