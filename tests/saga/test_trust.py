"""What the saga runner trusts, in memory: correlation by business key, timeout tokens, keyed ids.

Issue 14, cases 4 to 6, at the runner's level: each test hands the runner a message directly (or
looks at the app's topology and the ids it derives); ``test_attacks.py`` makes the same attacks
through a broker.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

import contracts
from contracts.inventory import InventoryReserved
from contracts.orders import LineItem, PlaceOrder
from contracts.payment import PaymentCharged
from framework import App, AppConfig
from framework.consumer import RejectMessage
from framework.context import Context
from framework.errors import ConfigurationError, Unroutable
from framework.messages import MessageKind
from framework.saga.runner import SagaRunner
from framework.saga.signing import SECRET_ENV, SagaKeys, Signer
from framework.store import SagaRecord, SagaStatus, Store
from framework.store.memory import MemoryStore
from framework.transport.memory import MemoryTransport
from handlers.app import DEFAULT_STOCK
from handlers.inventory import build_inventory
from handlers.notifications import build_notifications
from handlers.orders import build_orders
from handlers.shipping import build_shipping
from tests.saga.conftest import eventually, payment_that_holds

SECRET = "s3cret-for-tests-only-0123456789"
ITEMS = [LineItem(sku="apple", qty=2, unit_price_cents=250)]
KEYED_ID = re.compile(r"(?P<saga>.+)/(?P<version>\d+)/(?P<slot>\d+|timeout)/[0-9a-f]{16}")


@pytest.fixture
async def shop() -> AsyncIterator[App]:
    """The shop in memory, with a payment service that never answers and a known secret."""
    payment, _ = payment_that_holds()
    app = App(
        [
            build_orders(),
            build_inventory(DEFAULT_STOCK),
            payment,
            build_shipping(),
            build_notifications(),
        ],
        transport=MemoryTransport(),
        config=AppConfig(prefix="trust", secret=SECRET),
        store=MemoryStore(),
        contracts=contracts.ALL,
    )
    async with app:
        yield app


def store_of(app: App) -> Store:
    assert app.store is not None
    return app.store


def context(app: App, message_id: str, saga_id: str | None = None) -> Context:
    headers: dict[str, Any] = {} if saga_id is None else {"leveret-saga-id": saga_id}
    return Context(
        app.bus,
        message_id=message_id,
        correlation_id=None,
        headers=headers,
        redelivered=False,
        attempt=1,
        handler="orders",
    )


async def charging(app: App, order_id: str) -> SagaRecord:
    """Place ``order_id`` and wait until its saga waits for the (held) charge."""
    await app.send(PlaceOrder(order_id=order_id, customer_id="c-1", items=ITEMS, address="x"))

    async def waiting() -> SagaRecord | None:
        record = await store_of(app).get_saga(f"order-{order_id}")
        return record if record is not None and record.state == "charge" else None

    found: SagaRecord = await eventually(waiting, what=f"the saga of {order_id} in charge")
    return found


async def inbox_has(app: App, runner: SagaRunner, message_id: str) -> bool:
    """Whether the runner's inbox holds ``message_id`` (recording it if not)."""
    async with store_of(app).transaction() as tx:
        return not await tx.inbox_add(runner._consumer, message_id)


# -- correlation -------------------------------------------------------------------------------


async def test_a_header_naming_another_instance_is_refused_as_saga_key_mismatch(
    shop: App,
) -> None:
    """A reply whose saga id header names another order than its body is dead-lettered as
    ``saga_key_mismatch`` before any transaction, and neither saga changes."""
    victim, other = await charging(shop, "victim"), await charging(shop, "other")
    runner = shop.sagas["order"]
    forged = PaymentCharged(order_id="other", amount_cents=500, payment_id="pay-forged")
    with pytest.raises(RejectMessage) as refused:
        await runner.handle(forged, context(shop, "forged-1", saga_id="order-victim"))
    reason = refused.value.reason
    assert reason.startswith("saga_key_mismatch: "), reason
    assert "'order-victim'" in reason
    assert "'order-other'" in reason
    store = store_of(shop)
    assert await store.get_saga("order-victim") == victim
    assert await store.get_saga("order-other") == other
    assert not await inbox_has(shop, runner, "forged-1")


