"""The order read side as a projection: idempotent under duplicate and reordered events, with a
recorded position and an event log that rebuilds the same read model."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import tempfile
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts.orders import OrderStep
from framework import App, AppConfig, RegistrationError, Service
from framework.cli import main
from framework.cqrs import Projection, find_projection
from framework.messages import Event
from framework.store import StoreTx, store_from_url
from handlers.orders import ORDER_STEPS, build_read_side
from tests.cqrs.support import OUTCOMES, Handled, expected_row, read_model, saga_events

# Per order: its customer, quantity and how far its saga got (see ``OUTCOMES``).
ORDERS = st.lists(
    st.tuples(st.sampled_from(["c-1", "c-2"]), st.integers(1, 5), st.sampled_from(OUTCOMES)),
    min_size=1,
    max_size=3,
)


def events_of(orders: list[tuple[str, int, str]]) -> list[tuple[str, Event]]:
    """The events of ``orders``' sagas with their message ids."""
    return [
        (f"o-{i}/{n}", event)
        for i, (customer, qty, outcome) in enumerate(orders)
        for n, event in enumerate(saga_events(f"o-{i}", customer, qty, outcome))
    ]


def expected_rows(orders: list[tuple[str, int, str]]) -> list[tuple[Any, ...]]:
    """The read model the orders must produce, whatever the delivery order."""
    return [
        expected_row(f"o-{i}", customer, qty, outcome)
        for i, (customer, qty, outcome) in enumerate(orders)
    ]


async def project(db: Path, deliveries: list[tuple[str, Event]], distinct: int) -> None:
    """Deliver ``deliveries`` to the shop's read side on the memory transport, then check it."""
    store = store_from_url(f"sqlite:///{db}")
    handled = Handled()
    app = App(
        [build_read_side(store)],
        store=store,
        config=AppConfig(prefix="shop"),
        middleware=[handled],
    )
    projection = find_projection(app.services, "orders_view")
    assert projection is not None
    async with app:
        for message_id, event in deliveries:
            await app.publish(event, message_id=message_id)
        await handled.wait_for(len(deliveries))
        live = await read_model(store)
        assert await projection.position(store) == distinct
        assert await projection.rebuild(store) == distinct
        assert await read_model(store) == live
        async with store.transaction() as tx:
            logged = await tx.fetchall(
                "SELECT position, message_id FROM leveret_event_log ORDER BY position"
            )
        assert [row[0] for row in logged] == list(range(1, distinct + 1))
        assert len({row[1] for row in logged}) == distinct


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(orders=ORDERS, data=st.data())
def test_projection_is_idempotent_under_duplicates_and_reordering(
    orders: list[tuple[str, int, str]], data: st.DataObject
) -> None:
    """Any order of the events of the sagas, with any of them delivered twice, gives the read
    model of the in-order run (status, reason, step that never goes back, amounts), counts each
    event once in the position, and rebuilds to the same read model."""
    events = events_of(orders)
    duplicates = data.draw(st.lists(st.sampled_from(events), max_size=4), label="duplicates")
    deliveries = data.draw(st.permutations(events + duplicates), label="deliveries")
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "view.db"
        asyncio.run(project(db, deliveries, len(events)))
        store = store_from_url(f"sqlite:///{db}")

        async def rows() -> list[tuple[Any, ...]]:
            try:
                return await read_model(store)
            finally:
                await store.close()

        assert asyncio.run(rows()) == expected_rows(orders)


def test_in_order_sagas_give_each_outcomes_row(tmp_path: Path) -> None:
    """Each outcome's events applied in the order the shop publishes them give the row the
    property test expects: the in-order run is the reference for every other delivery order."""
    orders = [("c-1", n % 5 + 1, outcome) for n, outcome in enumerate(OUTCOMES)]
    events = events_of(orders)
    db = tmp_path / "view.db"
    asyncio.run(project(db, events, len(events)))

    async def rows() -> list[tuple[Any, ...]]:
        store = store_from_url(f"sqlite:///{db}")
        try:
            return await read_model(store)
        finally:
            await store.close()

    assert asyncio.run(rows()) == expected_rows(orders)


