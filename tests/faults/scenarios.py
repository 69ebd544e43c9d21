"""The scenarios: each starts the shop, injects its faults while sagas run, restores the broker
(or proxy) in a ``finally``, and returns its row of the report table.

Broker faults hit the suite's own node (``tests/support/second_node.py``), never the shared one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import secrets
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from contracts.orders import PlaceOrder
from tests.faults.app import CRASH_POINTS, LATE_SUFFIX
from tests.faults.harness import Chaos, Flood, Harness, Injector, Row, Run, Shop
from tests.support import amqp_fields
from tests.support.broker import RabbitmqctlError
from tests.support.fault_proxy import ProxyMode, fault_proxy
from tests.support.poll import until
from tests.support.raw_amqp import raw_channel
from tests.test_worker import Leveret

__all__ = ["CI_SCENARIOS", "SCENARIOS", "Scenario"]

Scenario = Callable[[Harness], Awaitable[Row]]


def _restore_node(shop: Shop) -> None:
    """Bring the node back to normal: application running, no process stopped."""
    with contextlib.suppress(RabbitmqctlError):
        shop.node.ctl("start_app")


async def baseline(h: Harness) -> Row:
    """No faults: the reference row (and a check of the checker)."""
    async with h.shop("baseline") as shop:
        shop.start()
        await shop.ready()

        row = await h.workload("no faults", shop, _no_faults)
        await _drained(shop, row)
        return row


async def _consumers_back(shop: Shop, run: Run, *, timeout: float) -> None:
    """Wait until every handler queue has its consumers again (a reconnect that forgot them
    would hang here); a problem of the run if not within ``timeout`` seconds."""
    try:
        await until(
            lambda: not shop.consumers_missing(shop.workers),
            timeout=timeout,
            what="every queue's consumers back",
        )
    except TimeoutError:
        missing = shop.consumers_missing(shop.workers)[:5]
        run.problems.append(f"consumers not restored within {timeout:.0f} s: {missing}")


def _closing_connections(shop: Shop, times: int) -> Injector:
    """An injector: the broker closes every connection ``times`` times, spread over the run;
    then every queue must have its consumers back."""

    async def inject(run: Run) -> None:
        for k in range(times):
            await run.reached((k + 1) / (times + 2))
            shop.node.ctl("close_all_connections", "fault injection")
            run.instant("close_all_connections")
        await _consumers_back(shop, run, timeout=30)

    return inject


def _handler_failures(leveret: Leveret, exception: str) -> list[dict[str, Any]]:
    """The workers' ``handler_failed`` log events whose exception names ``exception``."""
    return [e for e in leveret.events("handler_failed") if exception in str(e.get("exception", ""))]


async def _no_faults(run: Run) -> None:
    """The injector of scenarios whose faults are in the workers' settings, not injected."""
    return None


async def _drained(shop: Shop, row: Row, leveret: Leveret | None = None) -> None:
    """SIGTERM after the run: the supervisor (the latest by default) must drain and exit 0."""
    code = await shop.stop(leveret=leveret)
    if code != 0:
        row.problems.append(f"leveret run exited {code} on SIGTERM, expected 0")


async def connections_closed(h: Harness) -> Row:
    """The broker closes every connection (``close_all_connections``) repeatedly mid-run."""
    kills = 4 if h.profile.name == "short" else 20
    async with h.shop("close-connections") as shop:
        shop.start()
        await shop.ready()

        row = await h.workload(
            "connections closed by the broker", shop, _closing_connections(shop, kills)
        )
        await _drained(shop, row)
        return row


async def workers_killed(h: Harness) -> Row:
    """Workers SIGKILLed at the five crash points and at random moments."""
    per_point = 1 if h.profile.name == "short" else 4
    kills = 3 if h.profile.name == "short" else 12
    env = {
        "LEVERET_FAULTS_CRASH": (
            "before_commit:0.02,after_commit:0.02,before_mark_sent:0.05,"
            "before_ack:0.02,compensation:0.25"
        ),
        "LEVERET_FAULTS_MAX_CRASHES": str(per_point),
    }
    rng = random.Random(3)
    async with h.shop("sigkill", env=env) as shop:
        shop.start()
        await shop.ready()

        async def inject(run: Run) -> None:
            for k in range(kills):
                await run.reached((k + 1) / (kills + 2))
                pids = shop.worker_pids()
                victim = pids[rng.choice(sorted(pids))]
                with contextlib.suppress(ProcessLookupError):
                    os.kill(victim, signal.SIGKILL)
                run.instant("sigkill")

        row = await h.workload("worker SIGKILL (crash points + random)", shop, inject)
        crashed = shop.crashes()
        row.faults += len(crashed)
        hit = sorted({p for p, _ in crashed})
        row.notes += f"; crash points hit: {', '.join(hit) or 'none'}"
        missed = sorted(set(CRASH_POINTS) - set(hit))
        if missed:
            row.problems.append(f"crash points never reached: {missed}")
        await _drained(shop, row)
        return row


