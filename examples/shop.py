"""The main job: run the reference shop, place N orders, report, and check the invariants.

    python -m examples.shop                      # in-process broker + a fresh SQLite file
    python -m examples.shop --orders 1000 --seed 7
    python -m examples.shop --gateway-outage 5       # the payment gateway fails for 5 s mid-run
    python -m examples.shop --choreography           # both order flows on the same orders
    python -m examples.shop --amqp-url amqp://guest:guest@127.0.0.1:5672/ \\
        --db-url postgresql://postgres@127.0.0.1:5432/test --workers 2

With ``--amqp-url`` (default: ``LEVERET_SHOP_URL`` when it is an ``amqp://`` URL) the services run
as ``leveret run handlers.app:app`` worker processes and this process only places the orders and
watches the database. Their queues and exchanges are named after ``--prefix`` (default:
``LEVERET_SHOP_PREFIX``, else ``shop``), which the run prints. At the end the run deletes them
(messages included: saga timeouts still waiting, dead letters) and its temporary database, also
after a failure or Ctrl-C; ``--keep`` leaves both for inspection with the ``leveret`` commands and
prints how. ``--reset`` first deletes what an earlier run with that prefix left. A prefix whose
queues have consumers is in use (another run, or workers of ``handlers.app:app``): the run
refuses it rather than share its queues, or delete them under it.

Exit status: 0 every order ended and the invariants hold; 1 an invariant broke (named); 2 a usage
or configuration error (the prefix in use, the broker refused the login); 3 the broker cannot be
reached (its URL named, password redacted). Progress is a bar on a terminal, else a line every
few seconds.

The payment service charges through an in-process fake payment gateway guarded by the
``payment-gateway`` circuit breaker. ``--gateway-outage SECONDS`` takes the gateway down (its
calls fail) once a fifth of the orders are charged: the summary then shows the breaker's
transitions, the charges deferred while it was open, and checks that every order still ended as
its contents say and that the gateway's ledger matches the payment service's.

``--choreography`` runs the same orders through the orchestrated shop (``handlers.app``) and
then through the choreographed one (``handlers.choreography``: no saga, services react to each
other's events), each on a fresh database, checks both with the same invariants, shows an order's
trail (what replaces ``leveret sagas`` there), and ends with a table comparing the two flows:
messages per order, latency, orders per second. With ``--amqp-url`` each flow runs as
``leveret run`` worker processes of its own (``handlers.app:app``, then
``handlers.choreography:app``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import contracts
from contracts.inventory import StockReceived, StockReleased, StockReserved
from contracts.orders import LineItem, ListOrders, PlaceOrder
from contracts.trail import GetOrderTrail, ListOrderTrails, OrderTrail
from framework import App, AppConfig, Command, Query, Reply
from framework.errors import BreakerOpen, BrokerUnreachable, ConfigurationError, QueryFailed
from framework.eventsourcing import EventDecoder, event_store
from framework.messages import MessageKind
from framework.middleware import Incoming, Next
from framework.observe import Handling, Observer
from framework.queues import delete_topology
from framework.resilience import BreakerEvent, StateTransition
from framework.routing import Naming
from framework.store import SagaRecord, SagaStatus, Store, StoreTx, store_from_url
from framework.urls import redact
from framework.worker import EXIT_BROKER_UNREACHABLE, EXIT_CONFIGURATION, EXIT_FAILED, EXIT_OK
from handlers.app import DEFAULT_STOCK, build_app
from handlers.choreography import build_choreography_app
from handlers.gateway import GATEWAY, FakeGateway, Outage
from handlers.inventory import Stock
from handlers.orders import ORDER_STEPS
from handlers.payment import CARD_LIMIT_CENTS
from handlers.shipping import UNSERVED

T = TypeVar("T")

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


def compensated(reason: str | None) -> str:
    """``compensated: <cause>`` for a flow that undid its steps for ``reason``."""
    for text, cause in CAUSES.items():
        if text in (reason or ""):
            return f"compensated: {cause}"
    return "compensated: other"


def outcome(record: SagaRecord) -> str:
    """How an order's saga ended: ``completed``, or ``compensated: <cause>``."""
    if record.status is SagaStatus.COMPENSATED:
        return compensated(record.reason)
    return str(record.status)


