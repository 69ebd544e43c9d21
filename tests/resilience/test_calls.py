"""Breakers around external calls, against a fake clock: counting, timeouts, probes, fallbacks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from framework import App, AppConfig
from framework.errors import BreakerOpen, ConfigurationError
from framework.resilience import (
    BreakerConfig,
    BreakerEvent,
    BreakerOpened,
    Breakers,
    CachedResult,
    CallNotPermitted,
    DefaultResult,
    Downstream,
    ExternalCall,
    State,
    TransitionReason,
)
from framework.transport.memory import MemoryBroker, MemoryTransport
from tests.support.clock import FakeClock

GATEWAY = "payment-gateway"


class GatewayDown(Exception):
    """What the fake gateway raises when it fails."""


def quick(**overrides: Any) -> BreakerConfig:
    """A breaker that judges after 4 calls and stays open 10 s."""
    settings: dict[str, Any] = {"window_size": 4, "minimum_calls": 4, "wait_in_open": 10.0}
    settings.update(overrides)
    return BreakerConfig(**settings)


def make(
    clock: FakeClock, timeout: float | None = None, **config: Any
) -> tuple[Breakers, list[BreakerEvent]]:
    """Breakers with one external call (and one downstream beside it), and its events."""
    breakers = Breakers(
        [Downstream("inventory"), ExternalCall(GATEWAY, config=quick(**config), timeout=timeout)],
        clock=clock,
        status=False,
    )
    events: list[BreakerEvent] = []
    breakers[GATEWAY].subscribe(events.append)
    return breakers, events


def waited_out(**config: Any) -> tuple[Breakers, list[BreakerEvent]]:
    """Breakers whose call breaker opened and waited its 10 s: the next call is a probe."""
    clock = FakeClock()
    breakers, events = make(clock, **config)
    breakers[GATEWAY].transition_to_open()
    clock.advance(10)
    return breakers, events


async def succeed(breakers: Breakers, clock: FakeClock, seconds: float = 0.01) -> None:
    async with breakers.call(GATEWAY):
        clock.advance(seconds)


async def fail(breakers: Breakers, exc: Exception | None = None) -> None:
    with pytest.raises(type(exc) if exc is not None else GatewayDown):
        async with breakers.call(GATEWAY):
            raise exc if exc is not None else GatewayDown("503")


async def test_failures_open_the_breaker_and_a_refused_block_never_runs() -> None:
    """Two failures in four calls open it (50%); then entering raises BreakerOpen at once."""
    clock = FakeClock()
    breakers, events = make(clock)
    for _ in range(2):
        await succeed(breakers, clock)
        await fail(breakers)
    assert breakers[GATEWAY].state is State.OPEN
    ran = False
    with pytest.raises(BreakerOpen, match=r"'payment-gateway' is open \(failure_rate\)") as refused:
        async with breakers.call(GATEWAY):
            ran = True
    assert not ran
    assert (refused.value.breaker, refused.value.retry_after) == (GATEWAY, 10.0)
    assert [type(e) for e in events] == [BreakerOpened, CallNotPermitted]
    assert breakers["inventory"].state is State.CLOSED  # the downstream beside it is untouched


async def test_slow_calls_open_the_breaker_at_the_slow_call_rate() -> None:
    """Calls at or above slow_call_duration count as slow; at the rate the breaker opens."""
    clock = FakeClock()
    breakers, events = make(clock, slow_call_duration=2.0, slow_call_rate_threshold=50)
    await succeed(breakers, clock, 0.5)
    await succeed(breakers, clock, 2.0)
    await succeed(breakers, clock, 0.5)
    assert breakers[GATEWAY].state is State.CLOSED
    await succeed(breakers, clock, 3.0)
    assert breakers[GATEWAY].state is State.OPEN
    opened = events[0]
    assert isinstance(opened, BreakerOpened)
    assert opened.reason is TransitionReason.SLOW_CALL_RATE
    assert opened.metrics is not None
    assert (opened.metrics.slow, opened.metrics.failed) == (2, 0)


async def test_a_timeout_cancels_the_block_and_counts_as_a_failure() -> None:
    """The block is cancelled at the timeout and raises TimeoutError; it is counted failed."""
    clock = FakeClock()
    breakers, _ = make(clock, timeout=0.01, minimum_calls=1, window_size=1)
    cancelled = asyncio.Event()

    async def hang() -> None:
        async with breakers.call(GATEWAY):
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise

    with pytest.raises(TimeoutError, match=r"took more than 0\.01s and was cancelled"):
        await hang()
    assert cancelled.is_set()
    assert breakers[GATEWAY].state is State.OPEN
    assert breakers[GATEWAY].metrics().failed == 1


async def test_a_per_call_timeout_and_an_ignored_timeout() -> None:
    """``call(timeout=)`` overrides the declaration; a config that ignores TimeoutError does."""
    clock = FakeClock()
    breakers, _ = make(clock, minimum_calls=1, window_size=1, ignore_exceptions=(TimeoutError,))
    with pytest.raises(TimeoutError):
        async with breakers.call(GATEWAY, timeout=0.01):
            await asyncio.Event().wait()
    assert breakers[GATEWAY].state is State.CLOSED
    assert breakers[GATEWAY].metrics().buffered == 0


async def test_ignored_exceptions_count_neither_way_and_recorded_ones_narrow_failures() -> None:
    """ignore_exceptions are not counted; with record_exceptions, other errors are successes."""
    clock = FakeClock()
    breakers, _ = make(
        clock, ignore_exceptions=(KeyError,), record_exceptions=(GatewayDown, TimeoutError)
    )
    for _ in range(4):
        await fail(breakers, KeyError("card"))
    assert breakers[GATEWAY].metrics().buffered == 0
    for _ in range(4):
        await fail(breakers, ValueError("bad amount"))
    m = breakers[GATEWAY].metrics()
    assert (m.state, m.buffered, m.failed) == (State.CLOSED, 4, 0)
    await fail(breakers)
    await fail(breakers)
    assert breakers[GATEWAY].state is State.OPEN


async def test_half_open_lets_the_permitted_probes_through_and_closes() -> None:
    """After the wait, exactly the permitted probes run; when they succeed the breaker closes."""
    breakers, _ = waited_out(permitted_calls_in_half_open=2)
    first, second = breakers.call(GATEWAY), breakers.call(GATEWAY)
    await first.__aenter__()
    await second.__aenter__()
    assert breakers[GATEWAY].state is State.HALF_OPEN
    with pytest.raises(BreakerOpen, match="half_open"):
        async with breakers.call(GATEWAY):
            pass
    await first.__aexit__(None, None, None)
    assert breakers[GATEWAY].state is State.HALF_OPEN
    await second.__aexit__(None, None, None)
    assert breakers[GATEWAY].state is State.CLOSED


async def test_failed_probes_reopen_and_a_cancelled_probe_gives_its_permit_back() -> None:
    """A probe cancelled from outside is not counted (another may go); failed probes re-open."""
    breakers, events = waited_out(permitted_calls_in_half_open=1)
    started = asyncio.Event()

    async def hang() -> None:
        async with breakers.call(GATEWAY):
            started.set()
            await asyncio.Event().wait()

    probe = asyncio.create_task(hang())
    await started.wait()
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    assert breakers[GATEWAY].state is State.HALF_OPEN
    await fail(breakers)  # the permit came back: this probe runs, and fails
    assert breakers[GATEWAY].state is State.OPEN
    assert events[-1].reason is TransitionReason.PROBES_FAILED  # type: ignore[attr-defined]


async def test_a_guarded_function_without_fallback_raises_breaker_open() -> None:
    """Refused: BreakerOpen, the function not called; failures pass through unchanged."""
    clock = FakeClock()
    breakers, _ = make(clock)
    calls: list[int] = []

    @breakers.guard(GATEWAY)
    async def charge(amount: int) -> str:
        """Charge the card."""
        calls.append(amount)
        raise GatewayDown("503")

    for amount in range(4):
        with pytest.raises(GatewayDown):
            await charge(amount)
    with pytest.raises(BreakerOpen):
        await charge(99)
    assert calls == [0, 1, 2, 3]
    assert (charge.__name__, charge.__doc__) == ("charge", "Charge the card.")


async def test_a_cached_result_answers_for_the_same_arguments_only() -> None:
    """While refused the last good result for the same arguments answers, up to max_age."""
    clock = FakeClock()
    breakers, _ = make(clock)
    rates = {"EUR": 1.1, "GBP": 1.3}

    @breakers.guard(GATEWAY, fallback=CachedResult(max_age=60))
    async def rate(currency: str, *, day: str = "today") -> float:
        return rates[currency]

    assert await rate("EUR") == 1.1
    assert await rate("GBP", day="mon") == 1.3
    rates["EUR"] = 2.0
    breakers[GATEWAY].transition_to_forced_open()
    assert await rate("EUR") == 1.1  # not 2.0: the function did not run
    assert await rate("GBP", day="mon") == 1.3
    with pytest.raises(BreakerOpen):
        await rate("GBP")  # other arguments: nothing remembered
    clock.advance(61)
    with pytest.raises(BreakerOpen):
        await rate("EUR")  # too old


async def test_unhashable_arguments_are_cached_by_value() -> None:
    """Lists and dicts key the cache by their JSON form."""
    clock = FakeClock()
    breakers, _ = make(clock)

    @breakers.guard(GATEWAY, fallback=CachedResult(max_age=60))
    async def total(items: list[int], meta: dict[str, str]) -> int:
        return sum(items)

    assert await total([1, 2], {"a": "b"}) == 3
    breakers[GATEWAY].transition_to_forced_open()
    assert await total([1, 2], {"a": "b"}) == 3


async def test_fallbacks_in_order_and_on_failure() -> None:
    """The cache first, then the default; by default they also answer a counted failure."""
    clock = FakeClock()
    breakers, _ = make(clock, ignore_exceptions=(KeyError,))
    down = False

    @breakers.guard(
        GATEWAY,
        fallback=(CachedResult(max_age=60), DefaultResult(compute=lambda sku: f"default {sku}")),
    )
    async def price(sku: str) -> str:
        if down:
            raise GatewayDown("503")
        if sku == "missing":
            raise KeyError(sku)
        return f"price {sku}"

    assert await price("a") == "price a"
    down = True
    assert await price("a") == "price a"  # failed, counted: the cache answers
    assert await price("b") == "default b"
    down = False
    with pytest.raises(KeyError):
        await price("missing")  # ignored by the breaker: no fallback
    breakers[GATEWAY].transition_to_forced_open()
    assert await price("c") == "default c"


async def test_without_fallback_on_failure_only_refusals_fall_back() -> None:
    """fallback_on_failure=False: failures raise; a refusal gets the default."""
    clock = FakeClock()
    breakers, _ = make(clock)

    @breakers.guard(GATEWAY, fallback=DefaultResult(0), fallback_on_failure=False)
    async def balance(account: str) -> int:
        raise GatewayDown("503")

    with pytest.raises(GatewayDown):
        await balance("acc")
    breakers[GATEWAY].transition_to_forced_open()
    assert await balance("acc") == 0


async def test_a_guarded_timeout_and_record_result() -> None:
    """The decorator's timeout cancels the call; record_result fails a returned value, which is
    returned but not cached."""
    clock = FakeClock()
    breakers, _ = make(clock, record_result=lambda result: result == "error")

    @breakers.guard(GATEWAY, fallback=CachedResult(max_age=60), timeout=0.01)
    async def status(ref: str) -> str:
        if ref == "hang":
            await asyncio.Event().wait()
        return "error" if ref == "bad" else "ok"

    with pytest.raises(TimeoutError):
        await status("hang")
    assert await status("bad") == "error"
    assert breakers[GATEWAY].metrics().failed == 2
    breakers[GATEWAY].transition_to_forced_open()
    with pytest.raises(BreakerOpen):
        await status("bad")


def test_guarding_mistakes_say_what_to_change() -> None:
    """Unknown names, downstream names, sync functions, bad fallbacks and timeouts are refused
    when declared or decorated."""
    breakers, _ = make(FakeClock())
    with pytest.raises(ConfigurationError, match=r"'nope' is not declared: declare ExternalCall"):
        breakers.guard("nope")
    with pytest.raises(ConfigurationError, match=r"'inventory' is a downstream, for publishes"):
        breakers.call("inventory")
    with pytest.raises(ConfigurationError, match="guards async functions only"):
        breakers.guard(GATEWAY)(lambda: 1)
    with pytest.raises(ConfigurationError, match="a fallback is CachedResult"):

        @breakers.guard(GATEWAY, fallback=0.0)  # type: ignore[arg-type]
        async def f() -> None: ...

    with pytest.raises(ConfigurationError, match="timeout=0"):
        ExternalCall(GATEWAY, timeout=0)
    with pytest.raises(ConfigurationError, match="use a name of letters"):
        ExternalCall("has space")
    with pytest.raises(ConfigurationError, match=r"CachedResult\.max_age"):
        CachedResult(max_age=0)
    with pytest.raises(ConfigurationError, match="two breakers are named 'inventory'"):
        Breakers([Downstream("inventory"), ExternalCall("inventory")])
    with pytest.raises(ConfigurationError, match="Breakers takes Downstream"):
        Breakers(["inventory"])  # type: ignore[list-item]


@pytest.fixture
async def memory_app() -> AsyncIterator[tuple[App, Breakers, MemoryBroker, FakeClock]]:
    """A started memory app with one downstream and one external call."""
    clock = FakeClock()
    broker = MemoryBroker()
    breakers, _ = make(clock)
    transport = MemoryTransport(broker)
    app = App([], transport=transport, config=AppConfig(prefix="t"), breakers=breakers)
    await app.start()
    yield app, breakers, broker, clock
    await app.stop(grace=0)


async def test_call_breakers_are_listed_and_measured_with_the_others(
    memory_app: tuple[App, Breakers, MemoryBroker, FakeClock],
) -> None:
    """Iteration, metrics, declarations and publish routing see the call breaker as it is."""
    _, breakers, _, _ = memory_app
    assert [b.name for b in breakers] == ["inventory", GATEWAY]
    assert [m.name for m in breakers.metrics()] == ["inventory", GATEWAY]
    assert isinstance(breakers.declaration(GATEWAY), ExternalCall)
    with pytest.raises(KeyError):
        breakers.downstream(GATEWAY)
    assert breakers.breaker_for("payment-gateway.charge") is None  # never gates a publish


async def test_a_blocked_broker_leaves_call_breakers_alone(
    memory_app: tuple[App, Breakers, MemoryBroker, FakeClock],
) -> None:
    """A resource alarm opens the downstreams' breakers, not the external calls'."""
    _, breakers, broker, clock = memory_app
    broker.block("memory alarm")
    assert breakers["inventory"].state is State.OPEN
    assert breakers[GATEWAY].state is State.CLOSED
    await succeed(breakers, clock)
    broker.unblock()


async def test_an_automatic_transition_is_armed_for_call_breakers(
    memory_app: tuple[App, Breakers, MemoryBroker, FakeClock],
) -> None:
    """The app's timer and tick() move an open call breaker to half-open, as a downstream's."""
    _, _, _, clock = memory_app
    breakers = Breakers(
        [ExternalCall(GATEWAY, config=quick(automatic_transition=True))],
        clock=clock,
        status=False,
    )
    breakers[GATEWAY].transition_to_open()
    clock.advance(10)
    breakers.tick()
    assert breakers[GATEWAY].state is State.HALF_OPEN
    assert await breakers.wait_permitted(GATEWAY, timeout=1)
