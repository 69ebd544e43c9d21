"""The breaker state machine, scripted call by call against a fake clock."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from framework.errors import BreakerOpen, ConfigurationError, PublishNacked, PublishTimeout
from framework.resilience import (
    Backoff,
    BreakerClosed,
    BreakerConfig,
    BreakerDisabled,
    BreakerEvent,
    BreakerForcedOpen,
    BreakerHalfOpened,
    BreakerOpened,
    BreakerReset,
    CallNotPermitted,
    CircuitBreaker,
    Outcome,
    State,
    WindowType,
)
from framework.resilience.window import FAILED, SLOW, CountWindow
from tests.support.clock import FakeClock

OK, FAIL = Outcome.SUCCESS, Outcome.FAILURE
CLOSED, OPEN, HALF_OPEN = State.CLOSED, State.OPEN, State.HALF_OPEN


def make(clock: FakeClock, **config: Any) -> tuple[CircuitBreaker, list[BreakerEvent]]:
    breaker = CircuitBreaker("inventory", BreakerConfig(**config), clock=clock)
    events: list[BreakerEvent] = []
    breaker.subscribe(events.append)
    return breaker, events


def call(breaker: CircuitBreaker, outcome: Outcome, duration: float = 0.01) -> State:
    permit = breaker.try_acquire()
    assert permit is not None, f"call refused in state {breaker.state}"
    breaker.record(permit, outcome, duration)
    return breaker.state


def transitions(events: list[BreakerEvent]) -> list[tuple[str, str]]:
    return [
        (type(e).__name__, e.reason.value)  # type: ignore[attr-defined]
        for e in events
        if not isinstance(e, CallNotPermitted)
    ]


def test_count_window_opens_at_the_threshold_once_minimum_calls_are_in() -> None:
    """No rate before minimum_calls; at 50% failures of 4 calls the breaker opens."""
    breaker, events = make(FakeClock(), window_size=10, minimum_calls=4, failure_rate_threshold=50)
    script = [(FAIL, CLOSED), (FAIL, CLOSED), (OK, CLOSED), (OK, OPEN)]
    for outcome, expected in script:
        assert call(breaker, outcome) is expected
    m = breaker.metrics()
    assert (m.failure_rate, m.buffered, m.failed, m.successful) == (50.0, 4, 2, 2)
    assert transitions(events) == [("BreakerOpened", "failure_rate")]
    assert breaker.try_acquire() is None


def test_count_window_slides_and_reports_metrics_after_each_call() -> None:
    """The oldest outcome leaves the ring as a new one comes in; rates follow exactly."""
    breaker, _ = make(FakeClock(), window_size=4, minimum_calls=4, failure_rate_threshold=50)
    expected = [
        (OK, CLOSED, None, 1, 0),
        (OK, CLOSED, None, 2, 0),
        (FAIL, CLOSED, None, 3, 1),
        (OK, CLOSED, 25.0, 4, 1),
        (OK, CLOSED, 25.0, 4, 1),  # the first OK left the window
        (FAIL, OPEN, 50.0, 4, 2),  # FAIL, OK, OK, FAIL: the third call's failure is still in
    ]
    for outcome, state, rate, buffered, failed in expected:
        assert call(breaker, outcome) is state
        m = breaker.metrics()
        assert (m.failure_rate, m.buffered, m.failed) == (rate, buffered, failed)


def test_failures_sliding_out_keep_the_breaker_closed() -> None:
    """A failure that slid out of the count window no longer counts."""
    breaker, _ = make(FakeClock(), window_size=3, minimum_calls=3, failure_rate_threshold=60)
    for outcome in (FAIL, OK, OK, OK, FAIL, OK):
        assert call(breaker, outcome) is CLOSED
    assert breaker.metrics().failed == 1


def test_minimum_calls_is_capped_by_a_count_window() -> None:
    """With minimum_calls above the window size, a full window is enough to judge."""
    breaker, _ = make(FakeClock(), window_size=3, minimum_calls=100)
    assert [call(breaker, FAIL) for _ in range(3)] == [CLOSED, CLOSED, OPEN]


def test_time_window_forgets_calls_older_than_the_window() -> None:
    """In a 10 s window, failures from 10 s ago are gone; recent ones decide."""
    clock = FakeClock(start=100.0)
    breaker, _ = make(clock, window_type=WindowType.TIME, window_size=10, minimum_calls=3)
    assert call(breaker, FAIL) is CLOSED
    clock.advance(1)
    assert call(breaker, FAIL) is CLOSED
    clock.advance(9.5)  # the first failure (second 100) is out; the one at 101 is in
    m = breaker.metrics()
    assert (m.buffered, m.failed, m.failure_rate) == (1, 1, None)
    assert call(breaker, OK) is CLOSED
    assert call(breaker, OK) is CLOSED  # 1 of 3 failed: 33%
    assert breaker.metrics().failure_rate == pytest.approx(100 / 3)
    assert call(breaker, FAIL) is OPEN  # 2 of 4: 50%


def test_time_window_after_a_long_idle_period_is_empty() -> None:
    """An idle period longer than the window drops every bucket at once."""
    clock = FakeClock()
    breaker, _ = make(clock, window_type=WindowType.TIME, window_size=5, minimum_calls=2)
    call(breaker, FAIL)
    clock.advance(1000)
    assert breaker.metrics().buffered == 0
    assert call(breaker, OK) is CLOSED
    clock.advance(2)
    assert call(breaker, FAIL) is OPEN  # 1 of 2 (the old failure is not counted twice)
    assert breaker.metrics().buffered == 2


def test_slow_calls_open_the_breaker_by_their_own_rate() -> None:
    """Calls at or above slow_call_duration count as slow; at 50% slow the breaker opens."""
    breaker, events = make(
        FakeClock(),
        window_size=4,
        minimum_calls=4,
        failure_rate_threshold=100,
        slow_call_duration=1.0,
        slow_call_rate_threshold=50,
    )
    assert call(breaker, OK, 2.0) is CLOSED
    assert call(breaker, OK, 0.1) is CLOSED
    assert call(breaker, FAIL, 1.0) is CLOSED
    assert call(breaker, OK, 0.2) is OPEN
    m = breaker.metrics()
    assert (m.slow, m.slow_failed, m.slow_call_rate, m.failure_rate) == (2, 1, 50.0, 25.0)
    assert transitions(events) == [("BreakerOpened", "slow_call_rate")]


def test_open_turns_half_open_only_after_the_wait() -> None:
    """Refused until the wait is over to the tick; the first call after it is a probe."""
    clock = FakeClock()
    breaker, events = make(clock, window_size=2, minimum_calls=2, wait_in_open=10.0)
    call(breaker, FAIL)
    call(breaker, FAIL)
    clock.advance(9.999)
    assert breaker.try_acquire() is None
    assert breaker.state is OPEN  # no automatic transition: reading does not half-open
    assert breaker.retry_after() == pytest.approx(0.001)
    clock.advance(0.001)
    assert breaker.state is OPEN
    assert breaker.try_acquire() is not None
    assert breaker.state is HALF_OPEN
    assert transitions(events) == [
        ("BreakerOpened", "failure_rate"),
        ("BreakerHalfOpened", "wait_elapsed"),
    ]
    assert breaker.metrics().not_permitted == 1


def test_automatic_transition_half_opens_without_a_call() -> None:
    """With automatic_transition, reading the state (or tick) after the wait half-opens."""
    clock = FakeClock()
    breaker, _ = make(
        clock, window_size=1, minimum_calls=1, wait_in_open=5.0, automatic_transition=True
    )
    call(breaker, FAIL)
    assert breaker.next_deadline() == clock.now + 5.0
    clock.advance(4.9)
    assert breaker.state is OPEN
    clock.advance(0.1)
    breaker.tick()
    assert breaker.state is HALF_OPEN
    assert breaker.next_deadline() == clock.now + breaker.config.max_wait_in_half_open


def test_half_open_grants_exactly_k_permits_then_closes_on_success() -> None:
    """Three probes and no more; three successes close the breaker with a fresh window."""
    clock = FakeClock()
    breaker, events = make(
        clock, window_size=2, minimum_calls=2, wait_in_open=1.0, permitted_calls_in_half_open=3
    )
    call(breaker, FAIL)
    call(breaker, FAIL)
    clock.advance(1.0)
    permits = [breaker.try_acquire() for _ in range(5)]
    assert sum(p is not None for p in permits) == 3
    assert permits[3:] == [None, None]
    assert breaker.metrics().window == "3 probes"
    for permit in permits[:3]:
        assert breaker.state is HALF_OPEN
        assert permit is not None
        breaker.record(permit, OK, 0.01)
    assert breaker.state is CLOSED
    m = breaker.metrics()
    assert (m.buffered, m.failed, m.not_permitted) == (0, 0, 2)
    assert transitions(events)[-1] == ("BreakerClosed", "probes_succeeded")


def test_half_open_reopens_when_probes_fail_and_the_wait_grows() -> None:
    """Two failed probes of three re-open the breaker; Backoff doubles each opening."""
    clock = FakeClock()
    breaker, events = make(
        clock,
        window_size=1,
        minimum_calls=1,
        permitted_calls_in_half_open=3,
        wait_in_open=Backoff(initial=1.0, multiplier=2.0, maximum=3.0, jitter=0.0),
    )
    call(breaker, FAIL)
    waits = []
    for _ in range(3):
        waits.append(breaker.retry_after())
        clock.advance(breaker.retry_after() or 0.0)
        assert call(breaker, FAIL) is HALF_OPEN
        assert call(breaker, FAIL) is HALF_OPEN
        assert call(breaker, OK) is OPEN  # 2 of 3 failed: 67% >= 50%
    assert waits == [1.0, 2.0, 3.0]
    assert transitions(events)[1:3] == [
        ("BreakerHalfOpened", "wait_elapsed"),
        ("BreakerOpened", "probes_failed"),
    ]
    clock.advance(3.0)
    for _ in range(3):
        call(breaker, OK)
    assert breaker.state is CLOSED
    call(breaker, FAIL)
    assert breaker.retry_after() == 1.0  # closing reset the backoff


def test_backoff_jitter_stays_within_its_spread() -> None:
    """Jittered waits vary, stay within initial*(1±jitter), and a seed repeats them."""
    waits = [Backoff(initial=10, jitter=0.5, seed=7)(1) for _ in range(1)]
    backoff = Backoff(initial=10, jitter=0.5, seed=7)
    series = [backoff(1) for _ in range(50)]
    assert all(5.0 <= w <= 15.0 for w in series)
    assert len(set(series)) > 1
    assert series[0] == waits[0]


def test_a_hung_half_open_probe_times_out() -> None:
    """A probe that never reports cannot wedge half-open: after max_wait it re-opens."""
    clock = FakeClock()
    breaker, events = make(
        clock,
        window_size=1,
        minimum_calls=1,
        wait_in_open=2.0,
        permitted_calls_in_half_open=1,
        max_wait_in_half_open=5.0,
    )
    call(breaker, FAIL)
    clock.advance(2.0)
    hung = breaker.try_acquire()
    assert hung is not None
    clock.advance(4.9)
    assert breaker.try_acquire() is None
    assert breaker.state is HALF_OPEN
    clock.advance(0.1)
    assert breaker.state is OPEN
    assert transitions(events)[-1] == ("BreakerOpened", "half_open_timeout")
    clock.advance(2.0)
    probe = breaker.try_acquire()
    assert probe is not None
    breaker.record(hung, FAIL, 9.0)  # the hung call finally ends: it belongs to the past
    assert breaker.state is HALF_OPEN
    breaker.record(probe, OK, 0.01)
    assert breaker.state is CLOSED


def test_outcomes_from_an_earlier_state_are_dropped() -> None:
    """A call admitted while closed that ends after the breaker opened is not counted."""
    clock = FakeClock()
    breaker, _ = make(clock, window_size=2, minimum_calls=2, wait_in_open=1.0)
    slow = breaker.try_acquire()
    assert slow is not None
    call(breaker, FAIL)
    call(breaker, FAIL)
    assert breaker.state is OPEN
    clock.advance(1.0)
    probe = breaker.try_acquire()
    breaker.record(slow, FAIL, 0.1)
    assert breaker.state is HALF_OPEN
    assert breaker.metrics().buffered == 0
    assert probe is not None


def test_ignored_exceptions_do_not_count() -> None:
    """An ignored exception changes no count, and a half-open probe ending so frees its permit."""
    clock = FakeClock()
    breaker, _ = make(
        clock,
        window_size=2,
        minimum_calls=2,
        wait_in_open=1.0,
        permitted_calls_in_half_open=1,
        ignore_exceptions=(KeyError,),
    )
    for _ in range(5):
        permit = breaker.try_acquire()
        assert permit is not None
        assert breaker.on_error(permit, 0.01, KeyError("no such order")) is Outcome.IGNORED
    assert breaker.metrics().buffered == 0
    assert breaker.state is CLOSED
    for _ in range(2):
        permit = breaker.try_acquire()
        assert permit is not None
        assert breaker.on_error(permit, 0.01, PublishNacked("full", exchange="x", routing_key="k"))
    assert breaker.state is OPEN
    clock.advance(1.0)
    probe = breaker.try_acquire()
    assert probe is not None
    assert breaker.try_acquire() is None
    breaker.on_error(probe, 0.01, KeyError("x"))
    second = breaker.try_acquire()
    assert second is not None
    assert breaker.state is HALF_OPEN


def test_record_exceptions_makes_the_others_successes() -> None:
    """With record_exceptions set, only those fail; anything else counts as a success."""
    breaker, _ = make(
        FakeClock(), window_size=2, minimum_calls=2, record_exceptions=(PublishNacked,)
    )
    for _ in range(4):
        permit = breaker.acquire()
        assert breaker.on_error(permit, 0.01, ValueError("bad input")) is Outcome.SUCCESS
    assert breaker.metrics().failed == 0
    nack = PublishNacked("full", exchange="x", routing_key="k")
    permit = breaker.acquire()
    assert breaker.on_error(permit, 0.01, nack) is Outcome.FAILURE


def test_predicates_choose_and_ignoring_wins() -> None:
    """A record_exceptions predicate picks failures, an ignore_exceptions one wins, and
    record_result judges results."""
    breaker, _ = make(
        FakeClock(),
        window_size=10,
        minimum_calls=10,
        record_exceptions=lambda e: isinstance(e, PublishNacked | PublishTimeout),
        ignore_exceptions=lambda e: "transient" in str(e),
        record_result=lambda result: result == "error-page",
    )
    timeout = PublishTimeout("no confirm", exchange="x", routing_key="k")
    transient = PublishTimeout("transient", exchange="x", routing_key="k")
    assert breaker.on_error(breaker.acquire(), 0.1, timeout) is Outcome.FAILURE
    assert breaker.on_error(breaker.acquire(), 0.1, transient) is Outcome.IGNORED
    assert breaker.on_error(breaker.acquire(), 0.1, OSError()) is Outcome.SUCCESS
    assert breaker.on_success(breaker.acquire(), 0.1, "error-page") is Outcome.FAILURE
    assert breaker.on_success(breaker.acquire(), 0.1, "fine") is Outcome.SUCCESS
    m = breaker.metrics()
    assert (m.buffered, m.failed) == (4, 2)


def test_the_singular_predicate_spellings_warn_and_still_count() -> None:
    """record_exception= and ignore_exception= are deprecated: they warn, and add their predicate
    to record_exceptions / ignore_exceptions (either one matching is enough)."""
    with pytest.warns(DeprecationWarning, match="record_exceptions="):
        config = BreakerConfig(
            record_exceptions=(PublishNacked,),
            record_exception=lambda e: isinstance(e, PublishTimeout),
        )
    with pytest.warns(DeprecationWarning, match="ignore_exceptions="):
        ignoring = BreakerConfig(ignore_exception=lambda e: "transient" in str(e))
    classify = config.classifier()
    assert classify(PublishNacked("nack", exchange="x", routing_key="k"))
    assert classify(PublishTimeout("no confirm", exchange="x", routing_key="k"))
    assert not classify(OSError())
    assert ignoring.classifier()(OSError("transient")) is None
    assert ignoring.classifier()(OSError("down")) is True


def test_forced_open_disabled_and_reset() -> None:
    """Forced-open refuses with no timer; disabled permits and counts nothing; reset zeroes."""
    clock = FakeClock()
    breaker, events = make(clock, window_size=1, minimum_calls=1)
    breaker.transition_to_forced_open()
    clock.advance(10_000)
    assert breaker.try_acquire() is None
    assert breaker.retry_after() is None
    with pytest.raises(BreakerOpen, match=r"forced_open.*until an operator closes it"):
        breaker.acquire(routing_key="inventory.reserve_inventory")
    breaker.transition_to_disabled()
    for _ in range(5):
        assert call(breaker, FAIL) is State.DISABLED
    assert breaker.metrics().not_permitted == 2
    breaker.reset()
    m = breaker.metrics()
    assert (m.state, m.buffered, m.not_permitted) == (CLOSED, 0, 0)
    assert [type(e) for e in events if not isinstance(e, CallNotPermitted)] == [
        BreakerForcedOpen,
        BreakerDisabled,
        BreakerReset,
    ]


def test_every_transition_and_refusal_is_a_typed_event() -> None:
    """A full cycle emits Opened, CallNotPermitted, HalfOpened, Opened, HalfOpened, Closed."""
    clock = FakeClock()
    breaker, events = make(
        clock, window_size=1, minimum_calls=1, wait_in_open=1.0, permitted_calls_in_half_open=1
    )
    call(breaker, FAIL)
    assert breaker.try_acquire() is None
    clock.advance(1)
    call(breaker, FAIL)
    clock.advance(1)
    call(breaker, OK)
    assert [type(e) for e in events] == [
        BreakerOpened,
        CallNotPermitted,
        BreakerHalfOpened,
        BreakerOpened,
        BreakerHalfOpened,
        BreakerClosed,
    ]
    opened = events[0]
    assert isinstance(opened, BreakerOpened)
    assert (opened.from_state, opened.to_state, opened.wait) == (CLOSED, OPEN, 1.0)
    assert opened.metrics is not None
    assert opened.metrics.failure_rate == 100.0
    refused = events[1]
    assert isinstance(refused, CallNotPermitted)
    assert refused.state is OPEN


def test_acquire_raises_breaker_open_naming_the_destination() -> None:
    """The refusal names the breaker, the routing key, the state and when to retry."""
    clock = FakeClock()
    breaker, _ = make(clock, window_size=1, minimum_calls=1, wait_in_open=12.5)
    call(breaker, FAIL)
    with pytest.raises(BreakerOpen) as info:
        breaker.acquire(exchange="shop.commands", routing_key="inventory.reserve_inventory")
    error = info.value
    assert (error.breaker, error.destination, error.state) == (
        "inventory",
        "inventory.reserve_inventory",
        "open",
    )
    assert error.retry_after == 12.5
    assert error.reason == "failure_rate"
    assert "'inventory' is open (failure_rate) for 'inventory.reserve_inventory'" in str(error)


def test_a_failing_listener_does_not_break_the_breaker() -> None:
    """A listener that raises is logged; the transition still happens."""
    breaker = CircuitBreaker("x", BreakerConfig(window_size=1, minimum_calls=1), clock=FakeClock())

    def broken(event: BreakerEvent) -> None:
        raise RuntimeError("listener bug")

    unsubscribe = breaker.subscribe(broken)
    assert call(breaker, FAIL) is OPEN
    unsubscribe()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"window_size": 0}, "window_size=0"),
        ({"minimum_calls": 0}, "minimum_calls=0"),
        ({"failure_rate_threshold": 0}, "failure_rate_threshold=0"),
        ({"slow_call_rate_threshold": 101}, "slow_call_rate_threshold=101"),
        ({"slow_call_duration": 0}, "slow_call_duration=0"),
        ({"permitted_calls_in_half_open": 0}, "permitted_calls_in_half_open=0"),
        ({"max_wait_in_half_open": float("inf")}, "must not wait forever"),
        ({"wait_in_open": -1}, "wait_in_open=-1"),
        ({"ignore_exceptions": (ValueError, "x")}, "tuple of exception classes"),
        ({"record_exceptions": KeyError}, "tuple of exception classes, or a predicate"),
        ({"window_type": "count"}, "WindowType.COUNT"),
    ],
)
def test_config_mistakes_say_what_to_change(config: dict[str, Any], message: str) -> None:
    """Each bad setting raises ConfigurationError naming the setting."""
    with pytest.raises(ConfigurationError, match=message):
        BreakerConfig(**config)


async def test_exactly_k_permits_under_a_thousand_concurrent_tasks() -> None:
    """1,000 tasks racing for half-open permits: exactly k get one; the rest are refused."""
    clock = FakeClock()
    breaker, _ = make(
        clock, window_size=1, minimum_calls=1, wait_in_open=1.0, permitted_calls_in_half_open=7
    )
    call(breaker, FAIL)
    clock.advance(1.0)
    start, release, decided = asyncio.Event(), asyncio.Event(), asyncio.Event()
    refused = granted = 0

    async def caller() -> bool:
        nonlocal refused, granted
        await start.wait()  # every task is waiting here before any of them asks
        permit = breaker.try_acquire()
        if permit is None:
            refused += 1
        else:
            granted += 1
        if refused + granted == 1000:
            decided.set()
        if permit is None:
            return False
        await release.wait()
        breaker.record(permit, OK, 0.01)
        return True

    tasks = [asyncio.create_task(caller()) for _ in range(1000)]
    start.set()
    await decided.wait()
    assert (granted, refused) == (7, 993)
    assert breaker.state is HALF_OPEN
    release.set()
    results = await asyncio.gather(*tasks)
    assert sum(results) == 7
    assert breaker.state is CLOSED


@given(st.lists(st.tuples(st.booleans(), st.booleans()), max_size=200), st.integers(1, 20))
def test_count_window_totals_match_a_recount(outcomes: list[tuple[bool, bool]], size: int) -> None:
    """After any sequence, the running totals equal a recount of the last ``size`` outcomes."""
    window = CountWindow(size)
    for failed, slow in outcomes:
        window.add((FAILED if failed else 0) | (SLOW if slow else 0), 0.0)
    last = outcomes[-size:]
    assert window.calls == len(last)
    assert window.failed == sum(f for f, _ in last)
    assert window.slow == sum(s for _, s in last)
    assert window.slow_failed == sum(f and s for f, s in last)
