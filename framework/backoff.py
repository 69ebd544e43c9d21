"""Backoff: waits that grow by a factor up to a cap, optionally spread by random jitter.

The one formula behind every growing wait in leveret: the retry policy's delays
(``RetryPolicy.exponential``), a saga's resends (``RetryBackoff``), a circuit breaker's wait in
open state (``BreakerConfig.wait_in_open``) and the supervisor's restarts (``RestartBackoff``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from framework.errors import ConfigurationError

__all__ = ["Backoff"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Waits that grow with each attempt, up to a cap, with random jitter.

    ``delay(n) = min(maximum, initial * multiplier ** (n - 1))``, then multiplied by a random
    factor in ``[1 - jitter, 1 + jitter]``; ``n`` is 1 for the first wait. Calling the object is
    ``delay`` (a breaker's ``wait_in_open`` is a function of the number of consecutive openings).

    Args:
        initial: seconds of the first wait.
        multiplier: growth per attempt (1 for a fixed wait).
        maximum: cap before jitter.
        jitter: relative spread, 0 (none) to 1.
        seed: seed of the private random generator (tests); None for a random one.

    Raises:
        ConfigurationError: a negative ``initial``, a ``multiplier`` below 1, a ``maximum``
            below ``initial``, or a ``jitter`` outside 0 to 1.
    """

    initial: float = 5.0
    multiplier: float = 2.0
    maximum: float = 300.0
    jitter: float = 0.2
    seed: int | None = None
    _rng: random.Random = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not (self.initial >= 0 and self.maximum >= self.initial and self.multiplier >= 1):
            raise ConfigurationError(
                f"Backoff(initial={self.initial}, multiplier={self.multiplier}, "
                f"maximum={self.maximum}): use initial >= 0, multiplier >= 1, maximum >= initial"
            )
        if not 0 <= self.jitter <= 1:
            raise ConfigurationError(f"Backoff.jitter={self.jitter}: use a value from 0 to 1")
        object.__setattr__(self, "_rng", random.Random(self.seed))

    @property
    def longest(self) -> float:
        """The longest wait it can return: ``maximum`` stretched by the jitter."""
        return self.maximum * (1 + self.jitter)

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt number ``attempt`` (1: the first wait; below 1 too)."""
        try:
            grown = self.initial * self.multiplier ** max(0, attempt - 1)
        except OverflowError:  # a crash loop or an outage of a thousand attempts and more
            grown = self.maximum if self.initial else 0.0
        base = min(self.maximum, grown)
        if not self.jitter:
            return base
        return base * self._rng.uniform(1 - self.jitter, 1 + self.jitter)

    __call__ = delay

    def delays(self, count: int) -> tuple[float, ...]:
        """The first ``count`` waits."""
        return tuple(self.delay(n) for n in range(1, count + 1))
