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
* ``LEVERET_FAULTS_HANG=P:S`` makes that share of first attempts (commands and events, not
  queries) take S seconds more, before the handler or after it committed, half each: with
  ``LEVERET_FAULTS_HANDLER_TIMEOUT`` below S, the handler runs past its deadline;
* ``LEVERET_FAULTS_LATE=P:S`` sends, for that share of the saga's deliveries, a copy with a new
  message id (``<id>~late``) up to S seconds later: a reply that arrives after the saga moved on;
* ``LEVERET_FAULTS_HOLD=P:S`` holds that share of deliveries up to S seconds before handling them,
  so later messages overtake them (events reach the projections out of order);
* ``LEVERET_FAULTS_COMPENSATION=transient:N`` fails every compensation (refund, release) on its
  first N attempts; ``permanent:DIGITS`` fails the refunds of orders whose id ends in one of
  DIGITS on every attempt;
* ``LEVERET_FAULTS_STEP_TIMEOUT=S`` sets the saga's step deadlines (default 60 s);
* ``LEVERET_FAULTS_SERVICES=inventory`` serves only the named services, ``-inventory`` all but
  them; ``LEVERET_FAULTS_INVENTORY_MAX=N`` caps the inventory's queues at N messages
  (``reject-publish``) and guards sends to it with a circuit breaker;
* ``LEVERET_FAULTS_COMPENSATION_ATTEMPTS=N``: the saga sends a compensation N times (5 by
  default) before it ends ``compensation_failed``;
* ``LEVERET_FAULTS_QUICK_RETRIES=1`` shortens the retry delays to 0.2 s and 0.5 s (and the
  saga's wait for a compensation's reply to 1 s), so a
  permanently failing handler dead-letters within a second;
* the connection has short heartbeats and deadlines (``LEVERET_FAULTS_HEARTBEAT``, default 2 s),
  so a hung broker or a blackholed link is noticed within seconds;
* ``LEVERET_FAULTS_SHUFFLE_NODES=0``: with several node URLs, connect to them in the order
  listed (every worker on the first node that answers) rather than shuffled.

The broker, database, prefix and queue type come from ``LEVERET_SHOP_URL`` (one URL, or one per
node of a cluster, comma-separated), ``LEVERET_SHOP_DB_URL``, ``LEVERET_SHOP_PREFIX`` and
``LEVERET_SHOP_QUEUE_TYPE`` as for ``handlers.app``.
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

import contracts
from contracts.inventory import ReleaseInventory
from contracts.payment import RefundPayment
from framework import App, AppConfig, RetryPolicy, Service
from framework.messages import MessageKind
from framework.middleware import Incoming, Next
from framework.resilience import BreakerConfig, Breakers, Downstream
from framework.saga import RetryBackoff
from framework.store import Store, store_from_url
from framework.store.base import OutboxRow, SagaRecord, SagaStatus, StoreTx
from framework.store.migrations import Migrations, PendingStep
from framework.transport.amqp import AmqpConfig, AmqpTransport
from handlers.app import DEFAULT_STOCK, build_app, command_services
from handlers.inventory import build_inventory
from handlers.orders import build_orders, build_read_side

__all__ = [
    "CRASH_POINTS",
    "DUPLICATE_HEADER",
    "LATE_HEADER",
    "LATE_SUFFIX",
    "CrashPoints",
    "app",
    "build_fault_app",
]

CRASH_POINTS = ("before_commit", "after_commit", "before_mark_sent", "before_ack", "compensation")
DUPLICATE_HEADER = "x-faults-duplicate"
LATE_HEADER = "x-faults-late"
LATE_SUFFIX = "~late"
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

    async def upgrade(self, migrations: Sequence[Migrations] = ()) -> list[PendingStep]:
        return await self._inner.upgrade(migrations)

    async def pending_steps(self, migrations: Sequence[Migrations] = ()) -> list[PendingStep]:
        return await self._inner.pending_steps(migrations)

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

    async def failed_outbox(
        self, limit: int = 100, *, saga_id: str | None = None
    ) -> list[OutboxRow]:
        return await self._inner.failed_outbox(limit, saga_id=saga_id)

    def __getattr__(self, name: str) -> Any:
        # Whatever else the store grows (health checks, counters) is the inner store's.
        return getattr(self._inner, name)

    async def mark_sent(self, message_ids: Sequence[str]) -> None:
        self._crash("before_mark_sent")
        await self._inner.mark_sent(message_ids)

    async def prune_inbox(self) -> int:
        return await self._inner.prune_inbox()

    async def prune_outbox(self) -> int:
        return await self._inner.prune_outbox()

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


