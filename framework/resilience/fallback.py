"""Query fallbacks at work: remembering good replies and answering in their place.

A fallback answers with a reply *delivery*, exactly what the transport would have returned, so
the bus decodes it strictly like any other reply. The delivery carries in-process headers
(``envelope.FALLBACK``...) that ``request(..., with_meta=True)`` turns into an ``Answer``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Generic, TypeVar

import msgspec

from framework import envelope
from framework.bus import Outbound
from framework.resilience.downstream import CachedReply, DefaultReply, Fallback
from framework.transport.base import Delivery

__all__ = ["FallbackDelivery", "RecentValues", "ReplyCache", "answer_from"]

K = TypeVar("K")
V = TypeVar("V")

_encoder = msgspec.json.Encoder()


class FallbackDelivery(Delivery):
    """A reply a fallback made up; it was never on the wire, so settling it does nothing."""

    __slots__ = ()

    async def ack(self) -> None:
        return None

    async def nack(self, *, requeue: bool) -> None:
        return None


class _Remembered:
    __slots__ = ("body", "content_type", "headers", "type")

    def __init__(self, reply: Delivery) -> None:
        self.body = reply.body
        self.type = reply.type
        self.content_type = reply.content_type
        self.headers = dict(reply.headers)


class RecentValues(Generic[K, V]):
    """The last value stored per key, with its age; the least recently stored go first.

    Args:
        max_age: seconds a value may be recalled; older ones are not.
        max_entries: keys remembered.
    """

    __slots__ = ("_entries", "max_age", "max_entries")

    def __init__(self, *, max_age: float, max_entries: int) -> None:
        self.max_age = max_age
        self.max_entries = max_entries
        self._entries: OrderedDict[K, tuple[V, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def remember(self, key: K, value: V, now: float) -> None:
        """Keep ``value`` for ``key``, stored at clock time ``now``."""
        self._entries[key] = (value, now)
        self._entries.move_to_end(key)
        if len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def recall(self, key: K, now: float) -> tuple[V, float] | None:
        """The value kept for ``key`` and its age, unless older than ``max_age``."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        value, at = entry
        age = now - at
        if age > self.max_age:
            return None
        return value, age


class ReplyCache:
    """The last good reply per query (routing key + body), least recently stored dropped first."""

    def __init__(self, spec: CachedReply) -> None:
        self.spec = spec
        self._recent: RecentValues[tuple[str, bytes], _Remembered] = RecentValues(
            max_age=spec.max_age, max_entries=spec.max_entries
        )

    def __len__(self) -> int:
        return len(self._recent)

    def remember(self, out: Outbound, reply: Delivery, now: float) -> None:
        """Keep ``reply`` as the answer to ``out``'s query."""
        self._recent.remember((out.routing_key, out.wire.body), _Remembered(reply), now)

    def recall(self, out: Outbound, now: float) -> tuple[_Remembered, float] | None:
        """The remembered reply to ``out``'s query and its age, unless older than ``max_age``."""
        return self._recent.recall((out.routing_key, out.wire.body), now)


def answer_from(
    fallbacks: tuple[Fallback, ...],
    caches: Mapping[CachedReply, ReplyCache],
    out: Outbound,
    *,
    breaker: str,
    cause: str,
    now: float,
) -> FallbackDelivery | None:
    """The first fallback's answer to ``out``'s query, or None when none has one."""
    for fallback in fallbacks:
        marks: dict[str, Any] = {envelope.FALLBACK_BREAKER: breaker, envelope.FALLBACK_CAUSE: cause}
        if isinstance(fallback, CachedReply):
            found = caches[fallback].recall(out, now)
            if found is None:
                continue
            entry, age = found
            marks[envelope.FALLBACK] = "cache"
            marks[envelope.FALLBACK_AGE] = age
            return _delivery(out, entry.body, entry.type, entry.content_type, entry.headers, marks)
        if isinstance(fallback, DefaultReply):
            reply = fallback.reply_for(out.message)
            marks[envelope.FALLBACK] = "default"
            headers = {envelope.VERSION: type(reply).__wire_version__}
            body = _encoder.encode(reply)
            return _delivery(
                out, body, type(reply).__wire_name__, envelope.CONTENT_TYPE_JSON, headers, marks
            )
    return None


def _delivery(
    out: Outbound,
    body: bytes,
    type_: str | None,
    content_type: str | None,
    headers: Mapping[str, Any],
    marks: dict[str, Any],
) -> FallbackDelivery:
    return FallbackDelivery(
        body=body,
        message_id=envelope.new_message_id(),
        type=type_,
        correlation_id=out.wire.correlation_id,
        content_type=content_type,
        headers={**headers, **marks},
        reply_to=None,
        redelivered=False,
        exchange="",
        routing_key="",
        timestamp=None,
    )
