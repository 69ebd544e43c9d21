"""The main job: run the reference shop, place N orders, report, and check the invariants.

    python -m examples.shop                      # in-process broker + a fresh SQLite file
    python -m examples.shop --orders 1000 --seed 7
    python -m examples.shop --gateway-outage 5       # the payment gateway fails for 5 s mid-run
    python -m examples.shop --amqp-url amqp://guest:guest@127.0.0.1:5672/ \\
        --db-url postgresql://postgres@127.0.0.1:5432/test --workers 2

With ``--amqp-url`` the services run as ``leveret run handlers.app:app`` worker processes and this
process only places the orders and watches the database. Exit status 1 if an invariant fails.

The payment service charges through an in-process fake payment gateway guarded by the
``payment-gateway`` circuit breaker. ``--gateway-outage SECONDS`` takes the gateway down (its
calls fail) once a fifth of the orders are charged: the summary then shows the breaker's
transitions, the charges deferred while it was open, and checks that every order still ended as
its contents say and that the gateway's ledger matches the payment service's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from contracts.inventory import StockReceived, StockReleased, StockReserved
from contracts.orders import GetOrder, LineItem, ListOrders, PlaceOrder
from framework import App, AppConfig
from framework.errors import BreakerOpen, QueryFailed
from framework.eventsourcing import EventDecoder, event_store
from framework.middleware import Incoming, Next
from framework.resilience import BreakerEvent, StateTransition
from framework.store import SagaRecord, SagaStatus, Store, StoreTx, store_from_url
from framework.urls import redact
from handlers.app import DEFAULT_STOCK, build_app
from handlers.gateway import GATEWAY, FakeGateway, Outage
from handlers.inventory import Stock
from handlers.orders import ORDER_STEPS
from handlers.payment import CARD_LIMIT_CENTS
from handlers.shipping import UNSERVED

_stock_decoder = EventDecoder([StockReceived, StockReserved, StockReleased])

# Where an ended saga can have stopped: shipped, a failure, or a compensation.
_FINAL_STEPS = frozenset(ORDER_STEPS[ORDER_STEPS.index("shipped") :])

CAUSES = {
    "out of stock": "stock-out",
    "card declined": "card declined",
    "no delivery": "shipping failed",
}


def make_orders(run: str, n: int, seed: int) -> list[PlaceOrder]:
    """``n`` orders: ~10% stock-outs, ~10% declined cards, ~10% shipping failures."""
    rng = random.Random(seed)
    orders = []
    for i in range(n):
        roll = rng.random()
        items = [
            LineItem(
                sku=rng.choice(["apple", "pear", "plum"]),
                qty=rng.randint(1, 5),
                unit_price_cents=rng.choice([99, 250, 499, 1299]),
            )
        ]
        address = f"{rng.randint(1, 999)} Main St"
        if roll < 0.10:
            items.append(LineItem(sku="discontinued", qty=1, unit_price_cents=999))
        elif roll < 0.20:
            items = [LineItem(sku="plum", qty=100, unit_price_cents=5_000)]  # over the card limit
        elif roll < 0.30:
            address = "Atlantis"
        orders.append(
            PlaceOrder(
                order_id=f"{run}-{i:05d}",
                customer_id=f"cust-{i % 97}",
                items=items,
                address=address,
            )
        )
    return orders


def outcome(record: SagaRecord) -> str:
    """How an order's saga ended: ``completed``, or ``compensated: <cause>``."""
    if record.status is SagaStatus.COMPENSATED:
        for text, cause in CAUSES.items():
            if text in (record.reason or ""):
                return f"compensated: {cause}"
        return "compensated: other"
    return str(record.status)


def expected_outcome(order: PlaceOrder) -> str:
    """The outcome an order's contents call for (``build_app``'s stock and card limit)."""
    if any(DEFAULT_STOCK.get(item.sku, 0) < item.qty for item in order.items):
        return "compensated: stock-out"
    if sum(i.qty * i.unit_price_cents for i in order.items) > CARD_LIMIT_CENTS:
        return "compensated: card declined"
    if order.address in UNSERVED:
        return "compensated: shipping failed"
    return "completed"


class TroubleCounter:
    """Consume middleware: per handler, the deliveries a breaker refused (and so deferred), the
    messages among them, and the deliveries that failed (and so were retried)."""

    def __init__(self) -> None:
        self.refused: Counter[str] = Counter()
        self.deferred: dict[str, set[str]] = defaultdict(set)
        self.failed: Counter[str] = Counter()

    async def __call__(self, msg: Incoming, call_next: Next) -> Any:
        try:
            return await call_next(msg)
        except BreakerOpen:
            self.refused[msg.handler.name] += 1
            self.deferred[msg.handler.name].add(msg.context.message_id)
            raise
        except Exception:
            self.failed[msg.handler.name] += 1
            raise


