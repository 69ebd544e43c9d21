"""Every command the shop handles, sent twice and redelivered once: one effect, the same replies.

A redelivery keeps its message id (the inbox drops it); a duplicate command is a second command
with a new message id and the same business key, as when the saga resends a compensation whose
reply was late. Each test sends its command under two message ids and once more under the first,
all at once, then checks that the effect (stock, money, shipments, notifications, sagas) happened
once, that each of the two commands got the reply the first one got, and that no delivery
failed on the way (a handler that only gets through on a retry is not idempotent).
"""

from __future__ import annotations

import asyncio

from contracts.inventory import (
    InventoryReleased,
    InventoryReserved,
    ReleaseInventory,
    ReserveInventory,
)
from contracts.notifications import CustomerNotified, NotifyCustomer
from contracts.orders import LineItem, PlaceOrder
from contracts.payment import (
    ChargePayment,
    PaymentCharged,
    PaymentDeclined,
    PaymentRefunded,
    RefundPayment,
)
from contracts.shipping import OrderShipped, ShipOrder, ShippingFailed
from examples.shop import check_invariants
from framework.store import SagaStatus, Store
from handlers.inventory import Reservation, Stock
from tests.handlers.conftest import CARD_LIMIT, STOCK, Rig, Services
from tests.saga.conftest import eventually, saga_of

ITEMS = [
    LineItem(sku="apple", qty=3, unit_price_cents=100),
    LineItem(sku="pear", qty=1, unit_price_cents=400),
]


async def stock(store: Store) -> dict[str, tuple[int, int]]:
    """Each SKU's stock on hand and the number of events in its stream."""
    async with store.transaction() as tx:
        loaded = [await Stock.load(tx, sku, lock=False) for sku in STOCK]
    return {item.id: (item.on_hand, item.version) for item in loaded}


async def money(services: Services, order_id: str) -> tuple[int, int, list[str]]:
    """What the order was charged and refunded, and the payment ids of its charges."""
    charges = await services.rows(
        "SELECT amount_cents, payment_id FROM payment_charges WHERE order_id = ?", order_id
    )
    refunds = await services.rows(
        "SELECT amount_cents FROM payment_refunds WHERE order_id = ?", order_id
    )
    ids = [payment_id for _, payment_id in charges if payment_id]
    return sum(r[0] for r in charges), sum(r[0] for r in refunds), ids


async def test_reserve_and_release_twice_hold_and_give_back_the_stock_once(rig: Rig) -> None:
    """Two ReserveInventory hold the stock once and both answer InventoryReserved; two
    ReleaseInventory give it back once and both answer InventoryReleased."""
    shop = await rig.services()
    await shop.twice(ReserveInventory(order_id="o-1", items=ITEMS), "reserve")
    assert shop.probe.of("o-1") == [InventoryReserved(order_id="o-1", items=ITEMS)] * 2
    # Each stream: received, then reserved once.
    assert await stock(shop.store) == {"apple": (7, 2), "pear": (4, 2)}

    await shop.twice(ReleaseInventory(order_id="o-1"), "release")
    assert shop.probe.of("o-1")[2:] == [InventoryReleased(order_id="o-1")] * 2
    assert await stock(shop.store) == {"apple": (10, 3), "pear": (5, 3)}
    async with shop.store.transaction() as tx:
        reservation = await Reservation.load(tx, "o-1", lock=False)
    assert (reservation.status, reservation.version) == ("released", 2)
    assert shop.ledger.failures == []


async def test_charge_and_refund_twice_move_the_money_once(rig: Rig) -> None:
    """Two ChargePayment charge once and both answer PaymentCharged; two RefundPayment refund
    once and both answer PaymentRefunded with the amount refunded, not 0 the second time. The
    gateway is called once for each: the copies find the stored row."""
    shop = await rig.services()
    await shop.twice(ChargePayment(order_id="o-2", customer_id="c-2", amount_cents=700), "charge")
    charged = PaymentCharged(order_id="o-2", amount_cents=700, payment_id="pay-o-2")
    assert shop.probe.of("o-2") == [charged] * 2

    await shop.twice(RefundPayment(order_id="o-2", amount_cents=700), "refund")
    assert shop.probe.of("o-2")[2:] == [PaymentRefunded(order_id="o-2", amount_cents=700)] * 2
    assert await money(shop, "o-2") == (700, 700, ["pay-o-2"])
    assert shop.gateway.calls == {"charge": 1, "refund": 1}
    assert shop.gateway.refunded == {"pay-o-2": 700}
    assert shop.ledger.failures == []


async def test_refund_before_its_charge_twice_then_the_charge_twice_takes_nothing(
    rig: Rig,
) -> None:
    """Two refunds that overtake their charge both answer a refund of 0; the two late charges
    are both declined and take no money. Two charges over the limit are both declined."""
    shop = await rig.services()
    await shop.twice(RefundPayment(order_id="o-3", amount_cents=700), "refund")
    assert shop.probe.of("o-3") == [PaymentRefunded(order_id="o-3", amount_cents=0)] * 2

    await shop.twice(ChargePayment(order_id="o-3", customer_id="c-3", amount_cents=700), "charge")
    cancelled = PaymentDeclined(order_id="o-3", reason="cancelled: refunded already")
    assert shop.probe.of("o-3")[2:] == [cancelled] * 2
    assert await money(shop, "o-3") == (0, 0, [])

    over = ChargePayment(order_id="o-4", customer_id="c-4", amount_cents=CARD_LIMIT + 1)
    await shop.twice(over, "over")
    declined = PaymentDeclined(order_id="o-4", reason="card declined: over limit")
    assert shop.probe.of("o-4") == [declined] * 2
    assert await money(shop, "o-4") == (0, 0, [])
    assert shop.gateway.calls == {}  # neither a void charge nor a declined one asks it
    assert shop.ledger.failures == []