def _odds(spec: str) -> tuple[float, float]:
    """``"P:S"`` -> (probability, seconds); empty -> (0, 0)."""
    if not spec:
        return 0.0, 0.0
    share, _, seconds = spec.partition(":")
    return float(share), float(seconds or 1.0)


class FaultMiddleware:
    """Outermost consume middleware: logs deliveries, duplicates some, slows, hangs, holds,
    sends late copies, fails and crashes."""

    def __init__(
        self,
        directory: Path,
        crash: CrashPoints,
        *,
        duplicate: float,
        slow: float,
        compensation: str = "",
        hang: str = "",
        late: str = "",
        hold: str = "",
    ) -> None:
        self._fd = os.open(
            directory / f"deliveries-{os.getpid()}.log",
            os.O_WRONLY | os.O_CREAT | os.O_APPEND,
            0o644,
        )
        # Which deliveries hung, and where: ``before`` / ``after`` and the message id.
        self._hang_log = os.open(
            directory / "hangs.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644
        )
        self._crash = crash
        self._duplicate = duplicate
        self._slow = slow
        self._hang = _odds(hang)
        self._late = _odds(late)
        self._hold = _odds(hold)
        mode, _, arg = compensation.partition(":")
        self._transient = int(arg) if mode == "transient" else 0
        self._permanent = arg if mode == "permanent" else ""
        self._rng = random.Random()
        self._background: set[asyncio.Task[None]] = set()
        self.app: App | None = None

    async def __call__(self, msg: Incoming, call_next: Next) -> Any:
        delivery = msg.delivery
        os.write(self._fd, f"{msg.handler.name}\t{delivery.message_id}\n".encode())
        first = not any(h in delivery.headers for h in (DUPLICATE_HEADER, LATE_HEADER))
        if self._duplicate and first and self._rng.random() < self._duplicate:
            await self._copy(msg, delivery.message_id or "", DUPLICATE_HEADER)
        late, late_s = self._late
        if late and first and msg.handler.saga is not None and self._rng.random() < late:
            # Sent from a task, so the delivery is not held up by the wait.
            task = asyncio.create_task(
                self._copy(
                    msg,
                    f"{delivery.message_id}{LATE_SUFFIX}",
                    LATE_HEADER,
                    after=self._rng.uniform(0.0, late_s),
                )
            )
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        hold, hold_s = self._hold
        if hold and self._rng.random() < hold:
            await asyncio.sleep(self._rng.uniform(0.0, hold_s))
        if self._slow:
            await asyncio.sleep(self._slow)
        hang, hang_s = self._hang
        hang_after = False
        if (
            hang
            and msg.context.attempt == 0
            and msg.handler.kind is not MessageKind.QUERY
            and self._rng.random() < hang
        ):
            if self._rng.random() < 0.5:
                os.write(self._hang_log, f"before\t{delivery.message_id}\n".encode())
                await asyncio.sleep(hang_s)  # the handler deadline cuts this
            else:
                hang_after = True
        message = msg.message
        if isinstance(message, _COMPENSATIONS):
            if msg.context.attempt < self._transient:
                raise CompensationFailed(f"transient failure, attempt {msg.context.attempt}")
            if isinstance(message, RefundPayment) and message.order_id[-1:] in self._permanent:
                raise CompensationFailed("permanent failure: the card processor refuses")
        result = await call_next(msg)
        if hang_after:
            os.write(self._hang_log, f"after\t{delivery.message_id}\n".encode())
            await asyncio.sleep(hang_s)  # committed, then past the deadline: never acked
        if isinstance(msg.message, _COMPENSATIONS):
            self._crash("compensation")
        self._crash("before_ack")
        return result

    async def _copy(self, msg: Incoming, message_id: str, header: str, after: float = 0.0) -> None:
        """Publish a copy of the delivery to its own queue (through the retry exchange)."""
        if self.app is None:
            return
        if after:
            await asyncio.sleep(after)
        delivery = msg.delivery
        copy = delivery.to_outgoing(headers={**delivery.headers, header: 1})
        copy.message_id = message_id
        with contextlib.suppress(Exception):  # a copy lost to a fault is no message lost
            await self.app.transport.publish(
                copy, exchange=self.app.naming.retry, routing_key=_queue_of(self.app, msg)
            )