async def test_the_body_key_correlates_and_a_matching_or_foreign_header_is_fine(shop: App) -> None:
    """The body's key picks the instance; a header naming the same one, or an instance of
    another saga, does not stop it."""
    await charging(shop, "mine")
    await charging(shop, "yours")
    runner = shop.sagas["order"]
    for header in ("order-mine", "payment-yours", None):
        reply = PaymentCharged(order_id="mine", amount_cents=1, payment_id="p")
        assert runner.saga_id_for(reply, header) == "order-mine"
    await runner.handle(
        PaymentCharged(order_id="mine", amount_cents=500, payment_id="pay-mine"),
        context(shop, "charged-mine", saga_id="order-mine"),
    )
    record = await store_of(shop).get_saga("order-mine")
    assert record is not None
    assert record.state == "ship"


async def test_the_header_correlates_only_a_body_without_the_key(shop: App) -> None:
    """A reply whose body has no key is correlated by its saga id header; without either it is
    ``uncorrelated``."""
    runner = shop.sagas["order"]
    keyless = InventoryReserved(order_id=None)  # type: ignore[arg-type]  # as a bad peer sends
    assert runner.saga_id_for(keyless, "order-h") == "order-h"
    with pytest.raises(RejectMessage, match=r"^uncorrelated: "):
        runner.saga_id_for(keyless, "payment-h")  # another saga's instance says nothing here


# -- timeouts ----------------------------------------------------------------------------------


async def test_a_timeout_applies_only_with_the_token_the_runner_armed(shop: App) -> None:
    """Timeouts without a token, with a guessed one or with one for another state or version
    are dead-lettered as ``forged_timeout``; the one the runner armed compensates."""
    record = await charging(shop, "late")
    runner = shop.sagas["order"]
    timeout_type = runner.saga.timeout_type
    signer = Signer(SECRET)
    good = signer.timeout_token("order", "order-late", "charge", record.version)
    forgeries = {
        "none": timeout_type(saga_id="order-late", state="charge", armed_version=record.version),
        "guessed": timeout_type(
            saga_id="order-late", state="charge", armed_version=record.version, token="0" * 32
        ),
        "other state": timeout_type(
            saga_id="order-late", state="reserve", armed_version=record.version, token=good
        ),
        "other version": timeout_type(
            saga_id="order-late", state="charge", armed_version=record.version + 1, token=good
        ),
        "not ascii": timeout_type(
            saga_id="order-late", state="charge", armed_version=record.version, token="é" * 32
        ),
        "another key": timeout_type(
            saga_id="order-late",
            state="charge",
            armed_version=record.version,
            token=Signer("another-secret-0123456789").timeout_token(
                "order", "order-late", "charge", record.version
            ),
        ),
    }
    for what, forged in forgeries.items():
        with pytest.raises(RejectMessage) as refused:
            await runner.handle(forged, context(shop, f"forged-{what}"))
        assert refused.value.reason.startswith("forged_timeout: saga.order.timeout for "), what
        assert not await inbox_has(shop, runner, f"forged-{what}")
    assert await store_of(shop).get_saga("order-late") == record

    genuine = timeout_type(
        saga_id="order-late", state="charge", armed_version=record.version, token=good
    )
    await runner.handle(genuine, context(shop, "genuine"))
    after = await store_of(shop).get_saga("order-late")
    assert after is not None
    assert after.status in (SagaStatus.COMPENSATING, SagaStatus.COMPENSATED)
    assert after.reason == "charge timed out after 60.0s"


async def test_every_derived_id_is_keyed_and_one_timeout_is_armed(shop: App) -> None:
    """Every id the runner derives is keyed, and it arms one timeout for the state it waits in."""
    record = await charging(shop, "armed")
    history = await store_of(shop).history("order-armed")
    emitted = [m for h in history for m in h.emitted]
    assert all(KEYED_ID.fullmatch(m) for m in emitted), emitted
    assert sum(f"/{record.version}/timeout/" in m for m in emitted) == 1


def test_the_timeout_queue_is_bound_to_the_retry_exchange_only(shop: App) -> None:
    """A saga's timeout queue has no binding on the public commands exchange, only the retry
    exchange (where the delay tier dead-letters to) by its own name."""
    queue = shop.naming.handler_queue("orders", "saga.order.timeout")
    bindings = [b for b in shop.topology.bindings if b.queue == queue]
    assert [(b.exchange, b.routing_key) for b in bindings] == [(shop.naming.retry, queue)]
    reserve = shop.naming.handler_queue("orders", PlaceOrder.__wire_name__)
    assert any(
        b.queue == reserve and b.exchange == shop.naming.exchange_for(MessageKind.COMMAND)
        for b in shop.topology.bindings
    )