@dataclass
class GatewayOutage:
    """A payment gateway outage in the middle of a run, and what the shop made of it."""

    seconds: float
    gateway: FakeGateway = field(default_factory=FakeGateway)
    trouble: TroubleCounter = field(default_factory=TroubleCounter)
    transitions: list[StateTransition] = field(default_factory=list)
    zero: float = 0.0  # the run's start, on the gateway's (and the breaker's) clock

    def plan(self, orders: int, zero: float) -> None:
        """Take the gateway down once it has charged a fifth of ``orders``."""
        self.zero = zero
        self.gateway.fail_for(self.seconds, after_charges=max(1, orders // 5))

    @property
    def window(self) -> Outage | None:
        """The outage, once it started."""
        return self.gateway.outages[0] if self.gateway.outages else None

    def heard(self, event: BreakerEvent) -> None:
        """Breaker listener: keep the gateway breaker's transitions."""
        if isinstance(event, StateTransition):
            self.transitions.append(event)

    async def check(
        self, store: Store, orders: list[PlaceOrder], records: list[SagaRecord]
    ) -> list[str]:
        """Every order ended as its contents say, and the gateway holds what payment stored."""
        problems: list[str] = []
        by_order = {r.saga_id.removeprefix("order-"): r for r in records}
        async with store.transaction() as tx:
            charges = dict(await tx.fetchall("SELECT order_id, amount_cents FROM payment_charges"))
            refunds = dict(await tx.fetchall("SELECT order_id, amount_cents FROM payment_refunds"))
        for order in orders:
            oid = order.order_id
            record = by_order.get(oid)
            ended = "not ended" if record is None else outcome(record)
            expected = expected_outcome(order)
            if ended != expected:
                problems.append(f"{oid}: {ended}, expected {expected}")
            stored = charges.get(oid, 0) - refunds.get(oid, 0)
            if self.gateway.net_cents(oid) != stored:
                problems.append(
                    f"{oid}: the gateway holds {self.gateway.net_cents(oid)} cents, payment "
                    f"stored charges - refunds = {stored}"
                )
        return problems

    def print(self) -> None:
        window = self.window
        if window is None:
            print("\npayment gateway: the run ended before the outage was due")
            return
        how = "calls hanging" if window.hang else "calls failing"
        print(
            f"\npayment gateway down {self.seconds:g}s ({how}) from "
            f"+{window.start - self.zero:.2f}s to +{window.end - self.zero:.2f}s; "
            f"breaker {GATEWAY}:"
        )
        for event in self.transitions:
            stays = f", stays open {event.wait:.1f}s" if event.wait is not None else ""
            change = f"{event.from_state} -> {event.to_state}"
            print(f"  {event.at - self.zero:+7.2f}s  {change:<22} {event.reason}{stays}")
        calls = self.gateway.calls
        print(f"\n{'payment commands':<30} {'charge':>7} {'refund':>7}")
        trouble = self.trouble
        deferred = Counter({name: len(ids) for name, ids in trouble.deferred.items()})
        rows = [
            ("done at the gateway", calls["charge"], calls["refund"]),
            ("deferred (breaker open)", *self._by_handler(deferred)),
            ("  times refused, each 1 s", *self._by_handler(trouble.refused)),
            ("failed at the gateway, retried", *self._by_handler(trouble.failed)),
        ]
        for label, charge, refund in rows:
            print(f"{label:<30} {charge:>7} {refund:>7}")

    @staticmethod
    def _by_handler(counts: Counter[str]) -> tuple[int, int]:
        return counts["payment.charge"], counts["payment.refund"]


@dataclass
class Report:
    records: list[SagaRecord]
    seconds: float
    problems: list[str] = field(default_factory=list)
    # (status, step) -> orders of this run, as the read side answers ``ListOrders`` queries
    read_model: Counter[tuple[str, str]] = field(default_factory=Counter)
    gateway: GatewayOutage | None = None

    def print(self) -> None:
        counts = Counter(outcome(r) for r in self.records)
        latencies = sorted(r.updated_at - r.created_at for r in self.records)
        print(f"\n{'outcome':<30} {'sagas':>7}")
        for ended, count in sorted(counts.items()):
            print(f"{ended:<30} {count:>7}")
        print(f"{'total':<30} {len(self.records):>7}")
        if latencies:
            p50 = statistics.median(latencies) * 1000
            p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000
            print(
                f"\nsaga latency p50 {p50:.0f} ms, p99 {p99:.0f} ms; "
                f"{len(self.records) / self.seconds:.1f} sagas/s "
                f"({len(self.records)} in {self.seconds:.1f}s)"
            )
        if self.read_model:
            print(f"\n{'read model (ListOrders)':<30} {'step':<20} {'orders':>7}")
            for (status, step), count in sorted(self.read_model.items()):
                print(f"{status:<30} {step:<20} {count:>7}")
        if self.gateway is not None:
            self.gateway.print()
        if self.problems:
            print(f"\nINVARIANTS BROKEN ({len(self.problems)}):")
            for problem in self.problems[:50]:
                print(f"  - {problem}")
        else:
            print(
                "\ninvariants hold: one terminal state per order; charges - refunds = amount if "
                "shipped else 0; reserved - released = shipped quantity; one final notification "
                "per order"
            )
            if self.gateway is not None:
                print(
                    "and through the outage: every order ended as its contents say; the "
                    "gateway holds charges - refunds of every order"
                )


async def wait_for_sagas(store: Store, run: str, n: int, deadline: float) -> list[SagaRecord]:
    """Poll until all ``n`` sagas of ``run`` are terminal, drawing a progress bar."""
    started = time.monotonic()
    done: list[SagaRecord] = []
    shown = -1
    while True:
        records = [
            r
            for r in await store.list_sagas(saga="order", limit=10 * n + 1000)
            if r.saga_id.startswith(f"order-{run}")
        ]
        done = [r for r in records if r.status.terminal]
        if len(done) != shown:
            shown = len(done)
            width = 40
            filled = width * shown // max(n, 1)
            sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {shown}/{n} sagas")
            sys.stderr.flush()
        if len(done) >= n:
            sys.stderr.write("\n")
            return done
        if time.monotonic() - started > deadline:
            sys.stderr.write("\n")
            raise TimeoutError(f"only {len(done)} of {n} sagas finished within {deadline:.0f}s")
        await asyncio.sleep(0.2)


async def check_invariants(
    store: Store, orders: list[PlaceOrder], records: list[SagaRecord], settle: float = 30.0
) -> list[str]:
    """The shop's invariants; retried until ``settle`` seconds pass (the read side lags)."""
    started = time.monotonic()
    while True:
        problems = await _invariants(store, orders, records)
        if not problems or time.monotonic() - started > settle:
            return problems
        await asyncio.sleep(0.25)


async def _invariants(
    store: Store, orders: list[PlaceOrder], records: list[SagaRecord]
) -> list[str]:
    problems: list[str] = []
    by_order = {r.saga_id.removeprefix("order-"): r for r in records}
    async with store.transaction() as tx:
        charges = dict(await tx.fetchall("SELECT order_id, amount_cents FROM payment_charges"))
        refunds = dict(await tx.fetchall("SELECT order_id, amount_cents FROM payment_refunds"))
        shipped = {r[0] for r in await tx.fetchall("SELECT order_id FROM shipping_shipments")}
        moves, stock_problems = await _stock_movements(tx)
        problems.extend(stock_problems)
        finals = Counter(
            r[0]
            for r in await tx.fetchall(
                "SELECT order_id FROM notifications_sent "
                "WHERE template IN ('order_shipped', 'order_cancelled')"
            )
        )
        views = {
            row[0]: tuple(row[1:])
            for row in await tx.fetchall(
                "SELECT v.order_id, v.status, s.step, s.charged_cents, s.refunded_cents "
                "FROM orders_view v LEFT JOIN order_steps s ON s.order_id = v.order_id"
            )
        }
    for order in orders:
        oid = order.order_id
        record = by_order.get(oid)
        if record is None or not record.status.terminal:
            problems.append(f"{oid}: no terminal saga")
            continue
        total = sum(i.qty * i.unit_price_cents for i in order.items)
        is_shipped = oid in shipped
        if (record.status is SagaStatus.COMPLETED) != is_shipped:
            problems.append(f"{oid}: saga {record.status} but shipped={is_shipped}")
        net = charges.get(oid, 0) - refunds.get(oid, 0)
        if net != (total if is_shipped else 0):
            problems.append(
                f"{oid}: charges - refunds = {net}, expected {total if is_shipped else 0}"
            )
        held = moves[(oid, "reserve")] - moves[(oid, "release")]
        quantity = sum(i.qty for i in order.items)
        if held != (quantity if is_shipped else 0):
            problems.append(
                f"{oid}: reserved - released = {held}, expected {quantity if is_shipped else 0}"
            )
        if finals[oid] != 1:
            problems.append(f"{oid}: {finals[oid]} final notifications, expected 1")
        # The read model: the final status, the step the saga stopped at (shipped, or a failure
        # or compensation step) and what the payment service charged and refunded.
        is_completed = record.status is SagaStatus.COMPLETED
        view = views.get(oid)
        expected_status = "completed" if is_completed else "cancelled"
        if view is None or view[0] != expected_status:
            problems.append(f"{oid}: read model says {view!r}, saga {record.status}")
            continue
        _, step, charged, refunded = view
        if is_completed != (step == "shipped") or step not in _FINAL_STEPS:
            problems.append(f"{oid}: read model step {step!r}, saga {record.status}")
        if (charged, refunded) != (charges.get(oid, 0), refunds.get(oid, 0)):
            problems.append(
                f"{oid}: read model charged {charged} refunded {refunded}, payment "
                f"{charges.get(oid, 0)} and {refunds.get(oid, 0)}"
            )
    return problems


async def _stock_movements(tx: StoreTx) -> tuple[Counter[tuple[str, str]], list[str]]:
    """Quantity reserved and released per order, read from the inventory's event store.

    Reads every event in global order and replays each SKU's stream: its versions must run
    1, 2, 3... and its stock never go below zero.
    """
    moves: Counter[tuple[str, str]] = Counter()
    problems: list[str] = []
    on_hand: Counter[str] = Counter()
    versions: Counter[str] = Counter()
    store = event_store(tx)
    position = 0
    while batch := await store.read_all(tx, from_position=position, limit=1000):
        for stored in batch:
            position = stored.position
            if not stored.stream.startswith(f"{Stock.category}-"):
                continue
            versions[stored.stream] += 1
            if stored.version != versions[stored.stream]:
                problems.append(f"{stored.stream}: version {stored.version} out of sequence")
            event = _stock_decoder.decode(stored)
            if isinstance(event, StockReceived):
                on_hand[event.sku] += event.qty
            elif isinstance(event, StockReserved):
                on_hand[event.sku] -= event.qty
                moves[(event.order_id, "reserve")] += event.qty
            elif isinstance(event, StockReleased):
                on_hand[event.sku] += event.qty
                moves[(event.order_id, "release")] += event.qty
            if on_hand[stored.stream.removeprefix(f"{Stock.category}-")] < 0:
                problems.append(f"{stored.stream}: stock below zero at version {stored.version}")
    return moves, problems


async def read_model(
    client: App, orders: list[PlaceOrder], deadline: float
) -> tuple[Counter[tuple[str, str]], list[str]]:
    """The run's orders by final status and step, asked of the read side with ``ListOrders``.

    The projection trails the sagas by a few events, so this asks again until every order of the
    run is in a final status (or the deadline passes: a problem, named).
    """
    ids = {o.order_id for o in orders}
    give_up = time.monotonic() + deadline
    while True:
        counts: Counter[tuple[str, str]] = Counter()
        capped = False
        for status in ("completed", "cancelled"):
            for step in sorted(_FINAL_STEPS):
                listed = await client.request(
                    ListOrders(status=status, step=step, limit=1000), timeout=10.0
                )
                capped |= len(listed.orders) == 1000
                counts[(status, step)] += sum(1 for o in listed.orders if o.order_id in ids)
        counts = +counts  # without the (status, step) pairs no order of the run is in
        if capped:
            return counts, []  # past 1,000 orders per row the summary shows the first 1,000
        if sum(counts.values()) == len(ids):
            return counts, []
        if time.monotonic() > give_up:
            missing = len(ids) - sum(counts.values())
            return counts, [f"read model: {missing} order(s) not final in ListOrders answers"]
        await asyncio.sleep(0.2)


async def place(app: App, orders: list[PlaceOrder], concurrency: int = 50) -> None:
    for start in range(0, len(orders), concurrency):
        await asyncio.gather(*(app.send(o) for o in orders[start : start + concurrency]))


async def run_embedded(args: argparse.Namespace, run: str, orders: list[PlaceOrder]) -> Report:
    db_url = args.db_url or f"sqlite:///{tempfile.mkdtemp(prefix='leveret-shop-')}/shop.sqlite3"
    print(f"shop: {len(orders)} orders on memory:// with {redact(db_url)}", file=sys.stderr)
    config = AppConfig(prefix="shop")
    outage = GatewayOutage(args.gateway_outage) if args.gateway_outage else None
    if outage is None:
        app = build_app("memory://", db_url=db_url, config=config)
    else:
        app = build_app(
            "memory://",
            db_url=db_url,
            config=config,
            gateway=outage.gateway,
            middleware=[outage.trouble],
        )
        assert app.breakers is not None
        app.breakers[GATEWAY].subscribe(outage.heard, transitions_only=True)
    assert app.store is not None
    async with app:
        started = time.monotonic()
        if outage is not None:
            outage.plan(len(orders), started)
        await place(app, orders)
        records = await wait_for_sagas(app.store, run, len(orders), args.deadline)
        seconds = time.monotonic() - started
        problems = await check_invariants(app.store, orders, records)
        view, view_problems = await read_model(app, orders, args.deadline)
        if outage is not None:
            problems += await outage.check(app.store, orders, records)
    return Report(records, seconds, problems + view_problems, view, outage)


async def run_workers(args: argparse.Namespace, run: str, orders: list[PlaceOrder]) -> Report:
    db_url = args.db_url or f"sqlite:///{tempfile.mkdtemp(prefix='leveret-shop-')}/shop.sqlite3"
    prefix = f"shop-{run}"
    print(
        f"shop: {len(orders)} orders on {redact(args.amqp_url)} with {redact(db_url)}, "
        f"{args.workers} workers",
        file=sys.stderr,
    )
    env = {
        **os.environ,
        "LEVERET_SHOP_URL": "memory://",
        "LEVERET_SHOP_DB_URL": db_url,
        "LEVERET_SHOP_PREFIX": prefix,
        "LEVERET_LOG_LEVEL": os.environ.get("LEVERET_LOG_LEVEL", "warning"),
    }
    workers = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "framework",
        "run",
        "handlers.app:app",
        "--workers",
        str(args.workers),
        "--amqp-url",
        args.amqp_url,
        # The schema is a deploy step; here the supervisor does it, once, before the workers.
        "--upgrade-db",
        env=env,
    )
    store = store_from_url(db_url)
    client = App([], url=args.amqp_url, config=AppConfig(prefix=prefix))
    try:
        # The supervisor upgrades the schema, the workers declare the topology: wait for both.
        await wait_ready(store, client, args.deadline)
        started = time.monotonic()
        await place(client, orders)
        records = await wait_for_sagas(store, run, len(orders), args.deadline)
        seconds = time.monotonic() - started
        problems = await check_invariants(store, orders, records)
        view, view_problems = await read_model(client, orders, args.deadline)
        return Report(records, seconds, problems + view_problems, view)
    finally:
        await client.stop(grace=0)
        if workers.returncode is None:
            workers.send_signal(signal.SIGTERM)
            await workers.wait()
        await store.close()


async def wait_ready(store: Store, client: App, deadline: float) -> None:
    started = time.monotonic()
    await client.start(consume=False)
    while True:
        try:
            await store.setup()
            async with store.transaction() as tx:
                await tx.fetchone("SELECT 1 FROM orders_view")
            # A worker answers only once it has declared the whole topology (queues, then their
            # bindings) and consumes; a queue that exists may not be bound yet. Until then this
            # raises Unroutable or QueryTimeout; an answer, even "no such order", means ready.
            with contextlib.suppress(QueryFailed):
                await client.request(GetOrder(order_id="readiness-probe"), timeout=2.0)
            return
        except Exception:  # not ready yet: no tables, no queue (each driver has its own errors)
            if time.monotonic() - started > deadline:
                raise
            await asyncio.sleep(0.5)


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.shop", description=__doc__)
    parser.add_argument("--orders", type=int, default=300)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--amqp-url", help="run the services as worker processes on RabbitMQ")
    parser.add_argument(
        "--db-url", help="sqlite:///file.db or postgresql://... (default: a fresh SQLite file)"
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--deadline", type=float, default=300.0, help="seconds to wait for every saga to finish"
    )
    parser.add_argument(
        "--gateway-outage",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="take the payment gateway down for SECONDS once a fifth of the orders are charged",
    )
    args = parser.parse_args(argv)
    if args.gateway_outage < 0:
        parser.error("--gateway-outage: use seconds >= 0")
    if args.gateway_outage and args.amqp_url:
        parser.error(
            "--gateway-outage runs on the in-process broker only: with --amqp-url each worker "
            "process has a fake gateway of its own, out of this process's reach"
        )
    run = f"r{uuid.uuid4().hex[:6]}"
    orders = make_orders(run, args.orders, args.seed)
    runner = run_workers if args.amqp_url else run_embedded
    report = await runner(args, run, orders)
    report.print()
    return 1 if report.problems else 0


def cli() -> None:
    from framework.logging import configure_logging

    configure_logging(level=os.environ.get("LEVERET_LOG_LEVEL", "warning"))
    raise SystemExit(asyncio.run(main()))


if __name__ == "__main__":
    cli()
