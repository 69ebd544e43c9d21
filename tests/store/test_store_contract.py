"""The Store contract: one suite, run unchanged against the memory, SQLite and PostgreSQL stores.

Tests that need SQL (service tables, the schema version, reopening a database) run on the two SQL
stores only; tests of one store's URL forms and options come last.
"""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

import asyncpg
import msgspec
import pytest

from framework.errors import ConfigurationError, LeveretError
from framework.store import (
    ConcurrencyConflict,
    HistoryRow,
    OutboxRow,
    SagaExists,
    SagaRecord,
    SagaStatus,
    SecretKeeper,
    Store,
    StoreUnreachable,
    store_from_url,
)
from framework.store.base import SCHEMA_VERSION
from framework.store.memory import MemoryStore
from framework.store.postgres import PostgresStore, positional_params
from framework.store.sqlite import SqliteStore
from tests.store.conftest import SQL_KINDS, MakeStore

ORDERS_DDL = (
    "CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY, total INTEGER NOT NULL, note TEXT)",
)


def saga(saga_id: str = "s1", **fields: Any) -> SagaRecord:
    values: dict[str, Any] = {
        "saga": "OrderSaga",
        "correlation_id": f"corr-{saga_id}",
        "status": SagaStatus.RUNNING,
        "state": "reserving",
        "data": b'{"order":"o1"}',
        "version": 1,
        "created_at": 100.0,
        "updated_at": 100.0,
    }
    values.update(fields)
    return SagaRecord(saga_id=saga_id, **values)


def outgoing(message_id: str, **fields: Any) -> OutboxRow:
    values: dict[str, Any] = {
        "exchange": "shop.commands",
        "routing_key": "billing.charge",
        "body": b'{"amount":10}',
        "properties": b'{"type":"Charge"}',
        "created_at": 100.0,
    }
    values.update(fields)
    return OutboxRow(message_id=message_id, **values)


def step(saga_id: str, version: int, **fields: Any) -> HistoryRow:
    values: dict[str, Any] = {
        "at": 100.0 + version,
        "message_id": f"m-{saga_id}-{version}",
        "message_type": "PaymentTaken",
        "from_state": "reserving",
        "to_state": "shipping",
        "status": SagaStatus.RUNNING,
    }
    values.update(fields)
    return HistoryRow(saga_id=saga_id, version=version, **values)


def ids(rows: list[OutboxRow]) -> list[str]:
    return [row.message_id for row in rows]


class Boom(Exception):
    """Raised inside a transaction to roll it back."""


# -- setup --------------------------------------------------------------------------------------


async def test_setup_is_idempotent(make_store: MakeStore) -> None:
    """setup() runs again on the same database, from the same and from another store, harmlessly."""
    store = await make_store()
    await store.setup()
    async with store.transaction() as tx:
        assert await tx.inbox_add("billing", "m1")
    other = await make_store()
    await other.setup()
    async with store.transaction() as tx:
        assert await tx.inbox_add("billing", "m2")


async def test_concurrent_setups_of_one_database_succeed(make_store: MakeStore) -> None:
    """Several stores (like worker processes) setting up one fresh database at once all succeed."""
    stores = await asyncio.gather(*(make_store() for _ in range(4)))
    async with stores[-1].transaction() as tx:
        assert await tx.inbox_add("billing", "m1")


@pytest.mark.parametrize("store_kind", SQL_KINDS, indirect=True)
async def test_setup_records_the_schema_version_once(make_store: MakeStore) -> None:
    """A SQL store writes SCHEMA_VERSION into leveret_schema_version once, however often set up."""
    store = await make_store()
    await store.setup()
    await (await make_store()).setup()
    async with store.transaction() as tx:
        rows = await tx.fetchall("SELECT version FROM leveret_schema_version")
    assert rows == [(SCHEMA_VERSION,)]


@pytest.mark.parametrize("store_kind", SQL_KINDS, indirect=True)
async def test_setup_refuses_a_newer_schema(make_store: MakeStore) -> None:
    """A database written by a newer leveret makes setup() raise ConfigurationError, unchanged."""
    store = await make_store()
    async with store.transaction() as tx:
        await tx.execute("UPDATE leveret_schema_version SET version = ?", SCHEMA_VERSION + 1)
    newer = await make_store(setup=False)
    with pytest.raises(ConfigurationError, match=f"schema version {SCHEMA_VERSION + 1}, newer"):
        await newer.setup(ORDERS_DDL)
    async with store.transaction() as tx:
        assert await tx.fetchall("SELECT version FROM leveret_schema_version") == [
            (SCHEMA_VERSION + 1,)
        ]