async def test_a_timeout_sent_to_the_commands_exchange_is_unroutable(shop: App) -> None:
    """Sending a saga's timeout like a command finds no queue."""
    record = await charging(shop, "routed")
    forged = shop.sagas["order"].saga.timeout_type(
        saga_id="order-routed", state="charge", armed_version=record.version
    )
    with pytest.raises(Unroutable):
        await shop.send(forged)
    assert await store_of(shop).get_saga("order-routed") == record


# -- derived ids -------------------------------------------------------------------------------


def test_derived_ids_are_readable_deterministic_and_keyed() -> None:
    """An id is ``<saga id>/<version>/<slot>/<tag>``: the same under one secret, another under
    another secret, slot or version."""
    one, same, other = Signer(SECRET), Signer(SECRET), Signer("another-secret-0123456789")
    derived = one.message_id("order-o-1", 1, 1)
    assert KEYED_ID.fullmatch(derived)
    assert derived.startswith("order-o-1/1/1/")
    assert derived == same.message_id("order-o-1", 1, 1)
    assert derived != other.message_id("order-o-1", 1, 1)
    assert len({one.message_id("order-o-1", v, s) for v in (1, 2) for s in (0, 1, "timeout")}) == 6
    assert one.message_id("order-o-1", 1, "timeout").startswith("order-o-1/1/timeout/")
    assert SECRET not in repr(one)


def test_derived_ids_fit_an_amqp_short_string() -> None:
    """Ids of huge or multi-byte saga ids are cut to 255 bytes and stay distinct."""
    signer = Signer(SECRET)
    ids = {signer.message_id("order-" + "é" * 500 + tail, 3, 1) for tail in ("a", "b")}
    assert len(ids) == 2
    for derived in ids:
        assert len(derived.encode()) <= 255
        assert re.fullmatch(r"order-é+…/3/1/[0-9a-f]{16}", derived)


# -- the secret --------------------------------------------------------------------------------


def test_a_short_secret_is_a_configuration_error_and_never_shown() -> None:
    """``AppConfig(secret=...)`` under 16 characters says what to change; the secret is not in
    the config's repr."""
    with pytest.raises(ConfigurationError, match=r"AppConfig.secret is 5 characters: use .* 16"):
        AppConfig(secret="short")
    assert SECRET not in repr(AppConfig(secret=SECRET))


def test_leveret_secret_is_read_when_the_config_has_none(monkeypatch: pytest.MonkeyPatch) -> None:
    """``LEVERET_SECRET`` keys the sagas of an app without ``AppConfig.secret``; a short one is
    refused naming the variable."""
    monkeypatch.setenv(SECRET_ENV, SECRET)
    app = App([build_orders()], transport=MemoryTransport(), store=MemoryStore())
    assert app._saga_keys.configured
    monkeypatch.setenv(SECRET_ENV, "tiny")
    with pytest.raises(ConfigurationError, match=r"LEVERET_SECRET is 4 characters"):
        App([build_orders()], transport=MemoryTransport(), store=MemoryStore())
    monkeypatch.setenv(SECRET_ENV, "")
    app = App([build_orders()], transport=MemoryTransport(), store=MemoryStore())
    assert not app._saga_keys.configured


async def test_without_a_secret_runners_sharing_a_store_share_its_secret() -> None:
    """Keys without a configured secret use the store's: one per store, the same for every
    runner on it, and another store gets another."""
    shared, elsewhere = MemoryStore(), MemoryStore()
    first, second = SagaKeys(), SagaKeys()
    one = (await first.signer(shared)).message_id("order-x", 1, 0)
    assert (await second.signer(shared)).message_id("order-x", 1, 0) == one
    assert (await first.signer(elsewhere)).message_id("order-x", 1, 0) != one
    configured = SagaKeys(SECRET)
    assert (await configured.signer(shared)).message_id("order-x", 1, 0) == Signer(
        SECRET
    ).message_id("order-x", 1, 0)
