"""Retry policy: what happens after a handler fails, decided from the attempt count in headers."""

from __future__ import annotations

from dataclasses import dataclass

from framework.backoff import Backoff

__all__ = ["DeadLetter", "Delay", "Redeliver", "RetryPolicy", "RetryStep"]


@dataclass(frozen=True, slots=True)
class Redeliver:
    """Publish the message straight back to its queue."""


@dataclass(frozen=True, slots=True)
class Delay:
    """Park the message in a TTL queue for ``ms`` milliseconds, then back to its queue."""

    ms: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Give up: move the message to its queue's DLQ."""


RetryStep = Redeliver | Delay | DeadLetter


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounded immediate retries, then delayed retries, then the DLQ.

    Args:
        immediate: redeliveries right away after the first failures.
        delays: seconds to wait before each further attempt; each distinct delay becomes one TTL
            queue at start-up (no broker plugin needed).
    """

    immediate: int = 2
    delays: tuple[float, ...] = (1.0, 5.0, 30.0)

    def __post_init__(self) -> None:
        if self.immediate < 0:
            raise ValueError(f"RetryPolicy.immediate must be >= 0, got {self.immediate}")
        if any(d <= 0 for d in self.delays):
            raise ValueError(f"RetryPolicy.delays must all be > 0 seconds, got {self.delays}")

    @classmethod
    def exponential(
        cls,
        *,
        immediate: int = 2,
        first: float = 1.0,
        factor: float = 2.0,
        count: int = 4,
        maximum: float = 300.0,
    ) -> RetryPolicy:
        """Delays ``first, first*factor, ...`` (``count`` of them), each capped at ``maximum``."""
        growth = Backoff(initial=first, multiplier=factor, maximum=maximum, jitter=0.0)
        return cls(immediate=immediate, delays=growth.delays(count))

    @classmethod
    def none(cls) -> RetryPolicy:
        """No retries: the first failure dead-letters."""
        return cls(immediate=0, delays=())

    @property
    def max_attempts(self) -> int:
        """Total handler runs before the DLQ."""
        return 1 + self.immediate + len(self.delays)

    def delay_ms(self) -> tuple[int, ...]:
        """The distinct delays in milliseconds (the TTL queues to declare)."""
        return tuple(sorted({round(d * 1000) for d in self.delays}))

    def after_failure(self, attempt: int) -> RetryStep:
        """What to do after run number ``attempt + 1`` failed (``attempt`` from the header)."""
        failures = attempt + 1
        if failures <= self.immediate:
            return Redeliver()
        index = failures - self.immediate - 1
        if index < len(self.delays):
            return Delay(round(self.delays[index] * 1000))
        return DeadLetter()
