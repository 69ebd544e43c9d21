"""The wire envelope: which AMQP properties and headers carry leveret's metadata.

The body is only the JSON of the contract, so a plain aio-pika or FastStream client can read and
write leveret messages. Everything else lives in standard AMQP properties (``message_id``,
``correlation_id``, ``type`` = wire name, ``content_type``, ``timestamp``, ``reply_to``,
``delivery_mode``) and in the headers named here.
"""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime
from typing import Any, Final

from framework.messages import Message, MessageKind
from framework.transport.base import OutgoingMessage

__all__ = [
    "ATTEMPT",
    "CACHE_TTL_MS",
    "CAUSATION_ID",
    "CONTENT_TYPE_JSON",
    "DEAD_REASON",
    "ERROR",
    "ERROR_TYPE",
    "EXCEPTION_MESSAGE",
    "EXCEPTION_TYPE",
    "FALLBACK",
    "FALLBACK_AGE",
    "FALLBACK_BREAKER",
    "FALLBACK_CAUSE",
    "FIRST_FAILED_AT",
    "LAST_FAILED_AT",
    "ORIGINAL_QUEUE",
    "REPLAYED",
    "REPLAYED_AT",
    "SAGA_ID",
    "TRACEPARENT",
    "VERSION",
    "build",
    "new_message_id",
    "utc_stamp",
]

VERSION: Final = "leveret-version"
CAUSATION_ID: Final = "leveret-causation-id"
SAGA_ID: Final = "leveret-saga-id"
TRACEPARENT: Final = "traceparent"
# Delivery attempts already made (0 on the first delivery); counted in headers, never in memory.
ATTEMPT: Final = "leveret-attempt"
# Set on messages in a DLQ.
DEAD_REASON: Final = "leveret-dead-reason"
EXCEPTION_TYPE: Final = "leveret-exception-type"
EXCEPTION_MESSAGE: Final = "leveret-exception-message"
ORIGINAL_QUEUE: Final = "leveret-original-queue"
# When a handler first failed on the message (set on its first retry or dead-lettering, then
# kept) and when it was dead-lettered; ISO 8601 UTC, see ``utc_stamp``.
FIRST_FAILED_AT: Final = "leveret-first-failed-at"
LAST_FAILED_AT: Final = "leveret-last-failed-at"
# Set by ``leveret dlq replay``: how many times the message was replayed, and when last.
REPLAYED: Final = "leveret-replayed"
REPLAYED_AT: Final = "leveret-replayed-at"
# Set on an error reply to a query.
ERROR: Final = "leveret-error"
ERROR_TYPE: Final = "leveret-error-type"
# Set (in process only, never on the wire) on a reply a circuit breaker's fallback produced:
# "cache" or "default", the cached reply's age in seconds, the breaker, and why.
FALLBACK: Final = "leveret-fallback"
FALLBACK_AGE: Final = "leveret-fallback-age"
FALLBACK_BREAKER: Final = "leveret-fallback-breaker"
FALLBACK_CAUSE: Final = "leveret-fallback-cause"
# On a query reply: how long (ms) the requesting side may serve it from its cache.
CACHE_TTL_MS: Final = "leveret-cache-ttl-ms"

CONTENT_TYPE_JSON: Final = "application/json"


# Random UUID4s, 32 lowercase hex digits like ``uuid.uuid4().hex``, from a pool of urandom bytes:
# one system call per 256 ids instead of one per id (and no UUID object), on the publish hot path.
_ID_POOL = 4096
_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48)) & ((1 << 128) - 1)
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)  # version 4, RFC 4122 variant
_pool = b""
_pos = _ID_POOL
_pool_lock = threading.Lock()


def _reset_pool() -> None:
    global _pool, _pos, _pool_lock
    _pool, _pos, _pool_lock = b"", _ID_POOL, threading.Lock()


# A forked child must never hand out the parent's remaining random bytes.
os.register_at_fork(after_in_child=_reset_pool)


def new_message_id() -> str:
    """A fresh, globally unique message id: a random UUID4 as 32 hex digits."""
    global _pool, _pos
    with _pool_lock:
        pos = _pos
        if pos >= _ID_POOL:
            _pool, pos = os.urandom(_ID_POOL), 0
        _pos = pos + 16
        chunk = _pool[pos : pos + 16]
    return "%032x" % (int.from_bytes(chunk) & _UUID4_CLEAR | _UUID4_SET)


def utc_stamp(seconds: float | None = None) -> str:
    """``seconds`` since the epoch (now by default) as ISO 8601 UTC to the millisecond."""
    moment = datetime.fromtimestamp(time.time() if seconds is None else seconds, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def build(
    message: Message,
    body: bytes,
    *,
    message_id: str | None = None,
    correlation_id: str | None = None,
    causation_id: str | None = None,
    saga_id: str | None = None,
    traceparent: str | None = None,
    reply_to: str | None = None,
    headers: dict[str, Any] | None = None,
) -> OutgoingMessage:
    """Wrap an encoded contract into the properties and headers of the wire format."""
    mid = message_id or new_message_id()
    hdrs: dict[str, Any] = {VERSION: type(message).__wire_version__}
    if causation_id is not None:
        hdrs[CAUSATION_ID] = causation_id
    if saga_id is not None:
        hdrs[SAGA_ID] = saga_id
    if traceparent is not None:
        hdrs[TRACEPARENT] = traceparent
    if headers:
        hdrs.update(headers)
    return OutgoingMessage(
        body=body,
        message_id=mid,
        type=type(message).__wire_name__,
        correlation_id=correlation_id or mid,
        content_type=CONTENT_TYPE_JSON,
        headers=hdrs,
        reply_to=reply_to,
        persistent=type(message).__kind__ is not MessageKind.QUERY,
        timestamp=int(time.time()),
    )