@dataclass(frozen=True, slots=True)
class Ending:
    """Where one order's flow stands, whichever flow ran it (a saga, or the choreography).

    ``outcome`` is ``completed``, ``compensated: <cause>`` or, for a saga, its other status;
    ``started`` and ``finished`` are Unix seconds (the order taken, its last change).
    """

    order_id: str
    outcome: str
    terminal: bool
    completed: bool
    reason: str | None
    started: float
    finished: float

    @classmethod
    def of_saga(cls, record: SagaRecord) -> Ending:
        """The ending of an orchestrated order: its saga's."""
        return cls(
            order_id=record.saga_id.removeprefix("order-"),
            outcome=outcome(record),
            terminal=record.status.terminal,
            completed=record.status is SagaStatus.COMPLETED,
            reason=record.reason,
            started=record.created_at,
            finished=record.updated_at,
        )

    @classmethod
    def of_flow(cls, row: Sequence[Any]) -> Ending:
        """The ending of a choreographed order: its ``order_flow`` row (order id, status,
        reason, placed at, ended at)."""
        order_id, status, reason, placed_at, ended_at = row
        return cls(
            order_id=order_id,
            outcome="completed" if status == "completed" else compensated(reason),
            terminal=status != "placed",
            completed=status == "completed",
            reason=reason,
            started=placed_at,
            finished=ended_at if ended_at is not None else placed_at,
        )


def endings(records: Sequence[SagaRecord | Ending]) -> list[Ending]:
    """Sagas and endings alike, as endings."""
    return [r if isinstance(r, Ending) else Ending.of_saga(r) for r in records]


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
        self, store: Store, orders: list[PlaceOrder], records: Sequence[SagaRecord | Ending]
    ) -> list[str]:
        """Every order ended as its contents say, and the gateway holds what payment stored."""
        problems: list[str] = []
        by_order = {e.order_id: e for e in endings(records)}
        async with store.transaction() as tx:
            charges = dict(await tx.fetchall("SELECT order_id, amount_cents FROM payment_charges"))
            refunds = dict(await tx.fetchall("SELECT order_id, amount_cents FROM payment_refunds"))
        for order in orders:
            oid = order.order_id
            ending = by_order.get(oid)
            ended = "not ended" if ending is None else ending.outcome
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


class MessageCounter(Observer):
    """Observer: the messages an app published (commands and events, by wire name; retries and
    dead letters apart) and the deliveries its handlers took (by service), queries left out."""

    def __init__(self, prefix: str) -> None:
        self.prefix = f"{prefix}."
        self.queries = {c.__wire_name__ for c in contracts.ALL if issubclass(c, Query | Reply)}
        self.commands = {c.__wire_name__ for c in contracts.ALL if issubclass(c, Command)}
        self.published: Counter[str] = Counter()
        self.resent: Counter[str] = Counter()
        self.delivered: Counter[str] = Counter()

    def publish_finished(self, state: Any, destination: str, error: BaseException | None) -> None:
        if error is not None or destination in self.queries:
            return
        if destination.startswith(self.prefix):  # a retry, a delay or a dead letter
            self.resent[destination] += 1
        else:
            self.published[destination] += 1

    def handling_started(self, handling: Handling) -> None:
        if handling.handler.kind is not MessageKind.QUERY:
            self.delivered[handling.handler.service] += 1

    def figures(self) -> dict[str, int]:
        """Messages published (commands, events), saga deadline timers, retries and deferrals,
        deliveries (to the read side, to the order trail)."""
        commands = sum(n for name, n in self.published.items() if name in self.commands)
        timers = sum(n for name, n in self.resent.items() if ".saga." in name)
        return {
            "published": sum(self.published.values()),
            "commands": commands,
            "events": sum(self.published.values()) - commands,
            "timers": timers,
            "retries": sum(self.resent.values()) - timers,
            "delivered": sum(self.delivered.values()),
            "read side": self.delivered["order_view"],
            "trail": self.delivered["order_trail"],
        }

    def snapshot(self) -> MessageCounter:
        """A copy of the counts so far."""
        copy = MessageCounter(self.prefix.removesuffix("."))
        copy.published, copy.resent = self.published.copy(), self.resent.copy()
        copy.delivered = self.delivered.copy()
        return copy


