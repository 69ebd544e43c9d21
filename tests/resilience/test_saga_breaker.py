"""The order saga against a full inventory queue: the breaker opens, rows park, nothing is lost."""

from __future__ import annotations

import asyncio
from pathlib import Path

import contracts
from examples.shop import check_invariants, make_orders, place, wait_for_sagas
from framework import App, AppConfig
from framework.resilience import BreakerClosed, BreakerConfig, BreakerOpened, Breakers, Downstream
from framework.store import store_from_url
from handlers.app import DEFAULT_STOCK
from handlers.inventory import build_inventory
from handlers.notifications import build_notifications
from handlers.orders import build_orders, build_read_side
from handlers.payment import build_payment
from handlers.shipping import build_shipping
from tests.app.conftest import Backend


async def test_full_inventory_queue_parks_the_saga_outbox_until_it_drains(
    backend: Backend, tmp_path: Path
) -> None:
    """Nacks from a capped inventory queue open its breaker; the sagas' commands wait in the
    outbox; the consumer comes back, the breaker closes, and every order ends correctly once."""
    db_url = f"sqlite:///{tmp_path}/shop.db"
    config = AppConfig(prefix=backend.prefix)
    breakers = Breakers(
        [
            Downstream(
                "inventory",
                config=BreakerConfig(
                    window_size=4,
                    minimum_calls=2,
                    wait_in_open=0.3,
                    permitted_calls_in_half_open=1,
                    automatic_transition=True,
                ),
            )
        ],
        status=False,
    )
    opened, closed = asyncio.Event(), asyncio.Event()
    breakers["inventory"].subscribe(
        lambda e: opened.set() if isinstance(e, BreakerOpened) else None
    )
    breakers["inventory"].subscribe(
        lambda e: closed.set() if isinstance(e, BreakerClosed) and opened.is_set() else None
    )
    store = store_from_url(db_url)
    front = App(
        [
            build_orders(),
            build_read_side(store),
            build_payment(),
            build_shipping(),
            build_notifications(),
        ],
        transport=backend.transport(),
        config=config,
        store=store,
        breakers=breakers,
        contracts=contracts.ALL,
    )

    def inventory() -> App:
        app = App(
            [build_inventory(DEFAULT_STOCK, max_length=3)],
            transport=backend.transport(),
            config=config,
            db_url=db_url,
        )
        backend._apps.append(app)
        return app

    # Declare inventory's capped queues, then leave them without a consumer.
    idle = inventory()
    await idle.start(consume=False)
    await idle.stop(grace=0)
    backend._apps.append(front)
    await front.start()
    assert front.relay is not None

    orders = make_orders("brk", 15, seed=11)
    await place(front, orders)
    async with asyncio.timeout(60):
        await opened.wait()
        # The next saga command refused by the open breaker parks the destination.
        while "inventory" not in front.relay.parked:  # noqa: ASYNC110  # no event to await: the relay parks on its own
            await asyncio.sleep(0.01)

    await inventory().start()
    records = await wait_for_sagas(store, "brk", len(orders), deadline=120)
    async with asyncio.timeout(30):
        await closed.wait()
    assert await check_invariants(store, orders, records) == []
    assert front.relay.parked == frozenset()