# -- inbox --------------------------------------------------------------------------------------


async def test_inbox_add_is_true_once_per_consumer(store: Store) -> None:
    """inbox_add is True the first time a consumer records a message id, then False."""
    async with store.transaction() as tx:
        assert await tx.inbox_add("billing", "m1") is True
        assert await tx.inbox_add("billing", "m1") is False
        assert await tx.inbox_add("shipping", "m1") is True
    async with store.transaction() as tx:
        assert await tx.inbox_add("billing", "m1") is False
        assert await tx.inbox_add("shipping", "m1") is False
        assert await tx.inbox_add("billing", "m2") is True


async def test_racing_inbox_adds_record_the_message_once(store: Store) -> None:
    """Two transactions adding the same inbox row at once: exactly one gets True."""

    async def add() -> bool:
        async with store.transaction() as tx:
            return await tx.inbox_add("billing", "m1")

    assert sorted(await asyncio.gather(add(), add())) == [False, True]


# -- sagas --------------------------------------------------------------------------------------


async def test_insert_then_load_round_trips_every_field(store: Store) -> None:
    """Every field of a SagaRecord, optional ones set or not, comes back from load and get_saga."""
    full = saga(
        "s1",
        status=SagaStatus.COMPENSATING,
        data=b"\x00\xff binary \x80",
        version=7,
        created_at=1700000000.125,
        updated_at=1700000001.5,
        deadline_at=1700000060.25,
        reason="payment declined",
    )
    bare = saga("s2", deadline_at=None, reason=None)
    async with store.transaction() as tx:
        await tx.insert(full)
        await tx.insert(bare)
        assert await tx.load("s1") == full
    async with store.transaction() as tx:
        assert await tx.load("s1") == full
        assert await tx.load("s2") == bare
    assert await store.get_saga("s1") == full
    assert await store.get_saga("s2") == bare


async def test_unknown_saga_loads_as_none(store: Store) -> None:
    """load and get_saga return None for an id never inserted."""
    async with store.transaction() as tx:
        assert await tx.load("nope") is None
    assert await store.get_saga("nope") is None


async def test_second_insert_raises_saga_exists(store: Store) -> None:
    """Inserting an existing id raises SagaExists and keeps the first; the transaction goes on."""
    first = saga("s1", state="first")
    async with store.transaction() as tx:
        await tx.insert(first)
        with pytest.raises(SagaExists):
            await tx.insert(saga("s1", state="same-tx"))
    async with store.transaction() as tx:
        with pytest.raises(SagaExists):
            await tx.insert(saga("s1", state="later"))
        assert await tx.load("s1") == first
        assert await tx.inbox_add("billing", "m1")
    assert await store.get_saga("s1") == first
    async with store.transaction() as tx:
        assert not await tx.inbox_add("billing", "m1")


async def test_racing_inserts_exactly_one_wins(store: Store, store_kind: str) -> None:
    """Two transactions inserting one saga id at once: one commits, the other gets SagaExists.

    The memory and SQLite stores run transactions one at a time; on PostgreSQL both are open
    together (both have read nothing) before either inserts.
    """
    both_open = asyncio.Barrier(2) if store_kind == "postgres" else None

    async def start(name: str) -> str | None:
        try:
            async with store.transaction() as tx:
                if await tx.load("s1") is None and both_open is not None:
                    await both_open.wait()
                await tx.insert(saga("s1", state=name))
        except SagaExists:
            return None
        return name

    winners = [name for name in await asyncio.gather(start("a"), start("b")) if name]
    assert len(winners) == 1
    stored = await store.get_saga("s1")
    assert stored is not None
    assert stored.state == winners[0]


@pytest.mark.parametrize("store_kind", SQL_KINDS, indirect=True)
async def test_racing_inserts_from_two_stores_exactly_one_wins(
    make_store: MakeStore, store_kind: str
) -> None:
    """Two stores on one database (two processes) inserting one saga id: exactly one commits."""
    stores = [await make_store(), await make_store()]
    # SQLite's second writer waits inside BEGIN IMMEDIATE, so only PostgreSQL can meet in between.
    both_open = asyncio.Barrier(2) if store_kind == "postgres" else None

    async def start(store: Store, name: str) -> str | None:
        try:
            async with store.transaction() as tx:
                if both_open is not None:
                    await both_open.wait()
                await tx.insert(saga("s1", state=name))
                await tx.add_outbox([outgoing(f"o-{name}")])
        except SagaExists:
            return None
        return name

    results = await asyncio.gather(start(stores[0], "a"), start(stores[1], "b"))
    winners = [name for name in results if name]
    assert len(winners) == 1
    assert ids(await stores[0].pending_outbox()) == [f"o-{winners[0]}"]