@dataclass
class Report:
    """One flow's run: how its orders ended, how fast, and what its checks found."""

    endings: list[Ending]
    seconds: float
    problems: list[str] = field(default_factory=list)
    # (status, step) -> orders of this run, as the read side answers ``ListOrders`` queries
    read_model: Counter[tuple[str, str]] = field(default_factory=Counter)
    gateway: GatewayOutage | None = None
    flow: str = "orchestrated"
    messages: MessageCounter | None = None
    trail: OrderTrail | None = None

    @property
    def unit(self) -> str:
        return "sagas" if self.flow == "orchestrated" else "orders"

    def latency_ms(self, quantile: float) -> float:
        """The ``quantile`` of the orders' latencies (taken to ended), in milliseconds."""
        latencies = sorted(e.finished - e.started for e in self.endings)
        if not latencies:
            return 0.0
        if quantile == 0.5:
            return statistics.median(latencies) * 1000
        return latencies[min(len(latencies) - 1, int(len(latencies) * quantile))] * 1000

    @property
    def rate(self) -> float:
        return len(self.endings) / self.seconds if self.seconds else 0.0

    def print(self) -> None:
        unit = self.unit
        counts = Counter(e.outcome for e in self.endings)
        print(f"\n{self.flow + ' outcome':<30} {unit:>7}")
        for ended, count in sorted(counts.items()):
            print(f"{ended:<30} {count:>7}")
        print(f"{'total':<30} {len(self.endings):>7}")
        if self.endings:
            print(
                f"\n{unit[:-1]} latency p50 {self.latency_ms(0.5):.0f} ms, "
                f"p99 {self.latency_ms(0.99):.0f} ms; {self.rate:.1f} {unit}/s "
                f"({len(self.endings)} in {self.seconds:.1f}s)"
            )
        if self.read_model:
            print(f"\n{'read model (ListOrders)':<30} {'step':<20} {'orders':>7}")
            for (status, step), count in sorted(self.read_model.items()):
                print(f"{status:<30} {step:<20} {count:>7}")
        if self.trail is not None:
            print_trail(self.trail)
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


def print_trail(trail: OrderTrail) -> None:
    """An order's trail as ``python -m handlers.choreography show`` prints it."""
    print(f"\norder trail of {trail.order_id} ({trail.status}), from the order_trail service:")
    zero = trail.entries[0].at if trail.entries else 0.0
    for entry in trail.entries:
        print(f"  {1000 * (entry.at - zero):+8.1f} ms  {entry.event:<34} {entry.detail}")


def print_comparison(orchestrated: Report, choreographed: Report) -> None:
    """The two flows side by side, on the same orders."""
    flows = (orchestrated, choreographed)
    n = len(orchestrated.endings)

    def per_order(figure: str) -> tuple[str, str]:
        def one(report: Report) -> str:
            if report.messages is None or not report.endings:
                return "n/a"
            return f"{report.messages.figures()[figure] / len(report.endings):.1f}"

        return one(orchestrated), one(choreographed)

    counted = [
        ("messages published per order", *per_order("published")),
        ("  commands", *per_order("commands")),
        ("  events", *per_order("events")),
        ("saga deadline timers per order", *per_order("timers")),
        ("retries and deferrals per order", *per_order("retries")),
        ("deliveries per order", *per_order("delivered")),
        ("  to the read side (orders_view)", *per_order("read side")),
        ("  to the order trail", *per_order("trail")),
    ]
    if orchestrated.messages is None and choreographed.messages is None:
        # Worker processes publish out of this process's sight.
        counted = [("messages per order", "n/a (workers)", "n/a (workers)")]
    rows = [
        *counted,
        ("latency p50 (ms)", *(f"{r.latency_ms(0.5):.0f}" for r in flows)),
        ("latency p99 (ms)", *(f"{r.latency_ms(0.99):.0f}" for r in flows)),
        ("orders/s (sagas/s)", *(f"{r.rate:.1f}" for r in flows)),
        ("invariants", *("hold" if not r.problems else f"{len(r.problems)} broken" for r in flows)),
        ("operator's view", "leveret sagas", "order trail"),
    ]
    print(f"\n{f'the same {n} orders':<34} {'orchestrated':>14} {'choreographed':>14}")
    for label, left, right in rows:
        print(f"{label:<34} {left:>14} {right:>14}")
    print(
        "\norchestrated: `leveret sagas list|show` reads each order's saga (state, history).\n"
        "choreographed: no saga holds an order; the order_trail service records every event of\n"
        "each order: `python -m handlers.choreography list|show` (or the GetOrderTrail and\n"
        "ListOrderTrails queries) shows an order's trail and the orders that stopped moving."
    )


