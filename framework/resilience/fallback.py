"""Query fallbacks at work: remembering good replies and answering in their place.

A fallback answers with a reply *delivery*, exactly what the transport would have returned, so
the bus decodes it strictly like any other reply. The delivery carries in-process headers
(``envelope.FALLBACK``...) that ``request(..., with_meta=True)`` turns into an ``Answer``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import msgspec

from framework import envelope
from framework.bus import Outbound
from framework.resilience.downstream import CachedReply, DefaultReply, Fallback
from framework.transport.base import Delivery

__all__ = ["FallbackDelivery", "ReplyCache", "answer_from"]

_encoder = msgspec.json.Encoder()


class FallbackDelivery(Delivery):
    """A reply a fallback made up; it was never on the wire, so settling it does nothing."""

    __slots__ = ()

    async def ack(self) -> None:
        return None

    async def nack(self, *, requeue: bool) -> None:
        return None


class _Remembered:
    __slots__ = ("at", "body", "content_type", "headers", "type")

    def __init__(self, reply: Delivery, at: float) -> None:
        self.body = reply.body
        self.type = reply.type
        self.content_type = reply.content_type
        self.headers = dict(reply.headers)
        self.at = at


class ReplyCache:
    """The last good reply per query (routing key + body), least recently used dropped first."""

    def __init__(self, spec: CachedReply) -> None:
        self.spec = spec
        self._entries: OrderedDict[tuple[str, bytes], _Remembered] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def remember(self, out: Outbound, reply: Delivery, now: float) -> None:
        """Keep ``reply`` as the answer to ``out``'s query."""
        key = (out.routing_key, out.wire.body)
        self._entries[key] = _Remembered(reply, now)
        self._entries.move_to_end(key)
        if len(self._entries) > self.spec.max_entries:
            self._entries.popitem(last=False)

    def recall(self, out: Outbound, now: float) -> tuple[_Remembered, float] | None:
        """The remembered reply to ``out``'s query and its age, unless older than ``max_age``."""
        entry = self._entries.get((out.routing_key, out.wire.body))
        if entry is None:
            return None
        age = now - entry.at
        if age > self.spec.max_age:
            return None
        return entry, age


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