async def test_update_checks_the_expected_version(store: Store) -> None:
    """update saves with the stored version expected, else raises ConcurrencyConflict, unchanged."""
    async with store.transaction() as tx:
        await tx.insert(saga("s1"))
    paid = saga(
        "s1",
        version=2,
        state="paid",
        status=SagaStatus.COMPLETED,
        updated_at=200.0,
        deadline_at=300.0,
        reason="done",
    )
    async with store.transaction() as tx:
        await tx.update(paid, expected_version=1)
        assert await tx.load("s1") == paid
    assert await store.get_saga("s1") == paid
    async with store.transaction() as tx:
        with pytest.raises(ConcurrencyConflict):
            await tx.update(saga("s1", version=3, state="stale"), expected_version=1)
        with pytest.raises(ConcurrencyConflict):
            await tx.update(saga("ghost", version=2), expected_version=1)
    assert await store.get_saga("s1") == paid


async def test_racing_updates_from_one_version_exactly_one_wins(
    store: Store, store_kind: str
) -> None:
    """Two transactions updating one saga from the same version: one commits, one conflicts.

    On PostgreSQL both transactions are open together before either updates.
    """
    async with store.transaction() as tx:
        await tx.insert(saga("s1"))
    both_open = asyncio.Barrier(2) if store_kind == "postgres" else None

    async def advance(name: str) -> str | None:
        try:
            async with store.transaction() as tx:
                if both_open is not None:
                    await both_open.wait()
                await tx.update(saga("s1", version=2, state=name), expected_version=1)
        except ConcurrencyConflict:
            return None
        return name

    winners = [name for name in await asyncio.gather(advance("a"), advance("b")) if name]
    assert len(winners) == 1
    stored = await store.get_saga("s1")
    assert stored is not None
    assert (stored.version, stored.state) == (2, winners[0])


async def test_transitions_that_load_first_never_conflict(store: Store) -> None:
    """Concurrent load-then-update transactions of one saga queue up (load reads for update)."""
    async with store.transaction() as tx:
        await tx.insert(saga("s1"))

    async def bump() -> None:
        async with store.transaction() as tx:
            record = await tx.load("s1")
            assert record is not None
            bumped = msgspec.structs.replace(record, version=record.version + 1)
            await tx.update(bumped, expected_version=record.version)

    await asyncio.gather(*(bump() for _ in range(5)))
    stored = await store.get_saga("s1")
    assert stored is not None
    assert stored.version == 6


async def test_inbox_add_and_load_is_inbox_add_then_load(store: Store) -> None:
    """The combined read records the message once and returns the saga (None when absent)."""
    async with store.transaction() as tx:
        await tx.insert(saga("s1"))
    async with store.transaction() as tx:
        assert await tx.inbox_add_and_load("billing", "m1", "s1") == (True, saga("s1"))
        assert await tx.inbox_add_and_load("billing", "m1", "s1") == (False, None)
        assert await tx.inbox_add_and_load("billing", "m2", "ghost") == (True, None)
    async with store.transaction() as tx:
        assert await tx.inbox_add("billing", "m1") is False
        assert await tx.inbox_add("billing", "m2") is False


async def test_save_step_writes_saga_history_and_outbox_in_order(store: Store) -> None:
    """save_step inserts or updates the saga and appends its history row and outbox rows."""
    async with store.transaction() as tx:
        await tx.save_step(
            saga("s1"), expected_version=None, history=step("s1", 1), outbox=[outgoing("s1/1/0")]
        )
    paid = saga("s1", version=2, state="paid", deadline_at=300.0, reason="ok")
    out = [outgoing(f"s1/2/{n}", mandatory=n % 2 == 0, saga_id="s1") for n in range(3)]
    async with store.transaction() as tx:
        await tx.save_step(paid, expected_version=1, history=step("s1", 2, note="n"), outbox=out)
        await tx.save_step(
            saga("s1", version=3, state="done"),
            expected_version=2,
            history=step("s1", 3, emitted=["x", "y"]),
            outbox=[],
        )
    assert await store.get_saga("s1") == saga("s1", version=3, state="done")
    assert await store.history("s1") == [
        step("s1", 1),
        step("s1", 2, note="n"),
        step("s1", 3, emitted=["x", "y"]),
    ]
    pending = await store.pending_outbox()
    assert ids(pending) == ["s1/1/0", "s1/2/0", "s1/2/1", "s1/2/2"]
    assert [row.mandatory for row in pending[1:]] == [True, False, True]
    assert pending[2] == msgspec.structs.replace(out[1], position=pending[2].position)