async def wait_for_sagas(store: Store, run: str, n: int, deadline: float) -> list[SagaRecord]:
    """Poll until all ``n`` sagas of ``run`` are terminal, drawing a progress bar."""

    async def ended() -> list[SagaRecord]:
        records = await store.list_sagas(saga="order", limit=10 * n + 1000)
        return [r for r in records if r.saga_id.startswith(f"order-{run}") and r.status.terminal]

    return await _wait_for(ended, n, deadline, "sagas")


async def wait_for_orders(store: Store, run: str, n: int, deadline: float) -> list[Ending]:
    """Poll until all ``n`` choreographed orders of ``run`` ended (their ``order_flow`` rows),
    drawing a progress bar."""

    async def ended() -> list[Ending]:
        async with store.transaction() as tx:
            rows = await tx.fetchall(
                "SELECT order_id, status, reason, placed_at, ended_at FROM order_flow "
                "WHERE order_id LIKE ? AND status <> 'placed'",
                f"{run}-%",
            )
        return [Ending.of_flow(row) for row in rows]

    return await _wait_for(ended, n, deadline, "orders")


class OrdersNotEnded(TimeoutError):
    """Not every order ended within the deadline: the first invariant, broken."""


# A plain progress line this often when stderr is not a terminal (a pipe, a CI log).
PROGRESS_EVERY = 5.0


async def _wait_for(
    ended: Callable[[], Awaitable[list[T]]], n: int, deadline: float, unit: str
) -> list[T]:
    started = time.monotonic()
    # On a terminal a bar redrawn in place; in a pipe or a log, \r frames would pile up.
    bar = sys.stderr.isatty()
    shown, said = -1, started
    while True:
        done = await ended()
        now = time.monotonic()
        if bar and len(done) != shown:
            shown = len(done)
            width = 40
            filled = width * shown // max(n, 1)
            sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {shown}/{n} {unit}")
            sys.stderr.flush()
        elif not bar and (len(done) >= n or now - said >= PROGRESS_EVERY):
            said = now
            print(f"{len(done)}/{n} {unit} ended ({now - started:.1f}s)", file=sys.stderr)
        if len(done) >= n:
            if bar:
                sys.stderr.write("\n")
            return done
        if now - started > deadline:
            if bar:
                sys.stderr.write("\n")
            raise OrdersNotEnded(
                f"every order ends: only {len(done)} of {n} {unit} ended within {deadline:g}s"
            )
        await asyncio.sleep(0.2)


async def check_invariants(
    store: Store,
    orders: list[PlaceOrder],
    records: Sequence[SagaRecord | Ending],
    settle: float = 30.0,
) -> list[str]:
    """The shop's invariants, for either flow (``records``: the orchestrated shop's sagas, or
    ``Ending``s); retried until ``settle`` seconds pass (the read side lags)."""
    started = time.monotonic()
    ends = endings(records)
    while True:
        problems = await _invariants(store, orders, ends)
        if not problems or time.monotonic() - started > settle:
            return problems
        await asyncio.sleep(0.25)


async def _invariants(store: Store, orders: list[PlaceOrder], ends: list[Ending]) -> list[str]:
    problems: list[str] = []
    by_order = {e.order_id: e for e in ends}
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
        ending = by_order.get(oid)
        if ending is None or not ending.terminal:
            problems.append(f"{oid}: no terminal saga or order flow")
            continue
        total = sum(i.qty * i.unit_price_cents for i in order.items)
        is_shipped = oid in shipped
        if ending.completed != is_shipped:
            problems.append(f"{oid}: {ending.outcome} but shipped={is_shipped}")
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
        # The read model: the final status, the step the flow stopped at (shipped, or a failure
        # or compensation step) and what the payment service charged and refunded.
        is_completed = ending.completed
        view = views.get(oid)
        expected_status = "completed" if is_completed else "cancelled"
        if view is None or view[0] != expected_status:
            problems.append(f"{oid}: read model says {view!r}, flow {ending.outcome}")
            continue
        _, step, charged, refunded = view
        if is_completed != (step == "shipped") or step not in _FINAL_STEPS:
            problems.append(f"{oid}: read model step {step!r}, flow {ending.outcome}")
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