def test_order_steps_rank_every_step_once() -> None:
    """The projection ranks exactly the steps the OrderStep contract lists, in its order."""
    assert typing.get_args(OrderStep) == ORDER_STEPS


@pytest.fixture
def clean_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Undo the CLI's ``configure_logging``: structlog defaults and the root logger's handlers."""
    monkeypatch.delenv("LEVERET_LOG_LEVEL", raising=False)
    monkeypatch.delenv("LEVERET_LOG_FORMAT", raising=False)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.reset_defaults()
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


@pytest.mark.usefixtures("clean_logging")
def test_cli_rebuild_restores_the_live_read_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`leveret projections rebuild MODULE:APP orders_view` replaces a damaged read model with
    the one the live projection built; `projections list` shows how many events it reflects."""
    db = tmp_path / "shop.db"
    module = tmp_path / "rebuild_shop_app.py"
    module.write_text(
        "from framework import App, AppConfig\n"
        "from framework.store import store_from_url\n"
        "from handlers.orders import build_read_side\n"
        f"store = store_from_url('sqlite:///{db}')\n"
        "app = App([build_read_side(store)], store=store, config=AppConfig(prefix='shop'))\n"
    )
    events = events_of([("c-1", 2, "completed"), ("c-2", 1, "no delivery"), ("c-1", 3, "placed")])

    async def live() -> list[tuple[Any, ...]]:
        await project(db, events, len(events))
        return await damage()

    async def damage() -> list[tuple[Any, ...]]:
        store = store_from_url(f"sqlite:///{db}")
        try:
            before = await read_model(store)
            async with store.transaction() as tx:
                await tx.execute("UPDATE orders_view SET status = 'failed'")
                await tx.execute("UPDATE order_steps SET step = 'placed', step_rank = 0")
                await tx.execute("DELETE FROM orders_view WHERE order_id = 'o-0'")
            return before
        finally:
            await store.close()

    def cli(*argv: str) -> tuple[int, str, str]:
        # Streams that stay open: the CLI's logging keeps the stream it was configured with.
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(argv))
        return code, out.getvalue(), err.getvalue()

    before = asyncio.run(live())
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    code, out, _ = cli("projections", "rebuild", "rebuild_shop_app:app", "orders_view")
    assert code == 0
    assert f"rebuilt projection 'orders_view' from {len(events)} events" in out

    async def after() -> list[tuple[Any, ...]]:
        store = store_from_url(f"sqlite:///{db}")
        try:
            return await read_model(store)
        finally:
            await store.close()

    assert asyncio.run(after()) == before
    code, out, _ = cli("projections", "list", "rebuild_shop_app:app", "--json")
    assert code == 0
    [listed] = json.loads(out)
    assert (listed["name"], listed["position"]) == ("orders_view", len(events))
    code, out, _ = cli("projections", "list", "rebuild_shop_app:app")
    assert out.split("\n")[1].split()[:3] == ["orders_view", "order_view", str(len(events))]
    code, out, err = cli("projections", "rebuild", "rebuild_shop_app:app", "nope")
    assert code == 2
    assert "no projection named 'nope'; this app's projections: orders_view" in err


def test_projection_applies_events_only() -> None:
    """A projection applier must take an Event; anything else is rejected with what to do."""
    projection = Projection("p", service=Service("s"), tables=("t",))
    with pytest.raises(RegistrationError, match=r"annotate its first parameter with the Event"):

        @projection.on
        async def apply(evt: int, tx: StoreTx) -> None: ...  # type: ignore[type-var]


def test_projection_tables_must_be_identifiers() -> None:
    """Table names are interpolated into DELETE, so only plain identifiers are accepted."""
    with pytest.raises(RegistrationError, match=r"'t; drop' is not a plain SQL identifier"):
        Projection("p", service=Service("s"), tables=("t; drop",))