async def test_save_step_conflicts_write_nothing_and_the_transaction_goes_on(
    store: Store,
) -> None:
    """SagaExists / ConcurrencyConflict from save_step leave no history or outbox row behind."""
    async with store.transaction() as tx:
        await tx.insert(saga("s1"))
    async with store.transaction() as tx:
        with pytest.raises(SagaExists):
            await tx.save_step(
                saga("s1", state="again"),
                expected_version=None,
                history=step("s1", 1),
                outbox=[outgoing("dup/1/0")],
            )
        with pytest.raises(ConcurrencyConflict):
            await tx.save_step(
                saga("s1", version=3),
                expected_version=2,
                history=step("s1", 3),
                outbox=[outgoing("stale/3/0")],
            )
        await tx.add_outbox([outgoing("after")])
    assert await store.get_saga("s1") == saga("s1")
    assert await store.history("s1") == []
    assert ids(await store.pending_outbox()) == ["after"]


async def test_failed_transaction_rolls_back_everything(store: Store) -> None:
    """An exception in the block undoes its inbox row, inserts, updates, history and outbox."""
    async with store.transaction() as tx:
        await tx.insert(saga("kept"))

    async def doomed() -> None:
        async with store.transaction() as tx:
            assert await tx.inbox_add("billing", "m1")
            await tx.insert(saga("s1"))
            await tx.update(saga("kept", version=2, state="changed"), expected_version=1)
            await tx.add_history(step("s1", 1))
            await tx.add_outbox([outgoing("o1"), outgoing("o2")])
            raise Boom

    with pytest.raises(Boom):
        await doomed()
    assert await store.get_saga("s1") is None
    assert await store.get_saga("kept") == saga("kept")
    assert await store.history("s1") == []
    assert await store.pending_outbox() == []
    async with store.transaction() as tx:
        assert await tx.inbox_add("billing", "m1")


async def test_cancelled_transaction_rolls_back(store: Store) -> None:
    """A transaction whose task is cancelled inside the block commits nothing."""
    inside = asyncio.Event()

    async def stuck() -> None:
        async with store.transaction() as tx:
            await tx.insert(saga("s1"))
            await tx.add_outbox([outgoing("o1")])
            inside.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(stuck())
    await inside.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await store.get_saga("s1") is None
    assert await store.pending_outbox() == []
    async with store.transaction() as tx:
        await tx.insert(saga("s1"))
    assert await store.get_saga("s1") == saga("s1")


async def test_list_sagas_filters_and_orders_newest_first(store: Store) -> None:
    """list_sagas filters by status and by saga name, newest created first, up to limit."""
    async with store.transaction() as tx:
        await tx.insert(saga("b", created_at=2.0, saga="OrderSaga", status=SagaStatus.COMPLETED))
        await tx.insert(saga("d", created_at=4.0, saga="RefundSaga", status=SagaStatus.RUNNING))
        await tx.insert(saga("a", created_at=1.0, saga="OrderSaga", status=SagaStatus.RUNNING))
        await tx.insert(saga("c", created_at=3.0, saga="OrderSaga", status=SagaStatus.RUNNING))

    async def listed(**filters: Any) -> list[str]:
        return [record.saga_id for record in await store.list_sagas(**filters)]

    assert await listed() == ["d", "c", "b", "a"]
    assert await listed(status=SagaStatus.RUNNING) == ["d", "c", "a"]
    assert await listed(saga="OrderSaga") == ["c", "b", "a"]
    assert await listed(saga="OrderSaga", status=SagaStatus.RUNNING) == ["c", "a"]
    assert await listed(status=SagaStatus.ABORTED) == []
    assert await listed(limit=2) == ["d", "c"]
    assert (await store.list_sagas(saga="RefundSaga"))[0] == saga(
        "d", created_at=4.0, saga="RefundSaga", status=SagaStatus.RUNNING
    )