async def broker_restarted(h: Harness) -> Row:
    """``stop_app`` / ``start_app`` of the node mid-run; every queue gets its consumers back."""
    restarts = 1 if h.profile.name == "short" else 6
    async with h.shop("broker-restart") as shop:
        shop.start()
        await shop.ready()

        async def inject(run: Run) -> None:
            for k in range(restarts):
                await run.reached((k + 1) / (restarts + 2))
                try:
                    with run.fault("stop_app"):
                        shop.node.ctl("stop_app")
                        await asyncio.sleep(3)
                        shop.node.ctl("start_app")
                finally:
                    _restore_node(shop)
                await _consumers_back(shop, run, timeout=45)

        row = await h.workload("broker application restarted", shop, inject)
        await _drained(shop, row)
        return row


async def broker_hung(h: Harness) -> Row:
    """The node's Erlang VM stopped (SIGSTOP) past the heartbeat grace, then resumed."""
    pid = int(h.node.ctl("eval", "os:getpid().").strip().strip('"'))
    async with h.shop("broker-hung") as shop:
        shop.start()
        await shop.ready()

        async def inject(run: Run) -> None:
            await run.reached(0.3)
            try:
                with run.fault("sigstop"):
                    os.kill(pid, signal.SIGSTOP)
                    await asyncio.sleep(12)  # past the clients' heartbeat grace (about 9 s)
            finally:
                os.kill(pid, signal.SIGCONT)
            await _consumers_back(shop, run, timeout=45)

        row = await h.workload("broker hung (SIGSTOP) then resumed", shop, inject)
        await _drained(shop, row)
        return row


async def blackholed(h: Harness) -> Row:
    """The link to the broker blackholed past the heartbeat, then only confirms dropped."""
    host, port = "127.0.0.1", urlsplit(h.node.url).port or 5672
    async with contextlib.AsyncExitStack() as stack:
        proxy = await stack.enter_async_context(fault_proxy(host, port))
        # 1 s heartbeats: a silent broker is given up after about 6 s; consumers not back
        # within 5 s of a reconnect make the worker exit 4.
        env = {"LEVERET_FAULTS_HEARTBEAT": "1", "LEVERET_FAULTS_VERIFY_TIMEOUT": "5"}
        shop = await stack.enter_async_context(
            h.shop("blackhole", worker_url=proxy.url_for(h.node.url), env=env)
        )
        leveret = shop.start()
        await shop.ready()

        def exited_non_zero() -> bool:
            return any(e.get("exit_code") not in (None, 0) for e in leveret.events("worker_exited"))

        async def inject(run: Run) -> None:
            try:
                await run.reached(0.2)
                with run.fault("blackhole"):
                    proxy.set_mode(ProxyMode.BLACKHOLE)
                    # Past the heartbeats and the consumer verify deadline: workers must give
                    # up (exit 4) and be restarted rather than hang.
                    await until(
                        exited_non_zero, timeout=60, what="a worker to exit non-zero (blackhole)"
                    )
                    proxy.set_mode(ProxyMode.PASS)
                await run.reached(0.5)
                with run.fault("drop_server_to_client"):
                    lost = len(leveret.events("broker_connection_lost"))
                    proxy.set_mode(ProxyMode.DROP_SERVER_TO_CLIENT)
                    # Until a worker misses the broker's heartbeats (about 3 of them).
                    await until(
                        lambda: len(leveret.events("broker_connection_lost")) > lost,
                        timeout=60,
                        what="a worker to notice the broker's silence",
                    )
                    proxy.set_mode(ProxyMode.PASS)
            except TimeoutError as exc:
                run.problems.append(str(exc))
            finally:
                proxy.set_mode(ProxyMode.PASS)

        row = await h.workload("blackhole past heartbeat; confirms dropped", shop, inject)
        exits = [e for e in leveret.events("worker_exited") if not e.get("stopping")]
        restarts = leveret.events("worker_restarted")
        codes = sorted({str(e.get("exit_code", e.get("signal"))) for e in exits})
        row.notes += f"; worker exits {codes}, restarts {len(restarts)}"
        if not restarts:
            row.problems.append("no worker was restarted")
        await _drained(shop, row)
        return row


async def duplicated(h: Harness) -> Row:
    """10% of first deliveries are delivered a second time with the same message id."""
    async with h.shop("duplicates", env={"LEVERET_FAULTS_DUPLICATE": "0.1"}) as shop:
        shop.start()
        await shop.ready()

        row = await h.workload("10% duplicated deliveries", shop, _no_faults)
        row.faults = row.duplicate_deliveries
        if row.duplicate_deliveries == 0:
            row.problems.append("no duplicate was delivered: the fault did not fire")
        await _drained(shop, row)
        return row