async def test_charges_and_refunds_of_the_same_orders_at_once_never_keep_the_money(
    rig: Rig,
) -> None:
    """A charge and its refund handled at once, in either order: whatever was charged is
    refunded, and each reply tells what the payment service stored."""
    shop = await rig.services()
    order_ids = [f"o-5-{n}" for n in range(8)]
    commands = [
        command
        for order_id in order_ids
        for command in (
            ChargePayment(order_id=order_id, customer_id="c-5", amount_cents=300),
            RefundPayment(order_id=order_id, amount_cents=300),
        )
    ]
    ids = [f"race-{n}" for n in range(len(commands))]
    await asyncio.gather(
        *(shop.app.send(c, message_id=m) for c, m in zip(commands, ids, strict=True))
    )
    await eventually(
        lambda: all(shop.ledger.finished[m] == 1 for m in ids), what="every charge and refund"
    )
    await shop.settle()
    for order_id in order_ids:
        charged, refunded, payment_ids = await money(shop, order_id)
        assert charged == refunded, order_id
        replies = shop.probe.of(order_id)
        assert PaymentRefunded(order_id=order_id, amount_cents=refunded) in replies
        if charged:
            [payment_id] = payment_ids
            took = PaymentCharged(order_id=order_id, amount_cents=300, payment_id=payment_id)
            assert took in replies
        else:
            cancelled = PaymentDeclined(order_id=order_id, reason="cancelled: refunded already")
            assert cancelled in replies
        assert shop.gateway.net_cents(order_id) == 0, order_id  # the gateway gave it back
    assert shop.ledger.failures == []


async def test_ship_twice_ships_once(rig: Rig) -> None:
    """Two ShipOrder ship once and both answer with the same tracking number; two to an
    address not served both fail and ship nothing."""
    shop = await rig.services()
    await shop.twice(ShipOrder(order_id="o-6", address="1 Main St"), "ship")
    assert shop.probe.of("o-6") == [OrderShipped(order_id="o-6", tracking_number="TRK-o-6")] * 2

    await shop.twice(ShipOrder(order_id="o-7", address="Atlantis"), "unserved")
    failed = ShippingFailed(order_id="o-7", reason="no delivery to Atlantis")
    assert shop.probe.of("o-7") == [failed] * 2
    rows = await shop.rows("SELECT order_id, tracking_number FROM shipping_shipments")
    assert rows == [("o-6", "TRK-o-6")]
    assert shop.ledger.failures == []


async def test_notify_twice_records_one_notification(rig: Rig) -> None:
    """Two NotifyCustomer with the same order and template record one notification; both
    answer CustomerNotified. Another template for the same order is another notification."""
    shop = await rig.services()
    shipped = NotifyCustomer(customer_id="c-8", order_id="o-8", template="order_shipped")
    await shop.twice(shipped, "shipped")
    notified = CustomerNotified(customer_id="c-8", order_id="o-8", template="order_shipped")
    assert shop.probe.of("o-8") == [notified] * 2

    failed = NotifyCustomer(customer_id="c-8", order_id="o-8", template="order_failed")
    await shop.twice(failed, "failed")
    rows = await shop.rows(
        "SELECT customer_id, template FROM notifications_sent WHERE order_id = ? ORDER BY template",
        "o-8",
    )
    assert rows == [("c-8", "order_failed"), ("c-8", "order_shipped")]
    assert shop.ledger.failures == []


async def test_place_order_twice_runs_one_saga_with_one_set_of_effects(rig: Rig) -> None:
    """Two PlaceOrder for one order (and a redelivery of the first) run one saga: one charge,
    one shipment, one final notification, stock held once."""
    app, ledger = await rig.shop()
    assert app.store is not None
    store = app.store
    order = PlaceOrder(order_id="o-9", customer_id="c-9", items=ITEMS, address="1 Main St")
    await asyncio.gather(
        *(app.send(order, message_id=m) for m in ("place-1", "place-2", "place-1"))
    )
    await eventually(
        lambda: ledger.finished["place-1"] == 2 and ledger.finished["place-2"] == 1,
        what="three deliveries of PlaceOrder",
    )

    async def finished() -> object:
        record = await saga_of(store, "o-9")
        return record if record is not None and record.status.terminal else None

    record = await eventually(finished, what="the saga to finish")
    assert record.status is SagaStatus.COMPLETED
    assert [r.saga_id for r in await store.list_sagas()] == ["order-o-9"]
    assert await check_invariants(store, [order], [record]) == []
    async with store.transaction() as tx:
        for table in ("payment_charges", "shipping_shipments", "notifications_sent"):
            row = await tx.fetchone(f"SELECT count(*) FROM {table}")
            assert row == (1,), table
    assert ledger.failures == []