def flow_prefix(prefix: str, *, choreographed: bool) -> str:
    """The name prefix of one flow's run: ``prefix``, or ``<prefix>-choreography``."""
    return f"{prefix}-choreography" if choreographed else prefix


def flow_db_url(args: argparse.Namespace, workdir: Path | None, *, choreographed: bool) -> str:
    """``--db-url``, else a fresh SQLite file per flow in the run's temporary directory."""
    if args.db_url:
        return str(args.db_url)
    assert workdir is not None
    name = "shop-choreography" if choreographed else "shop"
    return f"sqlite:///{workdir}/{name}.sqlite3"


async def run_embedded(
    args: argparse.Namespace,
    run: str,
    orders: list[PlaceOrder],
    *,
    choreographed: bool = False,
    workdir: Path | None = None,
) -> Report:
    """Run the shop in this process (memory broker, a fresh SQLite file in ``workdir`` unless
    ``--db-url``): the orchestrated one, or with ``choreographed`` the choreographed one."""
    db_url = flow_db_url(args, workdir, choreographed=choreographed)
    flow = "choreographed" if choreographed else "orchestrated"
    print(
        f"shop ({flow}): {len(orders)} orders on memory:// with {redact(db_url)}", file=sys.stderr
    )
    prefix = flow_prefix(getattr(args, "prefix", "shop"), choreographed=choreographed)
    config = AppConfig(prefix=prefix)
    outage = GatewayOutage(args.gateway_outage) if args.gateway_outage else None
    counter = MessageCounter(prefix)
    if choreographed:
        app = build_choreography_app("memory://", db_url=db_url, config=config)
    elif outage is None:
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
    app.observe(counter)
    assert app.store is not None
    trail = None
    async with app:
        started = time.monotonic()
        if outage is not None:
            outage.plan(len(orders), started)
        await place(app, orders)
        if choreographed:
            ends: list[Ending] = await wait_for_orders(app.store, run, len(orders), args.deadline)
        else:
            records = await wait_for_sagas(app.store, run, len(orders), args.deadline)
            ends = endings(records)
        seconds = time.monotonic() - started
        problems = await check_invariants(app.store, orders, ends)
        # Counted now: every order ended and notified; the read side's queries are not counted.
        messages = counter.snapshot()
        view, view_problems = await read_model(app, orders, args.deadline)
        if outage is not None:
            problems += await outage.check(app.store, orders, ends)
        if choreographed:
            trail, trail_problems = await trail_of_one(app, orders, ends, args.deadline)
            problems += trail_problems
    return Report(ends, seconds, problems + view_problems, view, outage, flow, messages, trail)


async def trail_of_one(
    client: App, orders: list[PlaceOrder], ends: list[Ending], deadline: float
) -> tuple[OrderTrail | None, list[str]]:
    """The trail of an order that failed at shipping (the longest path), and what the trail
    service got wrong: an order it does not list as ended."""
    undelivered = [e.order_id for e in ends if e.outcome == "compensated: shipping failed"]
    give_up = time.monotonic() + deadline
    while True:
        # The trail trails the flow by an event or two: asked until it saw every order end.
        unfinished = await client.request(ListOrderTrails(status="placed", limit=1000))
        ids = {o.order_id for o in orders}
        stuck = [o.order_id for o in unfinished.orders if o.order_id in ids]
        if not stuck or time.monotonic() > give_up:
            break
        await asyncio.sleep(0.2)
    problems = [f"{oid}: the order trail shows it still placed" for oid in stuck]
    if not undelivered:
        return None, problems
    return await client.request(GetOrderTrail(order_id=min(undelivered))), problems


class PrefixInUse(ConfigurationError):
    """Another run's workers consume the queues of the prefix this run was given."""


class NotReady(Exception):
    """The workers did not answer within the deadline."""


class WorkersExited(Exception):
    """The ``leveret run`` supervisor ended before the shop was ready or done."""

    def __init__(self, target: str, code: int) -> None:
        super().__init__(
            f"the workers (leveret run {target}) exited with status {code} before the run "
            "ended; their log is above"
        )
        self.code = code


