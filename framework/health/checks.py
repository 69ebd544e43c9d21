"""Readiness of an app, as the broker and the store see it.

Ready means: the broker answers, every handler queue the app consumes exists and has at least
one consumer (counted by the broker, from a passive declare, so a consumer that the client
believes in but the broker lost counts as missing), and the store, if the app has one, answers
a read. Every check has a deadline; a check that runs past it has failed.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import msgspec

from framework.errors import (
    BrokerUnreachable,
    ConfigurationError,
    LeveretError,
    TransportClosed,
)
from framework.messages import MessageKind
from framework.transport.base import Transport

if TYPE_CHECKING:
    from framework.app import App
    from framework.consumer import HandlerPipeline

__all__ = ["Check", "QueueStatus", "Readiness", "readiness"]


class Check(msgspec.Struct, frozen=True, kw_only=True):
    """One condition of readiness: its name, whether it holds, and what was seen."""

    name: str
    ok: bool
    detail: str


class QueueStatus(msgspec.Struct, frozen=True, kw_only=True):
    """A handler queue as the broker counts it (None: the broker did not say)."""

    queue: str
    handler: str
    messages: int | None
    consumers: int | None
    dead_letters: int | None


class Readiness(msgspec.Struct, frozen=True, kw_only=True):
    """Whether the app is ready, every check, and the queues it consumes."""

    ready: bool
    checks: list[Check]
    queues: list[QueueStatus]


# Seconds without a confirm while publishes wait or fail before ``/ready`` says not ready.
PUBLISH_STALL = 5.0


def _why(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g}s"
    if isinstance(exc, LeveretError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


async def _queue(
    transport: Transport, queue: str, handler: str, dlq: str, timeout: float
) -> tuple[QueueStatus, Check, bool]:
    """The queue's status, its consumer check, and whether the broker answered at all."""
    try:
        async with asyncio.timeout(timeout):
            info = await transport.queue_info(queue)
    except Exception as exc:
        status = QueueStatus(
            queue=queue, handler=handler, messages=None, consumers=None, dead_letters=None
        )
        answered = not isinstance(exc, TimeoutError | BrokerUnreachable | TransportClosed)
        missing = isinstance(exc, ConfigurationError)
        detail = "the queue does not exist" if missing else _why(exc, timeout)
        check = Check(name=f"consumer {queue}", ok=False, detail=detail)
        return status, check, answered
    dead: int | None = None
    try:
        async with asyncio.timeout(timeout):
            dead = (await transport.queue_info(dlq)).messages
    except Exception:  # the DLQ count is information, not a readiness condition
        pass
    status = QueueStatus(
        queue=queue,
        handler=handler,
        messages=info.messages,
        consumers=info.consumers,
        dead_letters=dead,
    )
    ok = info.consumers > 0
    detail = f"{info.consumers} consumer(s), {info.messages} ready message(s)"
    return status, Check(name=f"consumer {queue}", ok=ok, detail=detail), True


async def readiness(
    app: App, *, timeout: float = 3.0, publish_stall: float = PUBLISH_STALL
) -> Readiness:
    """Ask the broker about every queue ``app`` consumes, and the store for a read; and whether
    the broker confirms what the app publishes.

    Args:
        app: a connected app (a worker's, or one connected without consuming by
            ``leveret status``).
        timeout: deadline of each broker or store call.
        publish_stall: not ready once the broker has confirmed nothing for this long while
            publishes wait or fail (``Transport.publishing_stalled_for``): a cluster without a
            majority answers queue declarations, but takes no message.
    """
    checks: list[Check] = []
    queues: list[QueueStatus] = []
    unanswered = ""

    def side(pipeline: HandlerPipeline) -> Transport:
        if app.query_transport is not None and pipeline.spec.kind is MessageKind.QUERY:
            return app.query_transport
        return app.transport

    # Concurrently, the store too: while the broker is away every call waits for its deadline,
    # and the whole check must answer well within a probe's.
    store = _store(app, timeout) if app.store is not None else None
    results, store_check = await asyncio.gather(
        asyncio.gather(
            *(
                _queue(side(p), p.queue, p.spec.name, app.naming.dlq(p.queue), timeout)
                for p in app.pipelines
            )
        ),
        store if store is not None else _no_store(),
    )
    for status, check, answered in results:
        queues.append(status)
        checks.append(check)
        if not answered and not unanswered:
            unanswered = check.detail
    checks.insert(0, Check(name="broker", ok=not unanswered, detail=unanswered or "answered"))
    stalled = max(t.publishing_stalled_for() for t in {app.transport, app.query_transport} if t)
    if stalled >= publish_stall:
        detail = f"nothing confirmed for {stalled:.0f}s while publishes wait or fail"
        checks.insert(1, Check(name="publishing", ok=False, detail=detail))
    if store_check is not None:
        checks.append(store_check)
    return Readiness(ready=all(c.ok for c in checks), checks=checks, queues=queues)


async def _no_store() -> None:
    return None


async def _store(app: App, timeout: float) -> Check:
    assert app.store is not None
    try:
        async with asyncio.timeout(timeout):
            await app.store.pending_outbox(limit=1)
    except Exception as exc:
        return Check(name="store", ok=False, detail=_why(exc, timeout))
    return Check(name="store", ok=True, detail="answered")
