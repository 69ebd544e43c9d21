"""The reference shop with fault hooks: ``leveret run tests.faults.app:app --workers N``.

It is ``handlers.app.build_app`` unchanged, plus what the harness needs to see and to break:

* every delivery is appended to ``$LEVERET_FAULTS_DIR/deliveries-<pid>.log`` (queue, message id)
  with one ``write`` each, so a SIGKILL loses none: the checker counts duplicate deliveries;
* ``LEVERET_FAULTS_CRASH=point:probability,...`` SIGKILLs the worker at chosen crash points, at
  most ``LEVERET_FAULTS_MAX_CRASHES`` times per point (counted in ``crashes.log``):

  ``before_commit``    the handler ran, its transaction has not committed;
  ``after_commit``     committed (inbox, state, outbox rows), nothing published or acked yet;
  ``before_mark_sent`` the outbox rows were published and confirmed, not yet marked sent;
  ``before_ack``       handler, commit and publish done, the delivery not acked;
  ``compensation``     a compensation (refund, release) committed, not acked;

* ``LEVERET_FAULTS_DUPLICATE=0.1`` republishes that share of first deliveries with the same
  message id (a broker or a producer delivering twice);
* ``LEVERET_FAULTS_SLOW=S`` makes every handler take S seconds more (shutdown under load);
* ``LEVERET_FAULTS_COMPENSATION=transient:N`` fails every compensation (refund, release) on its
  first N attempts; ``permanent:DIGITS`` fails the refunds of orders whose id ends in one of
  DIGITS on every attempt;
* ``LEVERET_FAULTS_STEP_TIMEOUT=S`` sets the saga's step deadlines (default 60 s);
* ``LEVERET_FAULTS_QUICK_RETRIES=1`` shortens the retry delays to 0.2 s and 0.5 s, so a
  permanently failing handler dead-letters within a second;
* the connection has short heartbeats and deadlines (``LEVERET_FAULTS_HEARTBEAT``, default 2 s),
  so a hung broker or a blackholed link is noticed within seconds.

The broker, database and prefix come from ``LEVERET_SHOP_URL``, ``LEVERET_SHOP_DB_URL`` and
``LEVERET_SHOP_PREFIX`` as for ``handlers.app``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from contracts.inventory import ReleaseInventory
from contracts.payment import RefundPayment
from framework import App, AppConfig, RetryPolicy
from framework.middleware import Incoming, Next
from framework.store import Store, store_from_url
from framework.store.base import OutboxRow, SagaRecord, SagaStatus, StoreTx
from framework.transport.amqp import AmqpConfig, AmqpTransport
from handlers.app import build_app

__all__ = ["CRASH_POINTS", "DUPLICATE_HEADER", "CrashPoints", "app", "build_fault_app"]

CRASH_POINTS = ("before_commit", "after_commit", "before_mark_sent", "before_ack", "compensation")
DUPLICATE_HEADER = "x-faults-duplicate"
_COMPENSATIONS = (RefundPayment, ReleaseInventory)


class CrashPoints:
    """Decides, at each crash point, whether this process SIGKILLs itself now."""

    def __init__(self, spec: str, directory: Path, max_crashes: int) -> None:
        self.odds: dict[str, float] = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            point, _, odds = part.partition(":")
            if point not in CRASH_POINTS:
                raise ValueError(f"unknown crash point {point!r}: use one of {CRASH_POINTS}")
            self.odds[point] = float(odds or 1.0)
        self.log = directory / "crashes.log"
        self.max_crashes = max_crashes
        self._rng = random.Random()

    def __call__(self, point: str) -> None:
        odds = self.odds.get(point)
        if odds is None or self._rng.random() >= odds:
            return
        fd = os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            # Several workers may race to the last crash: an advisory lock keeps the count exact.
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX)
            crashed = self.log.read_text().count(f"{point}\t")
            if crashed >= self.max_crashes:
                return
            os.write(fd, f"{point}\t{os.getpid()}\t{time.time():.3f}\n".encode())
        finally:
            os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)


class CrashingStore(Store):
    """A store that calls the crash points around commits and ``mark_sent``."""

    def __init__(self, inner: Store, crash: CrashPoints) -> None:
        self._inner = inner
        self._crash = crash
        self.url = inner.url

    async def setup(self, ddl: Sequence[str] = ()) -> None:
        await self._inner.setup(ddl)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[StoreTx]:
        async with self._inner.transaction() as tx:
            yield tx
            self._crash("before_commit")
        self._crash("after_commit")

    async def pending_outbox(self, limit: int = 500) -> list[OutboxRow]:
        return await self._inner.pending_outbox(limit)

    async def stats(self) -> Any:
        return await self._inner.stats()

    def __getattr__(self, name: str) -> Any:
        # Whatever else the store grows (health checks, counters) is the inner store's.
        return getattr(self._inner, name)

    async def mark_sent(self, message_ids: Sequence[str]) -> None:
        self._crash("before_mark_sent")
        await self._inner.mark_sent(message_ids)

    async def get_saga(self, saga_id: str) -> SagaRecord | None:
        return await self._inner.get_saga(saga_id)

    async def list_sagas(
        self, *, status: SagaStatus | None = None, saga: str | None = None, limit: int = 1000
    ) -> list[SagaRecord]:
        return await self._inner.list_sagas(status=status, saga=saga, limit=limit)

    async def history(self, saga_id: str) -> list[Any]:
        return await self._inner.history(saga_id)

    async def close(self) -> None:
        await self._inner.close()


class CompensationFailed(RuntimeError):
    """Raised by the fault hooks in place of a compensation handler."""


class FaultMiddleware:
    """Outermost consume middleware: logs deliveries, duplicates some, slows, fails and
    crashes."""

    def __init__(
        self,
        directory: Path,
        crash: CrashPoints,
        *,
        duplicate: float,
        slow: float,
        compensation: str = "",
    ) -> None:
        self._fd = os.open(
            directory / f"deliveries-{os.getpid()}.log",
            os.O_WRONLY | os.O_CREAT | os.O_APPEND,
            0o644,
        )
        self._crash = crash
        self._duplicate = duplicate
        self._slow = slow
        mode, _, arg = compensation.partition(":")
        self._transient = int(arg) if mode == "transient" else 0
        self._permanent = arg if mode == "permanent" else ""
        self._rng = random.Random()
        self.app: App | None = None

    async def __call__(self, msg: Incoming, call_next: Next) -> Any:
        delivery = msg.delivery
        os.write(self._fd, f"{msg.handler.name}\t{delivery.message_id}\n".encode())
        if (
            self._duplicate
            and DUPLICATE_HEADER not in delivery.headers
            and self._rng.random() < self._duplicate
            and self.app is not None
        ):
            copy = delivery.to_outgoing(headers={**delivery.headers, DUPLICATE_HEADER: 1})
            await self.app.transport.publish(
                copy, exchange=self.app.naming.retry, routing_key=_queue_of(self.app, msg)
            )
        if self._slow:
            await asyncio.sleep(self._slow)
        message = msg.message
        if isinstance(message, _COMPENSATIONS):
            if msg.context.attempt < self._transient:
                raise CompensationFailed(f"transient failure, attempt {msg.context.attempt}")
            if isinstance(message, RefundPayment) and message.order_id[-1:] in self._permanent:
                raise CompensationFailed("permanent failure: the card processor refuses")
        result = await call_next(msg)
        if isinstance(msg.message, _COMPENSATIONS):
            self._crash("compensation")
        self._crash("before_ack")
        return result


def _queue_of(app: App, msg: Incoming) -> str:
    return app.naming.handler_queue(msg.handler.service, msg.handler.message_type.__wire_name__)


def build_fault_app() -> App:
    """The shop from the environment, with the hooks above."""
    env = os.environ
    directory = Path(env.get("LEVERET_FAULTS_DIR", "."))
    directory.mkdir(parents=True, exist_ok=True)
    crash = CrashPoints(
        env.get("LEVERET_FAULTS_CRASH", ""),
        directory,
        int(env.get("LEVERET_FAULTS_MAX_CRASHES", "1000000")),
    )
    url = env.get("LEVERET_SHOP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    heartbeat = int(env.get("LEVERET_FAULTS_HEARTBEAT", "2"))
    transport = AmqpTransport(
        url,
        config=AmqpConfig(
            connect_timeout=float(env.get("LEVERET_FAULTS_CONNECT_TIMEOUT", "10")),
            publish_timeout=5.0,
            declare_timeout=5.0,
            heartbeat=heartbeat,
            reconnect_interval=0.5,
            consumer_verify_timeout=float(env.get("LEVERET_FAULTS_VERIFY_TIMEOUT", "10")),
        ),
    )
    middleware = FaultMiddleware(
        directory,
        crash,
        duplicate=float(env.get("LEVERET_FAULTS_DUPLICATE", "0")),
        slow=float(env.get("LEVERET_FAULTS_SLOW", "0")),
        compensation=env.get("LEVERET_FAULTS_COMPENSATION", ""),
    )
    store = CrashingStore(
        store_from_url(env.get("LEVERET_SHOP_DB_URL", "sqlite:///leveret-shop.sqlite3")), crash
    )
    prefix = env.get("LEVERET_SHOP_PREFIX", "shop")
    quick = env.get("LEVERET_FAULTS_QUICK_RETRIES") == "1"
    app = build_app(
        url,
        store=store,
        config=AppConfig(
            prefix=prefix,
            shutdown_grace=float(env.get("LEVERET_FAULTS_GRACE", "10")),
            retry=RetryPolicy(immediate=2, delays=(0.2, 0.5)) if quick else RetryPolicy(),
        ),
        step_timeout=float(env.get("LEVERET_FAULTS_STEP_TIMEOUT", "60")),
        transport=transport,
        middleware=[middleware],
    )
    middleware.app = app
    return app


app = build_fault_app() if os.environ.get("LEVERET_FAULTS_DIR") else build_app()