def _queue_of(app: App, msg: Incoming) -> str:
    return app.naming.handler_queue(msg.handler.service, msg.handler.message_type.__wire_name__)


def _selected(services: list[Service], spec: str) -> list[Service]:
    """``"a,b"``: only those services; ``"-a,b"``: all but those; empty: all."""
    if not spec:
        return services
    leave_out = spec.startswith("-")
    names = {n.strip() for n in spec.removeprefix("-").split(",") if n.strip()}
    unknown = names - {s.name for s in services}
    if unknown:
        raise ValueError(f"LEVERET_FAULTS_SERVICES names unknown services {sorted(unknown)}")
    return [s for s in services if (s.name in names) != leave_out]


def _inventory_breaker() -> Breakers:
    """A breaker on sends to the inventory: a few refused publishes open it, 1 s later it lets
    two through to probe."""
    config = BreakerConfig(
        window_size=10,
        minimum_calls=4,
        wait_in_open=1.0,
        permitted_calls_in_half_open=2,
        automatic_transition=True,
    )
    return Breakers([Downstream("inventory", config=config)], status=False)


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
            shuffle_nodes=env.get("LEVERET_FAULTS_SHUFFLE_NODES", "1") != "0",
        ),
    )
    middleware = FaultMiddleware(
        directory,
        crash,
        duplicate=float(env.get("LEVERET_FAULTS_DUPLICATE", "0")),
        slow=float(env.get("LEVERET_FAULTS_SLOW", "0")),
        compensation=env.get("LEVERET_FAULTS_COMPENSATION", ""),
        hang=env.get("LEVERET_FAULTS_HANG", ""),
        late=env.get("LEVERET_FAULTS_LATE", ""),
        hold=env.get("LEVERET_FAULTS_HOLD", ""),
    )
    store = CrashingStore(
        store_from_url(env.get("LEVERET_SHOP_DB_URL", "sqlite:///leveret-shop.sqlite3")), crash
    )
    prefix = env.get("LEVERET_SHOP_PREFIX", "shop")
    quick = env.get("LEVERET_FAULTS_QUICK_RETRIES") == "1"
    step_timeout = float(env.get("LEVERET_FAULTS_STEP_TIMEOUT", "60"))
    inventory_max = int(env.get("LEVERET_FAULTS_INVENTORY_MAX", "0")) or None
    # Quick retries: a compensation's reply is awaited 1 s too, as before the 10 s default.
    services = command_services(
        step_timeout=step_timeout, compensation_timeout=1.0 if quick else None
    )
    attempts = env.get("LEVERET_FAULTS_COMPENSATION_ATTEMPTS")
    if attempts is not None:
        assert services[0].name == "orders"
        services[0] = build_orders(
            step_timeout=step_timeout,
            compensation_timeout=1.0 if quick else None,
            compensation_retry=RetryBackoff(attempts=int(attempts)),
        )
    services.insert(1, build_read_side(store))
    if inventory_max is not None:
        services = [
            build_inventory(DEFAULT_STOCK, max_length=inventory_max) if s.name == "inventory" else s
            for s in services
        ]
    app = App(
        _selected(services, env.get("LEVERET_FAULTS_SERVICES", "")),
        url=url,
        transport=transport,
        middleware=[middleware],
        config=AppConfig(
            prefix=prefix,
            queue_type=env.get("LEVERET_SHOP_QUEUE_TYPE", "classic"),
            shutdown_grace=float(env.get("LEVERET_FAULTS_GRACE", "10")),
            handler_timeout=float(env.get("LEVERET_FAULTS_HANDLER_TIMEOUT", "60")),
            retry=RetryPolicy(immediate=2, delays=(0.2, 0.5)) if quick else RetryPolicy(),
        ),
        store=store,
        contracts=contracts.ALL,
        breakers=None if inventory_max is None else _inventory_breaker(),
    )
    middleware.app = app
    return app


app = build_fault_app() if os.environ.get("LEVERET_FAULTS_DIR") else build_app()