# -- history ------------------------------------------------------------------------------------


async def test_history_keeps_the_order_rows_were_added(store: Store) -> None:
    """history returns a saga's rows oldest first with every field, apart from other sagas'."""
    first = step("s1", 1, emitted=["c1", "c2"], note="started")
    other = step("s2", 1)
    second = step("s1", 2, status=SagaStatus.COMPENSATING, emitted=[])
    ignored = step("s1", 2, message_type="Late", from_state="shipping", to_state="shipping")
    async with store.transaction() as tx:
        await tx.add_history(first)
        await tx.add_history(other)
    async with store.transaction() as tx:
        await tx.add_history(second)
        await tx.add_history(ignored)
    assert await store.history("s1") == [first, second, ignored]
    assert await store.history("s2") == [other]
    assert await store.history("nope") == []


# -- outbox -------------------------------------------------------------------------------------


async def test_outbox_rows_come_back_in_position_order(store: Store) -> None:
    """pending_outbox returns committed rows oldest first, every field intact, up to limit."""
    a = outgoing("a", saga_id="s1", mandatory=False, destination="billing", created_at=5.5)
    async with store.transaction() as tx:
        await tx.add_outbox([a, outgoing("b", body=b"\x00\xff")])
    async with store.transaction() as tx:
        await tx.add_outbox([outgoing("c")])
        await tx.add_outbox([])
        await tx.add_outbox([outgoing("d"), outgoing("e")])
    pending = await store.pending_outbox()
    assert ids(pending) == ["a", "b", "c", "d", "e"]
    positions = [row.position for row in pending]
    assert positions == sorted(set(positions))
    assert pending[0] == msgspec.structs.replace(a, position=pending[0].position)
    assert pending[1].body == b"\x00\xff"
    assert ids(await store.pending_outbox(limit=2)) == ["a", "b"]


async def test_mark_sent_removes_rows_from_pending(store: Store) -> None:
    """mark_sent takes rows out of pending_outbox; unknown and repeated ids are ignored."""
    async with store.transaction() as tx:
        await tx.add_outbox([outgoing("a"), outgoing("b"), outgoing("c")])
    await store.mark_sent(["a", "c", "unknown"])
    assert ids(await store.pending_outbox()) == ["b"]
    await store.mark_sent([])
    await store.mark_sent(["a", "b"])
    assert await store.pending_outbox() == []


async def test_stats_count_pending_rows_their_oldest_and_the_inbox(store: Store) -> None:
    """stats() counts unsent outbox rows, dates the oldest of them and counts inbox rows."""
    empty = await store.stats()
    assert (empty.outbox_pending, empty.oldest_pending_at, empty.inbox_rows) == (0, None, 0)
    async with store.transaction() as tx:
        assert await tx.inbox_add("orders", "m-1")
        assert await tx.inbox_add("payment", "m-1")
        await tx.add_outbox(
            [outgoing("a", created_at=10.5), outgoing("b", created_at=12.0), outgoing("c")]
        )
    stats = await store.stats()
    assert (stats.outbox_pending, stats.inbox_rows) == (3, 2)
    assert stats.oldest_pending_at == 10.5  # "c" was created at 100.0
    await store.mark_sent(["a"])
    stats = await store.stats()
    assert (stats.outbox_pending, stats.oldest_pending_at) == (2, 12.0)


async def test_shared_secret_is_the_first_writers(store: Store) -> None:
    """The first candidate becomes the store's secret; later ones get it back."""
    assert isinstance(store, SecretKeeper)
    assert await store.shared_secret("first-candidate-0123") == "first-candidate-0123"
    assert await store.shared_secret("second-candidate-0123") == "first-candidate-0123"


async def test_racing_shared_secrets_agree(store: Store) -> None:
    """Ten concurrent first calls all get one of the candidates, the same one."""
    got = await asyncio.gather(
        *(store.shared_secret(f"candidate-{n:02d}-xxxxxx") for n in range(10))
    )
    assert len(set(got)) == 1
    assert got[0].startswith("candidate-")


