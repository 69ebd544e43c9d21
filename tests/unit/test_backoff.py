"""One backoff formula serves retries, saga resends, breaker waits and worker restarts."""

from __future__ import annotations

import pytest

from framework.backoff import Backoff
from framework.errors import ConfigurationError
from framework.resilience import Backoff as BreakerBackoff
from framework.retry import RetryPolicy
from framework.saga import RetryBackoff
from framework.supervisor import RestartBackoff


def test_delays_grow_by_the_multiplier_to_the_cap() -> None:
    """Without jitter the waits are initial, initial*multiplier, ... capped at maximum."""
    backoff = Backoff(initial=1.0, multiplier=3.0, maximum=20.0, jitter=0)
    assert [backoff.delay(n) for n in range(0, 6)] == [1.0, 1.0, 3.0, 9.0, 20.0, 20.0]
    assert backoff.delays(4) == (1.0, 3.0, 9.0, 20.0)
    assert backoff(2) == backoff.delay(2)


def test_jitter_spreads_each_wait_and_a_seed_repeats_it() -> None:
    """Jittered waits stay within base*(1±jitter); the same seed gives the same series."""
    series = [Backoff(initial=10, jitter=0.5, seed=3).delay(1) for _ in range(3)]
    assert len(set(series)) == 1
    backoff = Backoff(initial=10, jitter=0.5, seed=3)
    waits = [backoff.delay(1) for _ in range(50)]
    assert all(5.0 <= w <= 15.0 for w in waits)
    assert waits[0] == series[0]
    assert backoff.longest == 300.0 * 1.5


def test_a_thousand_attempts_wait_the_maximum() -> None:
    """An attempt count past what a float power can hold waits the cap, it does not overflow."""
    assert Backoff(initial=0.5, maximum=10.0, jitter=0).delay(5000) == 10.0
    assert Backoff(initial=0.0, maximum=10.0, jitter=0).delay(5000) == 0.0


@pytest.mark.parametrize(
    "settings",
    [
        {"initial": -1.0},
        {"multiplier": 0.5},
        {"initial": 5.0, "maximum": 1.0},
        {"jitter": 1.5},
    ],
)
def test_impossible_settings_are_refused(settings: dict[str, float]) -> None:
    """A negative start, a shrinking factor, a cap below the start or a wild jitter is refused."""
    with pytest.raises(ConfigurationError, match="Backoff"):
        Backoff(**settings)


def test_every_growing_wait_is_this_backoff() -> None:
    """The breaker's Backoff is this one, and the retry, saga and restart schedules follow it."""
    assert BreakerBackoff is Backoff
    growth = Backoff(initial=1.0, multiplier=2.0, maximum=10.0, jitter=0)
    retry = RetryPolicy.exponential(first=1, factor=2, count=5, maximum=10)
    assert retry.delays == growth.delays(5)
    saga = RetryBackoff(first=1.0, factor=2.0, maximum=10.0)
    assert [saga.delay(n) for n in range(1, 6)] == list(growth.delays(5))
    restart = RestartBackoff(initial=1.0, maximum=10.0)
    assert [restart.delay(n) for n in range(1, 6)] == list(growth.delays(5))
