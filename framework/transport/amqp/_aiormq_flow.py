"""Hearing connection.blocked / connection.unblocked: a patch of aiormq's private handlers.

Tested against aiormq 7.2.x (7.2.4) under aio-pika 10.2.x: see ``_compat.TESTED``. aiormq 7
handles both frames in name-mangled private methods of ``aiormq.Connection`` and offers no
callback, so the two methods of one live connection (never the class) are wrapped to tell us
after aiormq has done its own work. Should a later aiormq rename them, nothing breaks: blocks go
unheard (breakers still count the publish timeouts a block causes), ``hear_flow`` reports the
missing name and the connection logs a warning.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["FLOW_HANDLERS", "hear_flow"]

# The private methods of aiormq.Connection that handle the two frames, and what each means.
FLOW_HANDLERS = (
    ("_Connection__handle_connection_blocked", True),
    ("_Connection__handle_connection_unblocked", False),
)


def hear_flow(connection: object, on_flow: Callable[[bool, str | None], None]) -> str | None:
    """Call ``on_flow(blocked, reason)`` after aiormq handles either frame on ``connection``.

    Returns:
        None once both handlers are wrapped; else the name of the one aiormq lacks (and
        ``connection`` is left as it was).
    """
    originals = []
    for name, blocked in FLOW_HANDLERS:
        original = getattr(connection, name, None)
        if original is None:
            return name
        originals.append((name, original, blocked))
    for name, original, blocked in originals:
        setattr(connection, name, _wrapped(original, blocked, on_flow))
    return None


def _wrapped(
    original: Any, blocked: bool, on_flow: Callable[[bool, str | None], None]
) -> Callable[[Any], Any]:
    async def handle(frame: Any) -> None:
        await original(frame)
        on_flow(blocked, getattr(frame, "reason", None) if blocked else None)

    return handle