async def check_prefix_free(shop: App) -> None:
    """Refuse a prefix whose handler queues have consumers: sharing them would mix two runs'
    messages, and either run's end would delete the other's queues.

    Raises:
        PrefixInUse: a queue of the prefix has consumers.
    """
    for queue in shop.topology.queues:
        try:
            info = await shop.transport.queue_info(queue.name)
        except ConfigurationError:  # no such queue: nobody serves it
            continue
        if info.consumers:
            prefix = shop.naming.prefix
            raise PrefixInUse(
                f"prefix {prefix!r} is in use on {redact(shop.url)}: queue {queue.name} has "
                f"{info.consumers} consumer(s) (another shop run, or workers of the shop with "
                f"LEVERET_SHOP_PREFIX={prefix}); let it end, or give this run another --prefix"
            )


async def remove_topology(shop: App, what: str) -> None:
    """Delete ``shop``'s queues and exchanges, and say so (``what``: why)."""
    deleted = await delete_topology(shop)
    print(
        f"shop: {what} prefix {shop.naming.prefix!r} on {redact(shop.url)}: "
        f"{len(deleted.queues)} queues and {len(deleted.exchanges)} exchanges deleted",
        file=sys.stderr,
    )


def workers_app(args: argparse.Namespace, db_url: str, *, choreographed: bool) -> App:
    """The workers' app as this process sees it: never started, it names their queues and
    exchanges, and its connection checks, resets and removes them."""
    config = AppConfig(prefix=flow_prefix(args.prefix, choreographed=choreographed))
    if choreographed:
        return build_choreography_app(args.amqp_url, db_url=db_url, config=config)
    return build_app(args.amqp_url, db_url=db_url, config=config)


async def run_workers(
    args: argparse.Namespace,
    run: str,
    orders: list[PlaceOrder],
    *,
    choreographed: bool = False,
    workdir: Path | None = None,
) -> Report:
    """Run the shop as ``leveret run`` worker processes on RabbitMQ (``handlers.app:app``, or
    with ``choreographed`` ``handlers.choreography:app``); this process places the orders and
    watches the database.

    The run's prefix must be free (``check_prefix_free``); with ``--reset`` its leftovers are
    deleted first. At the end, unless ``--keep``, the workers' queues and exchanges are deleted,
    whichever way the run ends.
    """
    db_url = flow_db_url(args, workdir, choreographed=choreographed)
    flow = "choreographed" if choreographed else "orchestrated"
    prefix = flow_prefix(args.prefix, choreographed=choreographed)
    target = "handlers.choreography:app" if choreographed else "handlers.app:app"
    shop = workers_app(args, db_url, choreographed=choreographed)
    try:
        await shop.transport.connect()
        await check_prefix_free(shop)
        if args.reset:
            await remove_topology(shop, "reset")
        if not orders:  # --reset --orders 0: nothing to run
            return Report([], 0.0, flow=flow)
        print(
            f"shop ({flow}): {len(orders)} orders on {redact(args.amqp_url)}, prefix {prefix}, "
            f"with {redact(db_url)}, {args.workers} workers of {target}",
            file=sys.stderr,
        )
        try:
            return await _serve_and_check(args, run, orders, choreographed, db_url, prefix, target)
        finally:
            if not args.keep and orders:
                await remove_topology(shop, "removed")
    finally:
        await shop.transport.close()
        if shop.store is not None:
            await shop.store.close()


async def _serve_and_check(
    args: argparse.Namespace,
    run: str,
    orders: list[PlaceOrder],
    choreographed: bool,
    db_url: str,
    prefix: str,
    target: str,
) -> Report:
    flow = "choreographed" if choreographed else "orchestrated"
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
        target,
        "--workers",
        str(args.workers),
        "--amqp-url",
        args.amqp_url,
        # The schema is a deploy step; here the supervisor does it, once, before the workers.
        "--upgrade-db",
        env=env,
    )
    store = store_from_url(db_url)
    client = App([], url=args.amqp_url, config=AppConfig(prefix=prefix), contracts=contracts.ALL)
    try:
        # The supervisor upgrades the schema, the workers declare the topology: wait for both,
        # unless the workers give up first (a refused login, a broken app).
        await _unless_exited(workers, target, wait_ready(store, client, args.deadline))
        started = time.monotonic()
        await place(client, orders)
        if choreographed:
            ends: list[Ending] = await wait_for_orders(store, run, len(orders), args.deadline)
        else:
            ends = endings(await wait_for_sagas(store, run, len(orders), args.deadline))
        seconds = time.monotonic() - started
        problems = await check_invariants(store, orders, ends)
        view, view_problems = await read_model(client, orders, args.deadline)
        trail = None
        if choreographed:
            trail, trail_problems = await trail_of_one(client, orders, ends, args.deadline)
            problems += trail_problems
        return Report(ends, seconds, problems + view_problems, view, None, flow, None, trail)
    finally:
        await client.stop(grace=0)
        if workers.returncode is None:
            workers.send_signal(signal.SIGTERM)
        await workers.wait()
        await store.close()