async def database_outage(h: Harness) -> Row:
    """PostgreSQL unreachable for seconds (every connection reset through a proxy) mid-run."""
    base = os.environ.get("LEVERET_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
    schema = f"leveret_faults_{secrets.token_hex(4)}"
    direct = with_query(base, schema=schema)
    parts = urlsplit(base)
    async with fault_proxy(parts.hostname or "127.0.0.1", parts.port or 5432) as proxy:
        try:
            async with h.shop(
                "db-outage", db_url=proxy.url_for(direct), check_db_url=direct
            ) as shop:
                shop.start()
                await shop.ready()

                outages = 1 if h.profile.name == "short" else 4

                async def inject(run: Run) -> None:
                    try:
                        for k in range(outages):
                            await run.reached((k + 1) / (outages + 2))
                            with run.fault("postgres_down"):
                                proxy.set_mode(ProxyMode.RESET)
                                await asyncio.sleep(5)
                                proxy.set_mode(ProxyMode.PASS)
                    finally:
                        proxy.set_mode(ProxyMode.PASS)

                row = await h.workload("PostgreSQL unreachable (proxy reset)", shop, inject)
                await _drained(shop, row)
                return row
        finally:
            await _drop_schema(base, schema)


def with_query(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = "&".join([*(filter(None, [parts.query])), *(f"{k}={v}" for k, v in params.items())])
    return urlunsplit(parts._replace(query=query))


async def _drop_schema(url: str, schema: str) -> None:
    import asyncpg

    with contextlib.suppress(OSError, asyncpg.PostgresError):
        conn = await asyncpg.connect(url, timeout=5)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()


async def graceful_shutdown(h: Harness) -> Row:
    """SIGTERM under load with handlers slower than the grace period: the in-flight messages
    go back to their queues (never acked), and a new supervisor finishes the work."""
    # Step deadlines past the end of the run: with every handler 1 s slow, the 60 s default's
    # stale timeouts would still be queueing up when the checker wants the queues empty.
    env = {
        "LEVERET_FAULTS_SLOW": "1.0",
        "LEVERET_FAULTS_GRACE": "0.3",
        "LEVERET_FAULTS_STEP_TIMEOUT": "900",
    }
    async with h.shop("graceful", env=env) as shop:
        first = shop.start()
        await shop.ready()

        async def inject(run: Run) -> None:
            await run.reached(0.3)
            with run.fault("sigterm_under_load"):
                code = await shop.stop()
                if code != 0:
                    run.problems.append(f"draining supervisor exited {code}, expected 0")
                cut = first.events("drain_cancelled_handlers")
                if not cut:
                    run.problems.append("no handler outlived the grace period: nothing was cut")
                run.notes.append(
                    f"handlers cut at the grace period: {sum(e.get('cancelled', 0) for e in cut)}"
                )
                shop.start()

        row = await h.workload("graceful shutdown, handlers slower than grace", shop, inject)
        await _drained(shop, row)
        return row


async def deadline_while_down(h: Harness) -> Row:
    """Every worker down while the saga step deadlines (2 s) pass: each timeout is applied
    once and each compensation runs once when workers return.

    Every handler takes 0.3 s more, so a few dozen sagas are between two steps when the
    workers stop (their next command or reply waiting in a queue); their deadlines pass while
    nothing consumes, and the timeouts, already in the saga's queue when the workers return,
    beat the late replies.
    """
    env = {"LEVERET_FAULTS_STEP_TIMEOUT": "2", "LEVERET_FAULTS_SLOW": "0.3"}
    async with h.shop("deadline-down", env=env) as shop:
        shop.start()
        await shop.ready()

        async def inject(run: Run) -> None:
            await run.reached(0.3)
            with run.fault("all_workers_down"):
                await shop.stop()
                await asyncio.sleep(6)  # three deadlines pass with nobody consuming
                shop.start()

        row = await h.workload("saga deadlines pass while all workers are down", shop, inject)
        async with shop.store.transaction() as tx:
            fired = await tx.fetchall(
                "SELECT note IS NULL, COUNT(*) FROM leveret_history "
                "WHERE message_type = 'saga.order.timeout' GROUP BY note IS NULL"
            )
        counts = {bool(applied): n for applied, n in fired}
        row.notes += (
            f"; timeouts applied {counts.get(True, 0)}, stale (step already left) "
            f"{counts.get(False, 0)}"
        )
        if not counts.get(True):
            row.problems.append("no timeout was applied: the fault did not bite")
        await _drained(shop, row)
        return row


async def workers_before_broker(h: Harness) -> Row:
    """Workers start while the broker application is stopped, and serve once it is up."""
    async with h.shop("before-broker") as shop:
        try:
            shop.node.ctl("stop_app")
            started = time.monotonic()
            leveret = shop.start("--connect-timeout", "60")
            await asyncio.sleep(5)  # the workers are trying to connect meanwhile
            if leveret.process.poll() is not None:
                raise AssertionError(f"leveret run exited {leveret.process.returncode} early")
            shop.node.ctl("start_app")
        finally:
            _restore_node(shop)
        await shop.ready()
        ready_after = time.monotonic() - started
        row = await h.workload("workers started before the broker", shop, _no_faults)
        row.faults = 1
        row.recover_s = ready_after
        await _drained(shop, row)
        return row


async def compensation_transient(h: Harness) -> Row:
    """Every compensation (refund, release) fails twice, then succeeds on the redelivery."""
    env = {"LEVERET_FAULTS_COMPENSATION": "transient:2"}
    async with h.shop("compensation-transient", env=env) as shop:
        shop.start()
        await shop.ready()

        row = await h.workload("compensation failing transiently", shop, _no_faults)
        assert shop.leveret is not None
        failed = _handler_failures(shop.leveret, "CompensationFailed")
        row.faults = len(failed)
        if not failed:
            row.problems.append("no compensation failed: the fault did not fire")
        await _drained(shop, row)
        return row


async def compensation_permanent(h: Harness) -> Row:
    """Refunds of some orders fail on every attempt: their sagas end compensation_failed,
    never "compensated", and each failed refund is dead-lettered with its reason."""
    digits = "0123"
    env = {
        "LEVERET_FAULTS_COMPENSATION": f"permanent:{digits}",
        "LEVERET_FAULTS_QUICK_RETRIES": "1",
        # Three sends (waits of 1, 2 and 4 s) end them compensation_failed after 7 s, not 31.
        "LEVERET_FAULTS_COMPENSATION_ATTEMPTS": "3",
    }

    def refund_refused(order: PlaceOrder) -> bool:
        return order.address == "Atlantis" and order.order_id[-1] in digits

    def allowed(dead: tuple[str, str, str]) -> bool:
        queue, message_id, reason = dead
        order_id = message_id.removeprefix("order-").split("/", 1)[0]
        return (
            queue.endswith(".payment.payment.refund_payment")
            and order_id[-1:] in digits
            and reason == "handler_failed: CompensationFailed"
        )

    async with h.shop("compensation-permanent", env=env) as shop:
        shop.start()
        await shop.ready()

        row = await h.workload(
            "compensation failing permanently",
            shop,
            _no_faults,
            allowed_dead_letters=allowed,
            must_fail=refund_refused,
        )
        dead = [d for d in await shop.dead_letters() if allowed(d)]
        row.faults = len(dead)
        if not dead:
            row.problems.append("no refund was dead-lettered: the fault did not fire")
        await _drained(shop, row)
        return row


async def slow_handlers(h: Harness) -> Row:
    """Handlers slower than their deadline, and acks after a reconnect on a dead channel.

    Every handler takes 0.5 s more and 5% of first attempts hang 3 s — before the handler, or
    after it committed — past the 1.5 s handler deadline: the deadline cuts them, the message is
    retried, and a retry of committed work changes nothing. Meanwhile the broker closes every
    connection a few times with dozens of handlers in flight: aiormq cancels the handlers of a
    closed channel, so their nacks (and the acks of any that finished just then) land on a dead
    channel — dropped, no crash — and the broker's redeliveries are deduplicated.
    """
    closes = 3 if h.profile.name == "short" else 10
    env = {
        "LEVERET_FAULTS_HANDLER_TIMEOUT": "1.5",
        "LEVERET_FAULTS_HANG": "0.05:3",
        "LEVERET_FAULTS_SLOW": "0.5",
        "LEVERET_FAULTS_STEP_TIMEOUT": "900",  # as in graceful_shutdown
    }
    async with h.shop("slow-handlers", env=env) as shop:
        leveret = shop.start()
        await shop.ready()

        row = await h.workload(
            "handlers slower than their deadline; acks on dead channels",
            shop,
            _closing_connections(shop, closes),
        )
        hangs = Counter(
            line.split("\t", 1)[0]
            for line in (shop.directory / "faults" / "hangs.log").read_text().splitlines()
        )
        timeouts = _handler_failures(leveret, "HandlerTimeout")
        # aiormq cancels the handlers of a channel that closed: their nacks, and the acks of
        # handlers that finished just then, land on the dead channel.
        acks = leveret.events("ack_dropped_channel_closed")
        nacks = leveret.events("nack_dropped_channel_closed")
        row.faults += sum(hangs.values())
        row.notes += (
            f"; hung before the handler {hangs['before']}, after its commit {hangs['after']}; "
            f"deadlines hit {len(timeouts)}; settlements dropped on dead channels: acks "
            f"{len(acks)}, nacks {len(nacks)}"
        )
        if not (hangs["before"] and hangs["after"]):
            row.problems.append(f"the hang fault did not fire both ways: {dict(hangs)}")
        if not timeouts:
            row.problems.append("no handler ran past its deadline: the fault did not bite")
        if not (acks or nacks):
            row.problems.append("nothing was settled on a dead channel: the fault did not bite")
        await _drained(shop, row)
        return row


async def reordered(h: Harness) -> Row:
    """Replies arrive after the saga moved on, and messages overtake each other.

    20% of the saga's deliveries are sent again, with a new message id, up to 3 s later (a
    reply from an earlier step arriving after a later one: the inbox cannot catch it, the saga
    must ignore it); 20% of all deliveries are held up to 0.5 s, so events reach the read side
    out of order.
    """
    env = {"LEVERET_FAULTS_LATE": "0.2:3", "LEVERET_FAULTS_HOLD": "0.2:0.5"}
    async with h.shop("reordered", env=env) as shop:
        shop.start()
        await shop.ready()

        row = await h.workload("late and reordered replies", shop, _no_faults)
        # The late copies still in flight when the run settled are waited for, then counted.
        await asyncio.sleep(4)
        async with shop.store.transaction() as tx:
            history = await tx.fetchall(
                "SELECT saga_id, message_id, note IS NULL FROM leveret_history "
                "WHERE message_id IN (SELECT message_id FROM leveret_history WHERE message_id "
                "LIKE ?) OR message_id || ? IN (SELECT message_id FROM leveret_history)",
                f"%{LATE_SUFFIX}",
                LATE_SUFFIX,
            )
        # A message and its late copy changed the saga at most once between them: the copy
        # is ignored, or — when it overtook the original — the original is.
        applied = Counter(
            (saga, message_id.removesuffix(LATE_SUFFIX))
            for saga, message_id, changed in history
            if changed
        )
        late = [m for _, m, _ in history if m.endswith(LATE_SUFFIX)]
        overtook = sum(1 for _, m, changed in history if m.endswith(LATE_SUFFIX) and changed)
        row.faults = len(late)
        row.notes += (
            f"; late copies reached a saga {len(late)}: ignored {len(late) - overtook}, "
            f"overtook their original (then ignored) {overtook}"
        )
        twice = [key for key, n in applied.items() if n > 1]
        row.duplicate_effects += len(twice)
        row.problems += [f"{saga}: {m} and its late copy both changed it" for saga, m in twice]
        if not row.faults:
            row.problems.append("no late reply reached a saga: the fault did not fire")
        await _drained(shop, row)
        return row


async def queue_full(h: Harness) -> Row:
    """The inventory's queues are capped (``x-max-length`` 20, ``reject-publish``) and its
    workers stop mid-run: the queue fills, publishes to it are refused, the senders' breaker
    opens and the saga commands wait in the outbox; the inventory comes back, the breaker
    closes, and every order completes, none dropped."""
    env = {"LEVERET_FAULTS_INVENTORY_MAX": "20"}
    async with h.shop("queue-full", env=env) as shop:
        # The inventory first: it declares its capped queues before anyone sends to them.
        inventory = shop.start(env={"LEVERET_FAULTS_SERVICES": "inventory"})
        await until(
            lambda: all(q in shop.queues() for q in _inventory_queues(shop)),
            timeout=60,
            what="the inventory's queues",
        )
        front = shop.start(env={"LEVERET_FAULTS_SERVICES": "-inventory"})
        await shop.ready()

        async def inject(run: Run) -> None:
            nonlocal inventory
            await run.reached(0.2)
            with run.fault("inventory_down"):
                code = await shop.stop(leveret=inventory)
                if code != 0:
                    run.problems.append(f"the inventory's supervisor exited {code}, expected 0")
                try:
                    await until(
                        lambda: front.events("breaker_opened"),
                        timeout=60,
                        what="the inventory breaker to open",
                    )
                except TimeoutError as exc:
                    run.problems.append(str(exc))
                await asyncio.sleep(5)  # open, half-open probes refused, open again
                inventory = shop.start(env={"LEVERET_FAULTS_SERVICES": "inventory"})

        row = await h.workload("downstream queue full, consumer stopped", shop, inject)
        opened, closed = front.events("breaker_opened"), front.events("breaker_closed")
        nacked = [
            e
            for e in front.events("outbox_publish_failed")
            if str(e.get("error", "")).startswith("PublishNacked")
        ]
        parked = front.events("outbox_parked")
        row.notes += (
            f"; publishes refused by the full queue {len(nacked)}; breaker opened "
            f"{len(opened)} times, closed {len(closed)} times; outbox parked {len(parked)} times"
        )
        row.faults += len(opened)
        if not nacked:
            row.problems.append("no publish was refused: the queue never filled")
        if not (opened and parked):
            row.problems.append("the breaker did not open and park the outbox")
        if not closed:
            row.problems.append("the inventory breaker never closed again")
        for name, leveret in (("inventory", inventory), ("front", front)):
            code = await shop.stop(leveret=leveret)
            if code != 0:
                row.problems.append(f"the {name} supervisor exited {code} on SIGTERM, expected 0")
        return row


def _inventory_queues(shop: Shop) -> list[str]:
    return [p.queue for p in shop.model.pipelines if p.spec.service == "inventory"]


# -- repeated faults, as an operator sees them ------------------------------------------------
#
# The chaos run of issue 17: the shop on PostgreSQL while faults keep coming. Besides the
# checker's row, each reports what an operator would trip over (``Chaos``): restarts, deadlocks
# the database counted, ERROR lines per fault, how long a killed worker's slot stayed empty,
# client sends that failed, compensations the saga had to send again.

# A killed worker's replacement consumes again within this (restart backoff 0.5 s after a
# healthy run, at most 10 s after a run of crashes, plus its start).
WORKERS_BACK_BOUND = 15.0


@contextlib.asynccontextmanager
async def _database() -> AsyncIterator[tuple[str, Callable[[], Awaitable[int]]]]:
    """A PostgreSQL database of the scenario's own, dropped after: its URL, and a reader of
    the deadlocks PostgreSQL counted in it (``pg_stat_database``)."""
    import asyncpg

    base = os.environ.get("LEVERET_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
    name = f"leveret_chaos_{secrets.token_hex(4)}"
    url = urlunsplit(urlsplit(base)._replace(path="/" + name))
    admin = await asyncpg.connect(base, timeout=10)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')

        async def deadlocks() -> int:
            await admin.execute("SELECT pg_stat_clear_snapshot()")
            found = await admin.fetchval(
                "SELECT deadlocks FROM pg_stat_database WHERE datname = $1", name
            )
            return int(found or 0)

        yield url, deadlocks
    finally:
        with contextlib.suppress(OSError, asyncpg.PostgresError):
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def _error_lines(leveret: Leveret) -> int:
    """The supervisor's and its workers' lines an operator reads as errors: ERROR (or worse)
    log events, and any line that is not a log event at all (a stray traceback)."""
    count = 0
    for line in leveret.stderr.splitlines():
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError:
            count += 1
            continue
        if not isinstance(event, dict) or event.get("level") in ("error", "critical"):
            count += 1
    return count


def _workers_back(leveret: Leveret, kills: list[tuple[float, int]]) -> float | None:
    """The longest time from a worker's SIGKILL (wall time, slot) until a process in its slot
    started consuming again (its ``app_started``); None if one never did."""
    started = [
        (datetime.fromisoformat(e["timestamp"]).timestamp(), e.get("worker"))
        for e in leveret.events("app_started")
    ]
    worst = 0.0
    for killed_at, slot in kills:
        back = [t for t, worker in started if worker == slot and t > killed_at]
        if not back:
            return None
        worst = max(worst, min(back) - killed_at)
    return worst


async def _compensations_resent(shop: Shop) -> int:
    """Compensations the order saga sent again because their reply was late (each a
    transition on the saga's timeout from a compensating state to itself)."""
    async with shop.store.transaction() as tx:
        found = await tx.fetchone(
            "SELECT COUNT(*) FROM leveret_history WHERE message_type = 'saga.order.timeout'"
            " AND from_state = to_state AND to_state LIKE '%:compensating'"
        )
    return int(found[0]) if found else 0


async def _chaos(
    shop: Shop,
    row: Row,
    kills: list[tuple[float, int]],
    deadlocks: Callable[[], Awaitable[int]] | None,
) -> Chaos:
    """The operator's figures of a run whose supervisor has stopped (``row.chaos``)."""
    assert shop.leveret is not None
    chaos = row.chaos or Chaos()
    chaos.restarts = max(0, len(shop.leveret.events("worker_spawned")) - shop.workers)
    chaos.error_lines = _error_lines(shop.leveret)
    chaos.resent = await _compensations_resent(shop)
    if deadlocks is not None:
        chaos.deadlocks = await deadlocks()
        if chaos.deadlocks:
            row.problems.append(f"PostgreSQL counted {chaos.deadlocks} deadlocks")
    if kills:
        chaos.workers_back_s = _workers_back(shop.leveret, kills)
        if chaos.workers_back_s is None or chaos.workers_back_s > WORKERS_BACK_BOUND:
            row.problems.append(
                f"a killed worker's slot was empty for {_seconds(chaos.workers_back_s)}, "
                f"bound {WORKERS_BACK_BOUND:g} s"
            )
    row.chaos = chaos
    return chaos


def _seconds(value: float | None) -> str:
    return "ever" if value is None else f"{value:.1f} s"


async def repeated_kills(h: Harness) -> Row:
    """Every 2 s while orders arrive, alternately the broker closes every connection and one
    worker is SIGKILLed, on PostgreSQL: no deadlock, a killed worker's slot is back within the
    bound each time, a couple of ERROR lines per fault at most."""
    orders, rate, most = (100, 10.0, 5) if h.profile.name == "short" else (300, 300 / 36, 18)
    rng = random.Random(5)
    kills: list[tuple[float, int]] = []
    async with _database() as (db_url, deadlocks), h.shop("repeated-kills", db_url=db_url) as shop:
        shop.start()
        await shop.ready()

        async def inject(run: Run) -> None:
            for k in range(most):
                await asyncio.sleep(2)
                if len(run.confirmed) >= len(run.orders):
                    break
                if k % 2 == 0:
                    shop.node.ctl("close_all_connections", "fault injection")
                    run.instant("close_all_connections")
                    continue
                slot, pid = rng.choice(sorted(shop.worker_pids().items()))
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    kills.append((time.time(), slot))
                    run.instant("sigkill")
            await _consumers_back(shop, run, timeout=30)

        row = await h.workload(
            "connections closed and workers killed, alternately (PostgreSQL)",
            shop,
            inject,
            orders=orders,
            rate=rate,
        )
        await _drained(shop, row)
        await _chaos(shop, row, kills, deadlocks)
        return row


async def client_sends_during_closes(h: Harness) -> Row:
    """Orders sent once each by a client that trusts ``app.send`` (a 30 s deadline, no retry
    of its own) while the broker closes every connection, the client's among them, every
    1.5 s: no send fails, nothing is lost or done twice."""
    closes = 5 if h.profile.name == "short" else 20
    async with h.shop("client-sends") as shop:
        shop.start()
        await shop.ready()

        async def inject(run: Run) -> None:
            for _ in range(closes):
                await asyncio.sleep(1.5)
                if len(run.confirmed) + run.send_failures >= len(run.orders):
                    break
                shop.node.ctl("close_all_connections", "fault injection")
                run.instant("close_all_connections")
            await _consumers_back(shop, run, timeout=30)

        row = await h.workload(
            "connections closed under client sends (each sent once)",
            shop,
            inject,
            orders=closes * 20,
            rate=10.0,
            send_once=30.0,
        )
        await _drained(shop, row)
        await _chaos(shop, row, [], None)
        return row


async def burst(h: Harness) -> Row:
    """300 orders placed at once on PostgreSQL: every queue full before the workers catch up,
    compensation waits long enough that none is sent again, no deadlock, no effect twice."""
    async with _database() as (db_url, deadlocks), h.shop("burst", db_url=db_url) as shop:
        shop.start()
        await shop.ready()

        async def inject(run: Run) -> None:
            run.instant("burst")  # the fault is the load itself

        row = await h.workload(
            "300 orders placed at once (PostgreSQL)",
            shop,
            inject,
            orders=300,
            rate=1e6,
            concurrency=300,
        )
        await _drained(shop, row)
        chaos = await _chaos(shop, row, [], deadlocks)
        row.notes += f"; compensations sent again: {chaos.resent}"
        return row


# -- floods of hostile input ------------------------------------------------------------------
#
# Messages an attacker with publish rights sends below every client, thrown at the queue the
# order saga starts from while valid orders arrive on it. Each must reach the DLQ exactly once;
# no worker may restart or lose a consumer; the valid orders' sagas must all end correctly.

FloodMessage = Callable[[int], tuple[bytes, bytes]]  # index -> (body, raw Basic.Properties)


def _nested(depth: int) -> bytes:
    value = amqp_fields.long_string(b"bottom")
    for _ in range(depth):
        value = amqp_fields.table_value([(b"a", value)])
    return amqp_fields.table([(b"deep", value)])


_DEEP = _nested(2000)
_BIG = amqp_fields.table([(b"big", amqp_fields.array([amqp_fields.Field(b"V", b"")] * 120_000))])
_MAX_TIMESTAMP = amqp_fields.table([(b"when", amqp_fields.timestamp(2**64 - 1))])
_PLACE = PlaceOrder.__wire_name__.encode()


def _poison_frame(i: int) -> tuple[bytes, bytes]:
    """A timestamp of 2^64-1 (as a property or a header) or a header nested 2,000 deep."""
    common: dict[str, bytes | int] = {"message_id": b"flood-%d" % i, "type": _PLACE}
    kind = i % 3
    if kind == 0:
        props = amqp_fields.properties(**common, timestamp=2**64 - 1)
    else:
        props = amqp_fields.properties(**common, headers=_DEEP if kind == 1 else _MAX_TIMESTAMP)
    return b'{"order_id":"flood-%d"}' % i, props


def _big_header(i: int) -> tuple[bytes, bytes]:
    """A 120 KB header table (120,000 entries)."""
    props = amqp_fields.properties(message_id=b"flood-%d" % i, type=_PLACE, headers=_BIG)
    return b'{"order_id":"flood-%d"}' % i, props


def _invalid_body(i: int) -> tuple[bytes, bytes]:
    """A body that is not JSON: the worker copies it to the DLQ with its reason."""
    props = amqp_fields.properties(message_id=b"flood-%d" % i, type=_PLACE, delivery_mode=2)
    return b"not json %d" % i, props


def _p99(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def _flood(name: str, kind: str, count: int, make: FloodMessage) -> Scenario:
    async def scenario(h: Harness) -> Row:
        total = count * h.profile.flood_scale
        flood = Flood(kind=kind, messages=total)
        async with h.shop(name) as shop:
            shop.start()
            await shop.ready()
            naming = shop.model.naming
            queue = naming.handler_queue("orders", PlaceOrder.__wire_name__)
            dlq = naming.dlq(queue)
            window: list[float] = []

            async def watch() -> None:
                while True:  # the most handler queues seen at once without all their consumers
                    missing = await asyncio.to_thread(shop.consumers_missing, shop.workers)
                    flood.consumers_lost = max(flood.consumers_lost, len(missing))
                    await asyncio.sleep(0.5)

            async def inject(run: Run) -> None:
                await run.reached(0.2)
                watcher = asyncio.create_task(watch())
                try:
                    with run.fault(name):
                        window.append(time.time())
                        async with raw_channel(shop.node.url) as channel:
                            for i in range(total):
                                body, props = make(i)
                                channel.publish(
                                    exchange=naming.commands,
                                    routing_key=PlaceOrder.__wire_name__,
                                    body=body,
                                    raw_properties=props,
                                )
                                if i % 20 == 0:
                                    await channel.drain()
                        await until(
                            lambda: shop.queues().get(dlq, (0, 0, 0))[0] >= total,
                            timeout=h.profile.settle,
                            what=f"{total} flood messages in {dlq}",
                            interval=0.5,
                        )
                        window.append(time.time())
                finally:
                    watcher.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await watcher

            def flood_dead_letter(dead: tuple[str, str, str]) -> bool:
                # Rejected unread, a message keeps no property leveret could read (no id).
                return dead[0] == queue and (dead[1] == "" or dead[1].startswith("flood-"))

            row = await h.workload(
                f"flood of {kind}", shop, inject, allowed_dead_letters=flood_dead_letter
            )
            flood.dead_lettered = shop.queues().get(dlq, (0, 0, 0))[0]
            assert shop.leveret is not None
            flood.restarts = len(shop.leveret.events("worker_spawned")) - shop.workers
            if len(window) == 2:
                during: list[float] = []
                outside: list[float] = []
                for record in await row_records(shop, row):
                    took = record.updated_at - record.created_at
                    inside = window[0] <= record.created_at <= window[1]
                    (during if inside else outside).append(took)
                flood.p99_during_s, flood.p99_outside_s = _p99(during), _p99(outside)
            if flood.dead_lettered != total:
                row.problems.append(f"{flood.dead_lettered} of {total} flood messages in {dlq}")
            if flood.restarts:
                row.problems.append(f"{flood.restarts} worker restarts during the flood")
            if flood.consumers_lost:
                row.problems.append(f"{flood.consumers_lost} handler queues lost consumers")
            row.faults = total
            row.flood = flood
            await _drained(shop, row)
            return row

    scenario.__name__ = scenario.__qualname__ = name
    scenario.__doc__ = f"A flood of {count:,} (short profile) messages with {kind}."
    return scenario


async def row_records(shop: Shop, row: Row) -> list[Any]:
    """The terminal order sagas of the shop (one run per shop in the flood scenarios)."""
    found = await shop.store.list_sagas(saga="order", limit=10 * row.sagas + 100)
    return [r for r in found if r.status.terminal]


flood_poison_frames = _flood("flood_poison_frames", "undecodable frames", 300, _poison_frame)
flood_big_headers = _flood("flood_big_headers", "120 KB headers", 100, _big_header)
flood_invalid_bodies = _flood("flood_invalid_bodies", "invalid bodies", 3000, _invalid_body)


SCENARIOS: dict[str, Scenario] = {
    "baseline": baseline,
    "connections_closed": connections_closed,
    "workers_killed": workers_killed,
    "broker_restarted": broker_restarted,
    "broker_hung": broker_hung,
    "blackholed": blackholed,
    "duplicated": duplicated,
    "database_outage": database_outage,
    "graceful_shutdown": graceful_shutdown,
    "deadline_while_down": deadline_while_down,
    "workers_before_broker": workers_before_broker,
    "compensation_transient": compensation_transient,
    "compensation_permanent": compensation_permanent,
    "slow_handlers": slow_handlers,
    "reordered": reordered,
    "queue_full": queue_full,
    "repeated_kills": repeated_kills,
    "client_sends_during_closes": client_sends_during_closes,
    "burst": burst,
    "flood_poison_frames": flood_poison_frames,
    "flood_big_headers": flood_big_headers,
    "flood_invalid_bodies": flood_invalid_bodies,
}

# The scenarios the short profile runs in CI (the baseline only checks the checker).
CI_SCENARIOS = [name for name in SCENARIOS if name != "baseline"]