@pytest.mark.parametrize("store_kind", SQL_KINDS, indirect=True)
async def test_shared_secret_is_shared_by_processes_and_survives_a_reopen(
    make_store: MakeStore,
) -> None:
    """Two stores on one database (two workers) get one secret, and a reopened store keeps it."""
    one, two = await make_store(), await make_store()
    first, second = await asyncio.gather(
        one.shared_secret("from-worker-one-0123"), two.shared_secret("from-worker-two-0123")
    )
    assert first == second
    assert isinstance(one, SecretKeeper)
    await one.close()
    assert await (await make_store()).shared_secret("a-later-candidate-01") == first


@pytest.mark.parametrize("store_kind", SQL_KINDS, indirect=True)
async def test_committed_rows_survive_a_reopened_store(make_store: MakeStore) -> None:
    """Outbox rows, sagas and history outlive the store object that wrote them."""
    writer = await make_store()
    async with writer.transaction() as tx:
        await tx.insert(saga("s1"))
        await tx.add_history(step("s1", 1))
        await tx.add_outbox([outgoing("a"), outgoing("b")])
    await writer.close()
    reader = await make_store()
    assert ids(await reader.pending_outbox()) == ["a", "b"]
    assert await reader.get_saga("s1") == saga("s1")
    assert await reader.history("s1") == [step("s1", 1)]
    await reader.mark_sent(["a"])
    await reader.close()
    assert ids(await (await make_store()).pending_outbox()) == ["b"]


@pytest.mark.parametrize("store_kind", SQL_KINDS, indirect=True)
async def test_sent_rows_are_kept_for_the_retention_then_pruned(make_store: MakeStore) -> None:
    """A sent outbox row keeps its sent_at until outbox_retention has passed; then the next
    prune_outbox (not mark_sent, which stays off the delete) removes it."""
    now = [1000.0]
    store = await make_store(clock=lambda: now[0], outbox_retention=100.0)
    async with store.transaction() as tx:
        await tx.add_outbox([outgoing("a"), outgoing("b"), outgoing("c")])
    await store.mark_sent(["a"])
    now[0] = 1070.0
    await store.mark_sent(["b"])
    sql = "SELECT message_id, sent_at FROM leveret_outbox ORDER BY position"
    async with store.transaction() as tx:
        assert await tx.fetchall(sql) == [("a", 1000.0), ("b", 1070.0), ("c", None)]
    now[0] = 1150.0
    await store.mark_sent(["c"])
    async with store.transaction() as tx:
        assert await tx.fetchall(sql) == [("a", 1000.0), ("b", 1070.0), ("c", 1150.0)]
    assert await store.prune_outbox() == 1
    async with store.transaction() as tx:
        assert await tx.fetchall(sql) == [("b", 1070.0), ("c", 1150.0)]


@pytest.mark.parametrize("store_kind", SQL_KINDS, indirect=True)
async def test_zero_retention_deletes_sent_rows(make_store: MakeStore) -> None:
    """With outbox_retention=0 mark_sent deletes the rows."""
    store = await make_store(outbox_retention=0.0)
    async with store.transaction() as tx:
        await tx.add_outbox([outgoing("a"), outgoing("b")])
    await store.mark_sent(["a"])
    async with store.transaction() as tx:
        assert await tx.fetchall("SELECT message_id FROM leveret_outbox") == [("b",)]


# -- service tables -----------------------------------------------------------------------------


@pytest.mark.parametrize("store_kind", SQL_KINDS, indirect=True)
async def test_service_sql_commits_and_rolls_back_with_the_transaction(store: Store) -> None:
    """execute/fetchone/fetchall with ? placeholders commit and roll back with the outbox rows."""
    await store.setup(ORDERS_DDL)
    insert = "INSERT INTO orders (id, total, note) VALUES (?, ?, 'why? because')"
    async with store.transaction() as tx:
        await tx.execute(insert, "o1", 10)
        await tx.execute(insert, "o2", 20)
        assert await tx.fetchone("SELECT total, note FROM orders WHERE id = ?", "o1") == (
            10,
            "why? because",
        )

    async def doomed() -> None:
        async with store.transaction() as tx:
            await tx.execute(insert, "o3", 30)
            await tx.execute("UPDATE orders SET total = ? WHERE id = ?", 11, "o1")
            await tx.add_outbox([outgoing("x")])
            raise Boom

    with pytest.raises(Boom):
        await doomed()
    async with store.transaction() as tx:
        assert await tx.fetchall("SELECT id, total FROM orders ORDER BY id") == [
            ("o1", 10),
            ("o2", 20),
        ]
        assert await tx.fetchone("SELECT id FROM orders WHERE total > ?", 100) is None
        assert await tx.fetchall("SELECT id FROM orders WHERE total > ?", 100) == []
    assert await store.pending_outbox() == []