async def _unless_exited(
    workers: asyncio.subprocess.Process, target: str, ready: Awaitable[None]
) -> None:
    """Await ``ready``, or raise ``WorkersExited`` if the workers end first."""
    waiting = asyncio.ensure_future(ready)
    exited = asyncio.ensure_future(workers.wait())
    try:
        await asyncio.wait({waiting, exited}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (waiting, exited):
            task.cancel()
        await asyncio.gather(waiting, exited, return_exceptions=True)
    if not waiting.cancelled() and waiting.exception() is None:
        return
    if exited.done() and not exited.cancelled():
        raise WorkersExited(target, exited.result())
    try:
        waiting.result()
    except (BrokerUnreachable, ConfigurationError):
        raise
    except Exception as exc:  # wait_ready's deadline passed: its last error says why
        raise NotReady(
            f"the workers (leveret run {target}) were not ready within the deadline: {exc!r}"
        ) from exc


async def wait_ready(store: Store, client: App, deadline: float) -> None:
    """Wait until the store has its tables and the read side answers a query.

    The probe is a ``ListOrders`` query, which answers (an empty list will do) once a worker
    serves it; a ``GetOrder`` of an order that does not exist would be a failed query, and the
    worker would log it as one.
    """
    started = time.monotonic()
    await client.start(consume=False)
    while True:
        try:
            await store.setup()
            async with store.transaction() as tx:
                await tx.fetchone("SELECT 1 FROM orders_view")
            # A worker answers only once it has declared the whole topology (queues, then their
            # bindings) and consumes; a queue that exists may not be bound yet. Until then this
            # raises Unroutable or QueryTimeout.
            with contextlib.suppress(QueryFailed):
                await client.request(ListOrders(limit=1), timeout=2.0)
            return
        except Exception:  # not ready yet: no tables, no queue (each driver has its own errors)
            if time.monotonic() - started > deadline:
                raise
            await asyncio.sleep(0.5)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m examples.shop",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--orders", type=int, default=300, help="orders to place (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=42)
    shop_url = os.environ.get("LEVERET_SHOP_URL", "")
    parser.add_argument(
        "--amqp-url",
        default=shop_url if shop_url.startswith(("amqp://", "amqps://")) else None,
        help="run the services as worker processes on RabbitMQ (default: LEVERET_SHOP_URL when "
        "it is an amqp:// URL, else the in-process broker)",
    )
    parser.add_argument(
        "--prefix",
        default=os.environ.get("LEVERET_SHOP_PREFIX") or "shop",
        help="the first part of every queue and exchange name (default: LEVERET_SHOP_PREFIX, "
        "else %(default)s)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="leave the run's queues, exchanges and database for inspection (default: delete "
        "them at the end)",
    )
    parser.add_argument(
        "--reset",
        action="store_true",
        help="with --amqp-url: first delete what an earlier run with this prefix left",
    )
    parser.add_argument(
        "--db-url", help="sqlite:///file.db or postgresql://... (default: a fresh SQLite file)"
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--deadline", type=float, default=300.0, help="seconds to wait for every saga to finish"
    )
    parser.add_argument(
        "--choreography",
        action="store_true",
        help="run the orders through the orchestrated shop, then through the choreographed one "
        "(handlers.choreography), and compare the two",
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
    if args.gateway_outage and args.choreography:
        parser.error("--gateway-outage runs the orchestrated shop only: drop --choreography")
    if args.db_url and args.choreography:
        parser.error(
            "--choreography runs each flow on a fresh SQLite file of its own (their services "
            "share table names): drop --db-url"
        )
    if args.reset and not args.amqp_url:
        parser.error("--reset deletes a prefix's queues on RabbitMQ: give --amqp-url too")
    if args.orders < 0 or (args.orders == 0 and not args.reset):
        parser.error("--orders: use 1 or more (--orders 0 with --reset only deletes leftovers)")
    try:
        Naming(prefix=flow_prefix(args.prefix, choreographed=True))
    except ConfigurationError as exc:
        parser.error(f"--prefix: {exc}")
    return args


async def main(argv: list[str] | None = None) -> int:
    """Run the shop as the arguments say; the exit status (see the module docstring)."""
    args = parse_args(argv)
    # The run's temporary files (its SQLite databases), removed at the end unless --keep.
    workdir = None if args.db_url else Path(tempfile.mkdtemp(prefix="leveret-shop-"))
    try:
        return await _main(args, workdir)
    except ConfigurationError as exc:  # before BrokerUnreachable: a refused login is both
        print(f"shop: {exc}", file=sys.stderr)
        return EXIT_CONFIGURATION
    except BrokerUnreachable as exc:
        print(f"shop: {exc}", file=sys.stderr)
        return EXIT_BROKER_UNREACHABLE
    except WorkersExited as exc:
        print(f"shop: {exc}", file=sys.stderr)
        passed_on = (EXIT_CONFIGURATION, EXIT_BROKER_UNREACHABLE)
        return exc.code if exc.code in passed_on else EXIT_FAILED
    except OrdersNotEnded as exc:
        print(f"shop: invariant broken: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except NotReady as exc:
        print(f"shop: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if args.keep:
            print_kept(args, workdir)
        elif workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


def print_kept(args: argparse.Namespace, workdir: Path | None) -> None:
    """How to look at what ``--keep`` left, and how to remove it."""
    db_url = flow_db_url(args, workdir, choreographed=False)
    lines = ["shop: kept for inspection (--keep):"]
    if args.amqp_url:
        lines += [
            f"  export LEVERET_SHOP_URL='{redact(args.amqp_url)}'  # the password as you gave it",
            f"  export LEVERET_SHOP_PREFIX={args.prefix} LEVERET_SHOP_DB_URL={db_url}",
            "  .venv/bin/leveret status handlers.app:app",
            "  .venv/bin/leveret sagas list handlers.app:app",
            "then remove the queues and exchanges: python -m examples.shop --reset --orders 0",
        ]
    else:
        lines.append(f"  export LEVERET_SHOP_DB_URL={db_url}")
    if workdir is not None:
        lines.append(f"and the database: rm -r {workdir}")
    print("\n".join(lines), file=sys.stderr)


async def _main(args: argparse.Namespace, workdir: Path | None) -> int:
    run = f"r{uuid.uuid4().hex[:6]}"
    orders = make_orders(run, args.orders, args.seed)
    runner = run_workers if args.amqp_url else run_embedded
    if not orders:  # --reset --orders 0: delete the prefix's leftovers, run nothing
        for choreographed in (False, True) if args.choreography else (False,):
            await runner(args, run, orders, choreographed=choreographed, workdir=workdir)
        return EXIT_OK
    reports = [await runner(args, run, orders, workdir=workdir)]
    reports[0].print()
    if args.choreography:
        reports.append(await runner(args, run, orders, choreographed=True, workdir=workdir))
        reports[1].print()
        print_comparison(*reports)
    problems = [p for report in reports for p in report.problems]
    if not problems:
        return EXIT_OK
    more = f" (and {len(problems) - 1} more, listed above)" if len(problems) > 1 else ""
    print(f"shop: invariant broken: {problems[0]}{more}", file=sys.stderr)
    return EXIT_FAILED


async def _main_until_sigterm() -> int:
    """``main()``, with SIGTERM cancelling it as Ctrl-C does, so that the run cleans up."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await main()
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def cli() -> None:
    from framework.logging import configure_logging

    configure_logging(level=os.environ.get("LEVERET_LOG_LEVEL", "warning"))
    # Interrupted, main() cleans up on its way out; the status is the shell's for the signal.
    try:
        code = asyncio.run(_main_until_sigterm())
    except KeyboardInterrupt:
        print("shop: interrupted", file=sys.stderr)
        code = 128 + signal.SIGINT
    except asyncio.CancelledError:
        print("shop: terminated", file=sys.stderr)
        code = 128 + signal.SIGTERM
    raise SystemExit(code)


if __name__ == "__main__":
    cli()
