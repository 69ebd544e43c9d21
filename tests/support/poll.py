"""Polling for a condition that something else brings about (a worker, a broker, a database).

``until`` raises ``TimeoutError``, so it serves the fault-injection CLI as well as tests; the
tests' ``eventually`` helpers turn the timeout into a test failure.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any

__all__ = ["until"]


async def until(
    check: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.1
) -> Any:
    """Poll ``check`` (sync or async) every ``interval`` seconds until it returns something
    truthy, and return that.

    Raises:
        TimeoutError: not within ``timeout`` seconds; the message names ``what``.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(interval)  # poll interval, not a wait for the condition itself