@pytest.mark.parametrize("store_kind", SQL_KINDS, indirect=True)
async def test_service_sql_executemany_runs_once_per_row(store: Store) -> None:
    """executemany runs a ? statement for every row of arguments, in the caller's transaction:
    it commits with it and rolls back with it (a failing row included); no rows does nothing."""
    await store.setup(ORDERS_DDL)
    insert = "INSERT INTO orders (id, total, note) VALUES (?, ?, ?)"
    async with store.transaction() as tx:
        await tx.executemany(insert, [("o1", 10, "why?"), ("o2", 20, None), ("o3", 30, "x")])
        await tx.executemany(insert, [])
        await tx.executemany("UPDATE orders SET total = total + ? WHERE id = ?", [(1, "o1")])

    async def doomed() -> None:
        async with store.transaction() as tx:
            await tx.executemany(insert, [("o4", 40, None), ("o1", 50, None)])

    with pytest.raises((sqlite3.IntegrityError, asyncpg.UniqueViolationError)):
        await doomed()
    async with store.transaction() as tx:
        assert await tx.fetchall("SELECT id, total, note FROM orders ORDER BY id") == [
            ("o1", 11, "why?"),
            ("o2", 20, None),
            ("o3", 30, "x"),
        ]


async def test_memory_store_has_no_service_tables() -> None:
    """The memory store's execute/executemany/fetchone/fetchall raise ConfigurationError naming
    SQL stores."""
    store = MemoryStore()
    async with store.transaction() as tx:
        with pytest.raises(ConfigurationError, match="use sqlite or postgres"):
            await tx.execute("SELECT 1")
        with pytest.raises(ConfigurationError, match="use sqlite or postgres"):
            await tx.executemany("SELECT ?", [(1,)])
        with pytest.raises(ConfigurationError):
            await tx.fetchone("SELECT 1")
        with pytest.raises(ConfigurationError):
            await tx.fetchall("SELECT 1")


# -- URLs and store-specific behaviour ----------------------------------------------------------


def test_store_from_url_picks_the_implementation(tmp_path: Any) -> None:
    """store_from_url maps memory://, sqlite:// and postgres(ql):// to their stores, lazily."""
    assert isinstance(store_from_url("memory://"), MemoryStore)
    relative = store_from_url("sqlite:///data/app.db")
    assert isinstance(relative, SqliteStore)
    assert relative.path == "data/app.db"
    absolute = store_from_url(f"sqlite:///{tmp_path}/app.db")
    assert isinstance(absolute, SqliteStore)
    assert absolute.path == f"{tmp_path}/app.db"
    memory = store_from_url("sqlite://:memory:")
    assert isinstance(memory, SqliteStore)
    assert memory.path == ":memory:"
    assert isinstance(store_from_url("postgresql://app@db.invalid/shop"), PostgresStore)
    assert isinstance(store_from_url("postgres://app@db.invalid/shop"), PostgresStore)


@pytest.mark.parametrize("url", ["mysql://app:s3cret@db/shop", "redis://db", "shop.db", ""])
def test_store_from_url_rejects_unknown_schemes(url: str) -> None:
    """Another scheme raises ConfigurationError listing the supported ones, without a password."""
    with pytest.raises(ConfigurationError, match="memory://") as caught:
        store_from_url(url)
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize(
    "url",
    ["sqlite://", "sqlite:///", "sqlite://host/app.db", "sqlite:///app.db?mode=ro"],
)
def test_sqlite_store_rejects_malformed_urls(url: str) -> None:
    """A SQLite URL without a file, with a host or with an unknown option is refused."""
    with pytest.raises(ConfigurationError, match="sqlite"):
        SqliteStore(url)


async def test_sqlite_relative_path_and_memory_urls_work(tmp_path: Any, monkeypatch: Any) -> None:
    """sqlite:///relative.db opens a file under the working directory; :memory: needs no file."""
    monkeypatch.chdir(tmp_path)
    for url in ("sqlite:///relative.db", "sqlite://:memory:"):
        store = SqliteStore(url)
        try:
            await store.setup()
            async with store.transaction() as tx:
                await tx.insert(saga("s1"))
            assert await store.get_saga("s1") == saga("s1")
        finally:
            await store.close()
    assert (tmp_path / "relative.db").exists()


