"""Orders: the order saga (orchestration) and the order read side (choreography).

The saga reserves inventory, charges the payment and ships. Out of stock: nothing to undo, the
order is cancelled. Payment declined: inventory is released. Shipping failed: the payment is
refunded and inventory released. Each ending notifies the customer once.

The read side is a projection (``framework.cqrs.Projection``) of the order events and of the
inventory, payment and shipping events the saga goes through: each event is applied in one
transaction with its inbox row and logged for replay; ``GetOrder`` and ``ListOrders`` answer from
its ``orders_view`` and ``order_steps`` tables, with the saga's current step.
"""

from __future__ import annotations

from typing import Any, get_args

import msgspec

from contracts.inventory import (
    InventoryRejected,
    InventoryReleased,
    InventoryReserved,
    ReleaseInventory,
    ReserveInventory,
)
from contracts.notifications import NotifyCustomer
from contracts.orders import (
    GetOrder,
    LineItem,
    ListOrders,
    OrderCancelled,
    OrderCompleted,
    OrderList,
    OrderPlaced,
    OrderStep,
    OrderView,
    PlaceOrder,
)
from contracts.payment import (
    ChargePayment,
    PaymentCharged,
    PaymentDeclined,
    PaymentRefunded,
    RefundPayment,
)
from contracts.shipping import OrderShipped, ShipOrder, ShippingFailed
from framework import QueryContext, Service
from framework.cqrs import Projection
from framework.messages import Message
from framework.saga import RetryBackoff, Saga, StepKind
from framework.saga.definition import DEFAULT_COMPENSATION_TIMEOUT
from framework.store import Store, StoreTx

__all__ = ["ORDER_STEPS", "OrderState", "build_orders", "build_read_side", "order_saga"]


class OrderState(msgspec.Struct, frozen=True, kw_only=True):
    order_id: str
    customer_id: str
    items: list[LineItem]
    total_cents: int
    address: str
    payment_id: str | None = None


def new_order(cmd: PlaceOrder) -> OrderState:
    return OrderState(
        order_id=cmd.order_id,
        customer_id=cmd.customer_id,
        items=cmd.items,
        total_cents=sum(i.qty * i.unit_price_cents for i in cmd.items),
        address=cmd.address,
    )


def placed(s: OrderState) -> list[Message]:
    return [
        OrderPlaced(
            order_id=s.order_id,
            customer_id=s.customer_id,
            items=s.items,
            total_cents=s.total_cents,
            address=s.address,
        )
    ]


def reserve(s: OrderState) -> ReserveInventory:
    return ReserveInventory(order_id=s.order_id, items=s.items)


def release(s: OrderState) -> ReleaseInventory:
    return ReleaseInventory(order_id=s.order_id)


def charge(s: OrderState) -> ChargePayment:
    return ChargePayment(order_id=s.order_id, customer_id=s.customer_id, amount_cents=s.total_cents)


def refund(s: OrderState) -> RefundPayment:
    return RefundPayment(order_id=s.order_id, amount_cents=s.total_cents)


def ship(s: OrderState) -> ShipOrder:
    return ShipOrder(order_id=s.order_id, address=s.address)


def charged(s: OrderState, evt: PaymentCharged) -> OrderState:
    return msgspec.structs.replace(s, payment_id=evt.payment_id)


def completed(s: OrderState) -> list[Message]:
    return [
        OrderCompleted(order_id=s.order_id),
        NotifyCustomer(customer_id=s.customer_id, order_id=s.order_id, template="order_shipped"),
    ]


def cancelled(s: OrderState, reason: str) -> list[Message]:
    return [
        OrderCancelled(order_id=s.order_id, reason=reason),
        NotifyCustomer(customer_id=s.customer_id, order_id=s.order_id, template="order_cancelled"),
    ]


def order_saga(
    *,
    step_timeout: float | None = 60.0,
    ship_timeout: float | None = None,
    compensation_timeout: float | None = None,
    compensation_retry: RetryBackoff | None = None,
) -> Saga[OrderState]:
    """The order saga definition (pure: no I/O).

    ``step_timeout`` is the deadline of reserve and charge, ``ship_timeout`` the pivot's, none
    by default: the pivot has no compensation, so a shipment arriving after its deadline would
    ship an order the saga has cancelled and refunded (the fault suite saw this after a broker
    outage longer than the deadline). Its command is in the outbox and cannot be lost; it waits.
    ``compensation_timeout`` is how long a compensation waits for its reply before it is sent
    again (the saga's default when None), ``compensation_retry`` how often it is sent before
    the saga ends ``compensation_failed`` (the saga's default, 5 sends, when None).
    """
    saga = Saga(
        "order",
        state=OrderState,
        start=PlaceOrder,
        key="order_id",
        init=new_order,
        on_started=placed,
        on_completed=completed,
        on_compensated=cancelled,
        compensation_timeout=compensation_timeout or DEFAULT_COMPENSATION_TIMEOUT,
        compensation_retry=compensation_retry or RetryBackoff(),
    )
    saga.step(
        "reserve",
        send=reserve,
        success=InventoryReserved,
        failure=InventoryRejected,
        compensate=release,
        compensated=InventoryReleased,
        timeout=step_timeout,
    )
    saga.step(
        "charge",
        send=charge,
        success=PaymentCharged,
        failure=PaymentDeclined,
        compensate=refund,
        compensated=PaymentRefunded,
        on_success=charged,
        timeout=step_timeout,
    )
    saga.step(
        "ship",
        send=ship,
        success=OrderShipped,
        failure=ShippingFailed,
        kind=StepKind.PIVOT,
        timeout=ship_timeout,
    )
    return saga


