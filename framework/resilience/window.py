"""Sliding windows of call outcomes with running totals: recording never rescans the window.

An outcome is a small code: bit 0 set for a failed call, bit 1 set for a slow one. Both windows
keep the totals a breaker needs (calls, failed, slow, slow and failed) up to date on each
``add``, so rates are read in constant time.
"""

from __future__ import annotations

import math

__all__ = ["FAILED", "SLOW", "CountWindow", "TimeWindow", "Window"]

FAILED = 1
SLOW = 2
_NEVER = -(1 << 62)  # a second no clock reaches: marks empty buckets


class CountWindow:
    """The outcomes of the last ``size`` calls, in a preallocated ring (no allocation per call)."""

    __slots__ = ("_head", "_ring", "_size", "calls", "failed", "slow", "slow_failed")

    def __init__(self, size: int) -> None:
        self._ring = bytearray(size)
        self._size = size
        self._head = 0
        self.calls = 0
        self.failed = 0
        self.slow = 0
        self.slow_failed = 0

    def add(self, code: int, now: float) -> None:
        """Record one outcome; the oldest falls out once the window is full. O(1)."""
        head = self._head
        if self.calls == self._size:
            old = self._ring[head]
            if old:
                self._forget(old)
        else:
            self.calls += 1
        self._ring[head] = code
        if code:
            if code & FAILED:
                self.failed += 1
            if code & SLOW:
                self.slow += 1
                if code & FAILED:
                    self.slow_failed += 1
        head += 1
        self._head = 0 if head == self._size else head

    def _forget(self, code: int) -> None:
        if code & FAILED:
            self.failed -= 1
        if code & SLOW:
            self.slow -= 1
            if code & FAILED:
                self.slow_failed -= 1

    def advance(self, now: float) -> None:
        """A count window does not age."""


class TimeWindow:
    """The outcomes of the last ``seconds`` whole seconds, one bucket per second.

    ``add`` is O(1) plus the eviction of the seconds that passed since the last call, which is
    bounded by the window size and amortised O(1): each bucket is evicted at most once per
    second of clock time. After an idle period longer than the window everything is dropped at
    once, without visiting the buckets.
    """

    __slots__ = (
        "_calls",
        "_failed",
        "_last",
        "_size",
        "_slow",
        "_slow_failed",
        "_stamp",
        "calls",
        "failed",
        "slow",
        "slow_failed",
    )

    def __init__(self, seconds: int) -> None:
        self._size = seconds
        self._stamp = [_NEVER] * seconds  # the second each bucket holds; stale ones are empty
        self._calls = [0] * seconds
        self._failed = [0] * seconds
        self._slow = [0] * seconds
        self._slow_failed = [0] * seconds
        self._last = _NEVER  # the latest second the totals account for
        self.calls = 0
        self.failed = 0
        self.slow = 0
        self.slow_failed = 0

    def advance(self, now: float) -> None:
        """Drop the buckets of seconds that fell out of the window by ``now``."""
        second = math.floor(now)
        last = self._last
        if second <= last:
            return
        size = self._size
        if second - last >= size:
            # Everything counted is older than the window; bucket stamps are all stale now.
            self.calls = self.failed = self.slow = self.slow_failed = 0
        else:
            for gone in range(last - size + 1, second - size + 1):
                index = gone % size
                if self._stamp[index] == gone:
                    self.calls -= self._calls[index]
                    self.failed -= self._failed[index]
                    self.slow -= self._slow[index]
                    self.slow_failed -= self._slow_failed[index]
                    self._stamp[index] = _NEVER
        self._last = second

    def add(self, code: int, now: float) -> None:
        """Record one outcome at time ``now`` (seconds of the breaker's clock)."""
        self.advance(now)
        second = self._last
        index = second % self._size
        if self._stamp[index] != second:
            self._stamp[index] = second
            self._calls[index] = self._failed[index] = 0
            self._slow[index] = self._slow_failed[index] = 0
        self._calls[index] += 1
        self.calls += 1
        if code & FAILED:
            self._failed[index] += 1
            self.failed += 1
        if code & SLOW:
            self._slow[index] += 1
            self.slow += 1
            if code & FAILED:
                self._slow_failed[index] += 1
                self.slow_failed += 1


Window = CountWindow | TimeWindow