@pytest.mark.parametrize("store_kind", ["sqlite"], indirect=True)
async def test_sqlite_file_runs_in_wal_mode(store: Store) -> None:
    """A SQLite file store uses WAL journaling with synchronous=NORMAL."""
    async with store.transaction() as tx:
        assert await tx.fetchone("PRAGMA journal_mode") == ("wal",)
        assert await tx.fetchone("PRAGMA synchronous") == (1,)


@pytest.mark.parametrize("store_kind", ["sqlite"], indirect=True)
async def test_sqlite_store_call_inside_own_transaction_fails_fast(store: Store) -> None:
    """A store call from inside the same task's SQLite transaction raises instead of hanging."""
    async with store.transaction():
        with pytest.raises(LeveretError, match="inside a transaction"):
            await store.get_saga("s1")
        with pytest.raises(LeveretError, match="inside a transaction"):
            async with store.transaction():
                pass


def test_sqlite_options_come_from_the_url() -> None:
    """busy_timeout and outbox_retention query parameters override the defaults."""
    store = SqliteStore("sqlite:///app.db?busy_timeout=1.5&outbox_retention=0")
    assert (store.path, store.config.busy_timeout, store.config.outbox_retention) == (
        "app.db",
        1.5,
        0.0,
    )
    with pytest.raises(ConfigurationError, match="busy_timeout"):
        SqliteStore("sqlite:///app.db?busy_timeout=soon")


def test_postgres_options_come_from_the_url() -> None:
    """schema, pool sizes and timeouts are read from the URL; other parameters go to asyncpg."""
    store = PostgresStore(
        "postgresql://app:s3cret@db.invalid/shop?schema=billing&min_size=2&max_size=4"
        "&command_timeout=5&connect_timeout=3&outbox_retention=60&sslmode=disable"
    )
    config = store.config
    assert (config.schema, config.min_size, config.max_size) == ("billing", 2, 4)
    assert (config.command_timeout, config.connect_timeout, config.outbox_retention) == (
        5.0,
        3.0,
        60.0,
    )
    assert "sslmode=disable" in store.url
    assert "schema" not in store._dsn


@pytest.mark.parametrize(
    "query",
    ["schema=bad-name", "schema=x;drop", "max_size=0", "min_size=5&max_size=2", "min_size=two"],
)
def test_postgres_rejects_bad_options_without_leaking_the_password(query: str) -> None:
    """An invalid option raises ConfigurationError whose message has no password."""
    with pytest.raises(ConfigurationError) as caught:
        PostgresStore(f"postgresql://app:s3cret@db.invalid/shop?{query}")
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app:s3cret@127.0.0.1:1/shop?connect_timeout=5",
        "postgresql://app@127.0.0.1:1/shop?password=s3cret&connect_timeout=5",
    ],
)
async def test_postgres_password_never_appears(url: str) -> None:
    """The password is in neither the store's url, its repr, nor the error when unreachable."""
    store = PostgresStore(url)
    assert "s3cret" not in store.url
    assert "s3cret" not in repr(store)
    try:
        with pytest.raises(StoreUnreachable) as caught:
            await store.setup()
    finally:
        await store.close()
    error: BaseException | None = caught.value
    assert caught.value.url == store.url
    while error is not None:
        assert "s3cret" not in str(error)
        assert "s3cret" not in repr(error)
        error = error.__cause__ or error.__context__


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT ? , ?", "SELECT $1 , $2"),
        ("SELECT '?', ?, 'it''s ?'", "SELECT '?', $1, 'it''s ?'"),
        ('SELECT "odd?col" FROM t WHERE a = ?', 'SELECT "odd?col" FROM t WHERE a = $1'),
        ("SELECT ? -- why?\n, ?", "SELECT $1 -- why?\n, $2"),
        ("SELECT /* ? */ ?", "SELECT /* ? */ $1"),
        ("SELECT $$ ? $$, $fn$ ? $fn$, ?", "SELECT $$ ? $$, $fn$ ? $fn$, $1"),
        (r"SELECT E'\' ?', ?", r"SELECT E'\' ?', $1"),
        ("SELECT 1", "SELECT 1"),
    ],
)
def test_positional_params_rewrites_only_real_placeholders(sql: str, expected: str) -> None:
    """? becomes $1, $2... except inside strings, quoted names, comments and dollar quotes."""
    assert positional_params(sql) == expected