ORDERS_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS orders_view (
        order_id TEXT PRIMARY KEY,
        customer_id TEXT,
        status TEXT NOT NULL,
        total_cents BIGINT,
        reason TEXT
    )""",
    # A table of its own rather than new columns of orders_view: CREATE TABLE IF NOT EXISTS
    # adds it to a database made before it existed, which ALTER TABLE could not do portably.
    """CREATE TABLE IF NOT EXISTS order_steps (
        order_id TEXT PRIMARY KEY,
        step TEXT NOT NULL,
        step_rank INTEGER NOT NULL,
        charged_cents BIGINT NOT NULL DEFAULT 0,
        refunded_cents BIGINT NOT NULL DEFAULT 0
    )""",
)

# The saga's steps in the order an order moves through them: ``OrderStep``'s values, in the
# order the contract lists them. Every path an order takes visits its steps in increasing rank
# (placed, reserved, charged, shipped; or a failure, then the compensations in the order the
# saga sends them: refund before release).
ORDER_STEPS: tuple[OrderStep, ...] = get_args(OrderStep)
_STEP_RANK = {step: rank for rank, step in enumerate(ORDER_STEPS)}


def build_orders(
    *,
    step_timeout: float | None = 60.0,
    ship_timeout: float | None = None,
    compensation_timeout: float | None = None,
    compensation_retry: RetryBackoff | None = None,
) -> Service:
    """The orders service: runs the order saga (deadlines and resends as in ``order_saga``)."""
    orders = Service(
        "orders",
        sends=[
            OrderPlaced,
            OrderCompleted,
            OrderCancelled,
            ReserveInventory,
            ReleaseInventory,
            ChargePayment,
            RefundPayment,
            ShipOrder,
            NotifyCustomer,
        ],
    )
    orders.saga(
        order_saga(
            step_timeout=step_timeout,
            ship_timeout=ship_timeout,
            compensation_timeout=compensation_timeout,
            compensation_retry=compensation_retry,
        )
    )
    return orders


def build_read_side(store: Store) -> Service:
    """The order read side: the ``orders_view`` projection answering GetOrder and ListOrders.

    It projects the order events into ``orders_view`` (customer, total, final status and
    reason) and the events of the saga's steps — inventory, payment, shipping — into
    ``order_steps`` (the step an order has reached, what was charged and refunded).

    Events of one order travel on different queues and may arrive in any order, and a resent
    command answers again under a new message id, so every applier is commutative and
    idempotent by value: it upserts only the columns it knows, ``placed`` never overwrites a
    final status, a step only ever moves to a higher rank (``ORDER_STEPS``) and amounts only
    grow. Any delivery order of the same events thus gives the same read model.
    ``leveret projections rebuild handlers.app:app orders_view`` replays it from its event log.
    """
    view = Service("order_view")
    projection = Projection(
        "orders_view",
        service=view,
        tables=("orders_view", "order_steps"),
        schema=ORDERS_SCHEMA,
    )

    async def set_status(tx: StoreTx, order_id: str, status: str, reason: str | None) -> None:
        await tx.execute(
            "INSERT INTO orders_view (order_id, status, reason) VALUES (?, ?, ?) "
            "ON CONFLICT (order_id) DO UPDATE SET status = excluded.status, "
            "reason = excluded.reason",
            order_id,
            status,
            reason,
        )

    async def advance(tx: StoreTx, order_id: str, step: OrderStep) -> None:
        await tx.execute(
            "INSERT INTO order_steps (order_id, step, step_rank) VALUES (?, ?, ?) "
            "ON CONFLICT (order_id) DO UPDATE SET step = excluded.step, "
            "step_rank = excluded.step_rank WHERE order_steps.step_rank < excluded.step_rank",
            order_id,
            step,
            _STEP_RANK[step],
        )

    async def record_charge(tx: StoreTx, order_id: str, cents: int) -> None:
        await tx.execute(
            "UPDATE order_steps SET charged_cents = ? WHERE order_id = ? AND charged_cents < ?",
            cents,
            order_id,
            cents,
        )

    async def record_refund(tx: StoreTx, order_id: str, cents: int) -> None:
        # A refund that overtook its charge answers 0 and a resent one what it refunded; events
        # come in any order, so the largest amount is the refund.
        await tx.execute(
            "UPDATE order_steps SET refunded_cents = ? WHERE order_id = ? AND refunded_cents < ?",
            cents,
            order_id,
            cents,
        )

    @projection.on
    async def on_placed(evt: OrderPlaced, tx: StoreTx) -> None:
        await tx.execute(
            "INSERT INTO orders_view (order_id, customer_id, status, total_cents) "
            "VALUES (?, ?, 'placed', ?) ON CONFLICT (order_id) DO UPDATE SET "
            "customer_id = excluded.customer_id, total_cents = excluded.total_cents",
            evt.order_id,
            evt.customer_id,
            evt.total_cents,
        )
        await advance(tx, evt.order_id, "placed")

    @projection.on
    async def on_completed(evt: OrderCompleted, tx: StoreTx) -> None:
        await set_status(tx, evt.order_id, "completed", None)
        # The saga completes only after its last step: shipped, even if that event is late.
        await advance(tx, evt.order_id, "shipped")

    @projection.on
    async def on_cancelled(evt: OrderCancelled, tx: StoreTx) -> None:
        await set_status(tx, evt.order_id, "cancelled", evt.reason)

    @projection.on
    async def on_reserved(evt: InventoryReserved, tx: StoreTx) -> None:
        await advance(tx, evt.order_id, "inventory_reserved")

    @projection.on
    async def on_rejected(evt: InventoryRejected, tx: StoreTx) -> None:
        await advance(tx, evt.order_id, "inventory_rejected")

    @projection.on
    async def on_released(evt: InventoryReleased, tx: StoreTx) -> None:
        await advance(tx, evt.order_id, "inventory_released")

    @projection.on
    async def on_charged(evt: PaymentCharged, tx: StoreTx) -> None:
        await advance(tx, evt.order_id, "payment_charged")
        await record_charge(tx, evt.order_id, evt.amount_cents)

    @projection.on
    async def on_declined(evt: PaymentDeclined, tx: StoreTx) -> None:
        await advance(tx, evt.order_id, "payment_declined")

    @projection.on
    async def on_refunded(evt: PaymentRefunded, tx: StoreTx) -> None:
        await advance(tx, evt.order_id, "payment_refunded")
        await record_refund(tx, evt.order_id, evt.amount_cents)

    @projection.on
    async def on_shipped(evt: OrderShipped, tx: StoreTx) -> None:
        await advance(tx, evt.order_id, "shipped")

    @projection.on
    async def on_shipping_failed(evt: ShippingFailed, tx: StoreTx) -> None:
        await advance(tx, evt.order_id, "shipping_failed")

    @view.query
    async def get_order(query: GetOrder, ctx: QueryContext) -> OrderView:
        async with store.transaction() as tx:
            row = await tx.fetchone(f"{_SELECT_VIEW} WHERE v.order_id = ?", query.order_id)
        if row is None:
            raise LookupError(f"no order {query.order_id}")
        return _order_view(row)

    @view.query
    async def list_orders(query: ListOrders, ctx: QueryContext) -> OrderList:
        clauses: list[str] = []
        args: list[object] = []
        if query.customer_id is not None:
            clauses.append("v.customer_id = ?")
            args.append(query.customer_id)
        if query.status is not None:
            clauses.append("v.status = ?")
            args.append(query.status)
        if query.step is not None:
            clauses.append("COALESCE(s.step, 'placed') = ?")
            args.append(query.step)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        async with store.transaction() as tx:
            rows = await tx.fetchall(
                f"{_SELECT_VIEW}{where} ORDER BY v.order_id LIMIT ?", *args, query.limit
            )
        return OrderList(orders=[_order_view(row) for row in rows])

    return view


# An order is listed once one of its own events arrived (orders_view); its steps may lag or lead.
_SELECT_VIEW = (
    "SELECT v.order_id, v.customer_id, v.status, v.total_cents, v.reason, s.step, "
    "s.charged_cents, s.refunded_cents FROM orders_view v "
    "LEFT JOIN order_steps s ON s.order_id = v.order_id"
)


def _order_view(row: tuple[Any, ...]) -> OrderView:
    return OrderView(
        order_id=row[0],
        customer_id=row[1] or "",
        status=row[2],
        total_cents=row[3] or 0,
        reason=row[4],
        step=row[5] or "placed",
        charged_cents=row[6] or 0,
        refunded_cents=row[7] or 0,
    )
