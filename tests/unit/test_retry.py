"""The retry policy decides from the attempt count alone."""

from __future__ import annotations

import pytest

from framework.retry import DeadLetter, Delay, Redeliver, RetryPolicy


def test_sequence() -> None:
    """Immediate retries first, then each delay, then the DLQ."""
    policy = RetryPolicy(immediate=2, delays=(1.0, 5.0))
    steps = [policy.after_failure(a) for a in range(6)]
    assert steps == [Redeliver(), Redeliver(), Delay(1000), Delay(5000), DeadLetter(), DeadLetter()]
    assert policy.max_attempts == 5


def test_none() -> None:
    """RetryPolicy.none() dead-letters on the first failure."""
    assert RetryPolicy.none().after_failure(0) == DeadLetter()


def test_exponential_capped() -> None:
    """Exponential delays double and are capped."""
    policy = RetryPolicy.exponential(first=1, factor=2, count=5, maximum=10)
    assert policy.delays == (1, 2, 4, 8, 10)
    assert policy.delay_ms() == (1000, 2000, 4000, 8000, 10000)


def test_invalid() -> None:
    """Negative counts and non-positive delays are refused."""
    with pytest.raises(ValueError, match="immediate"):
        RetryPolicy(immediate=-1)
    with pytest.raises(ValueError, match="delays"):
        RetryPolicy(delays=(0.0,))
