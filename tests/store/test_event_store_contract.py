"""The event store contract: one suite, run unchanged on the memory, SQLite and PostgreSQL stores.

The first half drives the port (``event_store(tx)``) directly; the second runs aggregates in a
``transactional=True`` handler of an app on the in-memory broker with the store under test, where
the events must land in the same transaction as the inbox row and the outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg
import msgspec
import pytest

from framework import App, AppConfig, Command, Context, Event, RetryPolicy, Service, upcaster
from framework.eventsourcing import (
    EVENT_STORE_SCHEMA,
    Aggregate,
    EventDecoder,
    EventStoreError,
    NewEvent,
    Snapshot,
    StoredEvent,
    StreamAppend,
    StreamConflict,
    applies,
    event_store,
    read_all,
    read_stream,
    save,
)
from framework.store import ConcurrencyConflict, OutboxRow, Store
from framework.testing import Harness
from tests.store.conftest import SQL_KINDS, MakeStore

# -- contracts and an aggregate of the tests' own ---------------------------------------------


class DepositedV1(Event):
    __wire_name__ = "es_test.deposited"
    __wire_version__ = 1

    account: str
    amount: float  # in units: version 2 counts cents


class Deposited(Event):
    __wire_name__ = "es_test.deposited"
    __wire_version__ = 2

    account: str
    cents: int


class Withdrawn(Event):
    __wire_name__ = "es_test.withdrawn"

    account: str
    cents: int


class Deposit(Command):
    __wire_name__ = "es_test.deposit"

    account: str
    cents: int
    fail_after_save: bool = False
    interfere: bool = False
    swallow_conflict: bool = False


@upcaster
def deposited_v1_to_v2(old: DepositedV1) -> Deposited:
    return Deposited(account=old.account, cents=round(old.amount * 100))


class AccountSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    balance: int
    deposits: int


class Account(Aggregate):
    category = "es_test.account"
    upcasters = (deposited_v1_to_v2,)
    snapshot_every = 3
    snapshot_type = AccountSnapshot

    def __init__(self, id: str) -> None:
        super().__init__(id)
        self.balance = 0
        self.deposits = 0

    def deposit(self, cents: int) -> None:
        self.record(Deposited(account=self.id, cents=cents))

    @applies
    def _deposited(self, event: Deposited) -> None:
        self.balance += event.cents
        self.deposits += 1

    @applies
    def _withdrawn(self, event: Withdrawn) -> None:
        self.balance -= event.cents

    def snapshot(self) -> AccountSnapshot:
        return AccountSnapshot(balance=self.balance, deposits=self.deposits)

    def restore(self, snapshot: AccountSnapshot) -> None:
        self.balance, self.deposits = snapshot.balance, snapshot.deposits


# -- helpers ----------------------------------------------------------------------------------


@pytest.fixture
async def es_store(make_store: MakeStore) -> Store:
    """A store with the event store's tables."""
    store = await make_store(setup=False)
    await store.setup(EVENT_STORE_SCHEMA)
    return store


def new(event_id: str, cents: int = 1, account: str = "a") -> NewEvent:
    body = msgspec.json.encode(Deposited(account=account, cents=cents))
    return NewEvent(
        event_id=event_id,
        wire_name=Deposited.__wire_name__,
        wire_version=2,
        body=body,
        correlation_id="corr",
        causation_id="cause",
    )


async def append(
    store: Store, stream: str, events: Sequence[NewEvent], expected: int
) -> list[StoredEvent]:
    async with store.transaction() as tx:
        return await event_store(tx).append(tx, stream, events, expected_version=expected)


async def version_of(store: Store, stream: str) -> int:
    async with store.transaction() as tx:
        return await event_store(tx).stream_version(tx, stream)


# -- the port ---------------------------------------------------------------------------------


async def test_append_then_read_a_stream_and_everything(es_store: Store) -> None:
    """Appended events come back per stream in version order and across streams by position."""
    first = await append(es_store, "acct-1", [new("e1", 10), new("e2", 20)], 0)
    await append(es_store, "acct-2", [new("e3", 30)], 0)
    await append(es_store, "acct-1", [new("e4", 40)], 2)
    assert [(e.version, e.position) for e in first] == [(1, 1), (2, 2)]
    stream = await read_stream(es_store, "acct-1")
    assert [(e.event_id, e.version) for e in stream] == [("e1", 1), ("e2", 2), ("e4", 3)]
    assert stream[0].body == new("e1", 10).body
    assert (stream[0].wire_name, stream[0].wire_version) == ("es_test.deposited", 2)
    assert (stream[0].correlation_id, stream[0].causation_id) == ("corr", "cause")
    assert [e.event_id for e in await read_stream(es_store, "acct-1", from_version=2)] == [
        "e2",
        "e4",
    ]
    assert await read_stream(es_store, "nobody") == []
    everything = await read_all(es_store)
    assert [(e.position, e.stream, e.event_id) for e in everything] == [
        (1, "acct-1", "e1"),
        (2, "acct-1", "e2"),
        (3, "acct-2", "e3"),
        (4, "acct-1", "e4"),
    ]
    assert await version_of(es_store, "acct-1") == 3
    assert await version_of(es_store, "nobody") == 0


async def test_read_all_from_a_position_with_a_limit(es_store: Store) -> None:
    """read_all starts after the given position and returns at most ``limit`` events."""
    for n in range(5):
        await append(es_store, f"s-{n % 2}", [new(f"e{n}")], n // 2)
    page = await read_all(es_store, from_position=1, limit=2)
    assert [e.position for e in page] == [2, 3]
    assert [e.position for e in await read_all(es_store, from_position=3)] == [4, 5]
    assert await read_all(es_store, from_position=5) == []


async def test_wrong_expected_version_is_a_conflict_naming_stream_and_versions(
    es_store: Store,
) -> None:
    """Appending at a stale version fails with StreamConflict(stream, expected, actual)."""
    await append(es_store, "acct-1", [new("e1"), new("e2")], 0)
    with pytest.raises(
        StreamConflict, match=r"stream 'acct-1' is at version 2, not the expected 0"
    ) as caught:
        await append(es_store, "acct-1", [new("e3")], 0)
    assert (caught.value.stream, caught.value.expected, caught.value.actual) == ("acct-1", 0, 2)
    assert isinstance(caught.value, ConcurrencyConflict)  # transactional handlers retry it
    with pytest.raises(StreamConflict) as ahead:
        await append(es_store, "acct-1", [new("e3")], 5)
    assert (ahead.value.expected, ahead.value.actual) == (5, 2)
    with pytest.raises(StreamConflict) as missing:
        await append(es_store, "acct-9", [new("e3")], 1)
    assert (missing.value.expected, missing.value.actual) == (1, 0)
    assert [e.event_id for e in await read_all(es_store)] == ["e1", "e2"]


async def test_a_conflict_in_append_many_rolls_back_every_stream(es_store: Store) -> None:
    """When one stream of an append conflicts, the transaction leaves every stream as it was."""
    await append(es_store, "b", [new("b1")], 0)
    with pytest.raises(StreamConflict, match="'b'"):
        async with es_store.transaction() as tx:
            await event_store(tx).append_many(
                tx,
                [
                    StreamAppend(stream="a", expected_version=0, events=[new("a1")]),
                    StreamAppend(stream="b", expected_version=0, events=[new("b2")]),
                ],
            )
    assert await read_stream(es_store, "a") == []
    assert [e.event_id for e in await read_all(es_store)] == ["b1"]
    # The position counter rolled back with it: the next event is number 2.
    assert [e.position for e in await append(es_store, "a", [new("a1")], 0)] == [2]


async def test_a_stream_named_twice_in_one_append_is_refused(es_store: Store) -> None:
    """append_many refuses a stream given twice instead of guessing the versions."""
    from framework.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="appears twice"):
        async with es_store.transaction() as tx:
            await event_store(tx).append_many(
                tx,
                [
                    StreamAppend(stream="a", expected_version=0, events=[new("1")]),
                    StreamAppend(stream="a", expected_version=1, events=[new("2")]),
                ],
            )


async def test_a_batch_of_events_lands_with_consecutive_versions_and_positions(
    es_store: Store,
) -> None:
    """A multi-event append_many numbers each stream from its expected version and the batch's
    positions in the order given, and reads back exactly as it returned."""
    first = await append(es_store, "a", [new("a1", 1), new("a2", 2)], 0)
    async with es_store.transaction() as tx:
        batch = await event_store(tx).append_many(
            tx,
            [
                StreamAppend(
                    stream="b",
                    expected_version=0,
                    events=[new(f"b{n}", n, account="b") for n in (1, 2, 3)],
                ),
                StreamAppend(stream="a", expected_version=2, events=[new("a3", 3), new("a4", 4)]),
            ],
        )
    assert [(e.stream, e.version, e.position, e.event_id) for e in batch] == [
        ("b", 1, 3, "b1"),
        ("b", 2, 4, "b2"),
        ("b", 3, 5, "b3"),
        ("a", 3, 6, "a3"),
        ("a", 4, 7, "a4"),
    ]
    assert await read_all(es_store) == first + batch
    assert await read_stream(es_store, "a") == first + batch[3:]
    assert (await version_of(es_store, "a"), await version_of(es_store, "b")) == (4, 3)


async def test_a_large_batch_lands_in_order(es_store: Store) -> None:
    """Hundreds of events in one append get versions and positions 1..n, in the order given."""
    stored = await append(es_store, "big", [new(f"e{n}", n) for n in range(1, 501)], 0)
    assert [(e.version, e.position) for e in stored] == [(n, n) for n in range(1, 501)]
    assert [e.event_id for e in await read_stream(es_store, "big")] == [
        f"e{n}" for n in range(1, 501)
    ]


async def test_a_conflicting_batch_leaves_nothing_behind(es_store: Store) -> None:
    """A multi-event batch at a stale version stores none of its events and takes no position."""
    await append(es_store, "a", [new("a1"), new("a2")], 0)
    with pytest.raises(StreamConflict) as caught:
        await append(es_store, "a", [new("x1"), new("x2"), new("x3")], 1)
    assert (caught.value.expected, caught.value.actual) == (1, 2)
    assert [e.event_id for e in await read_all(es_store)] == ["a1", "a2"]
    after = await append(es_store, "a", [new("a3"), new("a4")], 2)
    assert [(e.version, e.position) for e in after] == [(3, 3), (4, 4)]


@pytest.mark.parametrize("store_kind", SQL_KINDS, indirect=True)
async def test_a_batch_failing_midway_leaves_nothing_behind(es_store: Store) -> None:
    """A batch whose third event reuses a stored event id fails as a whole: none of its events,
    no stream version and no position is kept."""
    await append(es_store, "a", [new("a1")], 0)
    with pytest.raises((sqlite3.IntegrityError, asyncpg.UniqueViolationError)):
        await append(es_store, "b", [new("b1"), new("b2"), new("a1")], 0)
    assert [e.event_id for e in await read_all(es_store)] == ["a1"]
    assert await version_of(es_store, "b") == 0
    assert [e.position for e in await append(es_store, "b", [new("b1"), new("b2")], 0)] == [2, 3]


@pytest.fixture
async def two_stores(store_kind: str, es_store: Store, make_store: MakeStore) -> list[Store]:
    """Two handles on the test's database, like two processes (memory: one store, shared)."""
    if store_kind == "memory":
        return [es_store, es_store]
    return [es_store, await make_store()]


async def test_concurrent_appends_to_one_stream_one_winner_per_version(
    two_stores: list[Store],
) -> None:
    """Two tasks appending at the same version: exactly one wins, the other conflicts."""

    async def writer(store: Store, event_id: str, barrier: asyncio.Barrier) -> Any:
        expected = await version_of(store, "hot")
        await barrier.wait()  # both have read the same version
        try:
            await append(store, "hot", [new(event_id)], expected)
        except StreamConflict as exc:
            return (exc.expected, exc.actual)
        return expected

    for round_ in range(4):
        barrier = asyncio.Barrier(2)
        results = await asyncio.gather(
            *(writer(s, f"w{i}-{round_}", barrier) for i, s in enumerate(two_stores))
        )
        # The loser's (expected, actual), then the winner's expected version.
        assert sorted(results, key=str) == [(round_, round_ + 1), round_]
    events = await read_stream(two_stores[0], "hot")
    assert [e.version for e in events] == [1, 2, 3, 4]


async def test_concurrent_appends_with_retry_all_land_with_contiguous_versions(
    two_stores: list[Store],
) -> None:
    """Two tasks that retry on conflict both get all their events in, versions 1..n in order."""
    per_task = 8
    barrier = asyncio.Barrier(2)
    conflicts = 0

    async def writer(store: Store, name: str) -> None:
        nonlocal conflicts
        await barrier.wait()
        for n in range(per_task):
            while True:
                expected = await version_of(store, "hot")
                try:
                    await append(store, "hot", [new(f"{name}-{n}")], expected)
                    break
                except StreamConflict:
                    conflicts += 1

    await asyncio.gather(*(writer(s, f"w{i}") for i, s in enumerate(two_stores)))
    events = await read_stream(two_stores[0], "hot")
    assert [e.version for e in events] == list(range(1, 2 * per_task + 1))
    for name in ("w0", "w1"):  # each task's events, in its own order
        assert [e.event_id for e in events if e.event_id.startswith(name)] == [
            f"{name}-{n}" for n in range(per_task)
        ]
    positions = [e.position for e in await read_all(two_stores[0])]
    assert positions == list(range(1, 2 * per_task + 1))


@pytest.mark.parametrize("store_kind", [pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_postgres_racing_transactions_conflict_on_the_stream_row(
    two_stores: list[Store],
) -> None:
    """On PostgreSQL, two open transactions appending at one version: the second waits for the
    first to commit, then conflicts; nothing of it is stored."""
    barrier = asyncio.Barrier(2)

    async def writer(store: Store, name: str) -> Any:
        try:
            async with store.transaction() as tx:
                events = event_store(tx)
                expected = await events.stream_version(tx, "hot")
                await barrier.wait()  # both transactions are open and read version 0
                await events.append(tx, "hot", [new(name)], expected_version=expected)
        except StreamConflict as exc:
            return (exc.expected, exc.actual)
        return "won"

    results = await asyncio.gather(writer(two_stores[0], "w0"), writer(two_stores[1], "w1"))
    assert sorted(results, key=str) == [(0, 1), "won"]  # lost (expected 0, actual 1), won
    assert [e.version for e in await read_all(two_stores[0])] == [1]


async def test_concurrent_appends_to_different_streams_keep_one_gapless_order(
    two_stores: list[Store],
) -> None:
    """Positions from concurrent writers of different streams run 1..n with no gap."""

    async def writer(store: Store, stream: str) -> None:
        for n in range(10):
            await append(store, stream, [new(f"{stream}-{n}")], n)

    await asyncio.gather(writer(two_stores[0], "left"), writer(two_stores[1], "right"))
    everything = await read_all(two_stores[0])
    assert [e.position for e in everything] == list(range(1, 21))
    for stream in ("left", "right"):
        assert [e.version for e in everything if e.stream == stream] == list(range(1, 11))


async def test_snapshots_keep_the_newest(es_store: Store) -> None:
    """A snapshot replaces an older one of its stream, never a newer one."""

    def snap(version: int, state: bytes) -> Snapshot:
        return Snapshot(stream="s", version=version, kind="k", schema_version=1, state=state)

    async with es_store.transaction() as tx:
        assert await event_store(tx).load_snapshot(tx, "s") is None
        await event_store(tx).save_snapshot(tx, snap(3, b'{"n":3}'))
    async with es_store.transaction() as tx:
        await event_store(tx).save_snapshot(tx, snap(6, b'{"n":6}'))
        await event_store(tx).save_snapshot(tx, snap(4, b'{"n":4}'))
    async with es_store.transaction() as tx:
        found = await event_store(tx).load_snapshot(tx, "s")
    assert found is not None
    assert (found.version, found.state, found.kind) == (6, b'{"n":6}', "k")


async def test_events_outbox_and_inbox_roll_back_together(es_store: Store) -> None:
    """A failing transaction leaves neither its events nor its outbox rows nor its inbox row."""
    row = OutboxRow(
        message_id="m-1",
        exchange="x",
        routing_key="k",
        body=b"{}",
        properties=b"{}",
        created_at=1.0,
    )

    async def failing() -> None:
        async with es_store.transaction() as tx:
            assert await tx.inbox_add("svc", "in-1")
            await event_store(tx).append(tx, "acct-1", [new("e1")], expected_version=0)
            await tx.add_outbox([row])
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await failing()
    assert await read_all(es_store) == []
    assert await es_store.pending_outbox() == []
    async with es_store.transaction() as tx:
        assert await tx.inbox_add("svc", "in-1")  # free again
        assert await event_store(tx).stream_version(tx, "acct-1") == 0


# -- aggregates in a transactional handler ----------------------------------------------------


class Bank:
    """An app whose ``Deposit`` handler saves an Account, and what it saw."""

    def __init__(self, store: Store) -> None:
        self.attempts: dict[str, int] = {}
        bank = Service("bank", schema=EVENT_STORE_SCHEMA, sends=[Deposited])

        @bank.command(transactional=True, retry=RetryPolicy(immediate=0, delays=()))
        async def deposit(cmd: Deposit, ctx: Context) -> None:
            self.attempts[ctx.message_id] = self.attempts.get(ctx.message_id, 0) + 1
            account = await Account.load(ctx, cmd.account, lock=not cmd.interfere)
            if cmd.interfere and self.attempts[ctx.message_id] == 1:
                # Another writer gets in between load and save (in this transaction, so that
                # it also rolls back): the save must conflict and the handler run again.
                await event_store(ctx.tx).append(
                    ctx.tx,
                    account.stream,
                    [new("intruder", 1000, cmd.account)],
                    expected_version=account.version,
                )
            account.deposit(cmd.cents)
            if cmd.swallow_conflict:  # what not to do; still, nothing unsaved may go out
                with contextlib.suppress(StreamConflict):
                    await save(ctx, account)
                return
            await save(ctx, account)
            if cmd.fail_after_save:
                raise RuntimeError("failed after saving")

        self.app = App([bank], store=store, config=AppConfig(prefix="es", upgrade_db=True))


@pytest.fixture
async def bank(es_store: Store) -> AsyncIterator[tuple[Bank, Harness]]:
    """The bank app running on the in-memory broker with the store under test."""
    bank = Bank(es_store)
    async with Harness(bank.app) as harness:
        yield bank, harness


async def deposits(harness: Harness, *commands: Deposit) -> None:
    for cmd in commands:
        await harness.app.send(cmd)
        await harness.settle()  # one at a time: the order of the events is the test's


async def load(store: Store, account: str) -> Account:
    async with store.transaction() as tx:
        return await Account.load(tx, account)


async def test_saved_events_are_stored_and_published_with_the_same_ids(
    bank: tuple[Bank, Harness], es_store: Store
) -> None:
    """Each recorded event is appended to the stream and published once, under its stored id."""
    _, harness = bank
    await deposits(harness, *(Deposit(account="a-1", cents=c) for c in (100, 250, 5)))
    stored = await read_stream(es_store, Account.stream_of("a-1"))
    assert [e.version for e in stored] == [1, 2, 3]
    published = [c for c in harness.emitted_by("bank") if c.wire_name == "es_test.deposited"]
    assert [c.wire.message_id for c in published] == [e.event_id for e in stored]
    assert [msgspec.json.decode(c.wire.body)["cents"] for c in published] == [100, 250, 5]
    assert await es_store.pending_outbox() == []
    account = await load(es_store, "a-1")
    assert (account.balance, account.version, account.recorded) == (355, 3, ())
    first_command = stored[0].causation_id
    # Keyed with the app's secret: nobody who chose the command's id can predict it.
    assert re.fullmatch(
        rf"{re.escape(first_command)}/bank\.deposit/es_test\.account-a-1@1/[0-9a-f]{{16}}",
        stored[0].event_id,
    ), stored[0].event_id


async def test_a_failing_handler_stores_and_publishes_nothing(
    bank: tuple[Bank, Harness], es_store: Store
) -> None:
    """A handler that raises after save leaves no event, no outbox row and publishes nothing."""
    _, harness = bank
    await deposits(harness, Deposit(account="a-1", cents=100, fail_after_save=True))
    dead = harness.app.naming.handler_queue("bank", Deposit.__wire_name__) + ".dlq"
    assert await harness.app.transport.queue_depth(dead) == 1  # it did run, and failed
    assert await read_all(es_store) == []
    assert await es_store.pending_outbox() == []
    assert [c for c in harness.emitted_by("bank") if c.wire_name == "es_test.deposited"] == []


async def test_a_conflict_inside_a_handler_runs_it_again_in_a_fresh_transaction(
    bank: tuple[Bank, Harness], es_store: Store
) -> None:
    """A stream changed between load and save makes save conflict; the handler runs again and
    its event lands once, at the next version."""
    bank_, harness = bank
    await deposits(harness, Deposit(account="a-1", cents=7, interfere=True))
    assert list(bank_.attempts.values()) == [2]
    stored = await read_stream(es_store, Account.stream_of("a-1"))
    assert [(e.version, e.event_id == "intruder") for e in stored] == [(1, False)]
    assert (await load(es_store, "a-1")).balance == 7


async def test_a_conflicting_save_queues_nothing_even_when_the_handler_carries_on(
    bank: tuple[Bank, Harness], es_store: Store
) -> None:
    """save appends before it queues: a conflict leaves no event of it in the outbox, so a
    handler that swallows the error publishes nothing it did not store."""
    _, harness = bank
    await deposits(harness, Deposit(account="a-1", cents=7, interfere=True, swallow_conflict=True))
    stored = await read_stream(es_store, Account.stream_of("a-1"))
    assert [e.event_id for e in stored] == ["intruder"]  # committed with the handler's tx
    assert [c for c in harness.emitted_by("bank") if c.wire_name == "es_test.deposited"] == []
    assert await es_store.pending_outbox() == []


async def test_snapshots_every_n_events_and_loading_starts_from_the_newest(
    bank: tuple[Bank, Harness], es_store: Store
) -> None:
    """With snapshot_every=3, seven events leave a snapshot at version 6 that loading uses."""
    _, harness = bank
    await deposits(harness, *(Deposit(account="a-1", cents=10**n) for n in range(7)))
    stream = Account.stream_of("a-1")
    async with es_store.transaction() as tx:
        snapshot = await event_store(tx).load_snapshot(tx, stream)
    assert snapshot is not None
    assert snapshot.version == 6
    assert msgspec.json.decode(snapshot.state, type=AccountSnapshot).balance == 111111
    account = await load(es_store, "a-1")
    assert (account.balance, account.deposits, account.version) == (1111111, 7, 7)
    # Loading starts at the snapshot: one that disagrees with the events shows through...
    async with es_store.transaction() as tx:
        await event_store(tx).save_snapshot(
            tx, msgspec.structs.replace(snapshot, version=7, state=b'{"balance":-1,"deposits":0}')
        )
    assert (await load(es_store, "a-1")).balance == -1
    # ...unless its schema version is not the class's: then the stream is replayed in full.
    async with es_store.transaction() as tx:
        await event_store(tx).save_snapshot(
            tx,
            msgspec.structs.replace(
                snapshot, version=8, schema_version=2, state=b'{"balance":-1,"deposits":0}'
            ),
        )
    assert (await load(es_store, "a-1")).balance == 1111111


async def test_old_event_versions_are_upcast_when_read(es_store: Store) -> None:
    """A stored version-1 event is read through the upcaster into the current class."""
    old = NewEvent(
        event_id="old-1",
        wire_name=DepositedV1.__wire_name__,
        wire_version=1,
        body=msgspec.json.encode(DepositedV1(account="a-1", amount=12.5)),
    )
    await append(es_store, Account.stream_of("a-1"), [old, new("new-1", 50, "a-1")], 0)
    account = await load(es_store, "a-1")
    assert (account.balance, account.deposits, account.version) == (1300, 2, 2)
    decoder = EventDecoder([Deposited], upcasters=[deposited_v1_to_v2])
    [first, _] = await read_stream(es_store, Account.stream_of("a-1"))
    assert decoder.decode(first) == Deposited(account="a-1", cents=1250)


async def test_events_that_cannot_be_read_back_name_stream_version_and_reason(
    es_store: Store,
) -> None:
    """Unknown types, versions without an upcaster and bad bodies fail with a clear error."""
    stream = Account.stream_of("a-1")
    await append(
        es_store,
        stream,
        [NewEvent(event_id="x", wire_name="es_test.unknown", wire_version=1, body=b"{}")],
        0,
    )
    with pytest.raises(
        EventStoreError, match=r"stream 'es_test.account-a-1' version 1: no event class for "
    ):
        await load(es_store, "a-1")
    decoder = EventDecoder([Deposited])  # no upcaster for version 1
    v1 = StoredEvent(
        position=1,
        stream="s",
        version=4,
        event_id="e",
        wire_name="es_test.deposited",
        wire_version=1,
        body=b'{"account":"a","amount":1.0}',
        recorded_at=0.0,
    )
    with pytest.raises(EventStoreError, match=r"stream 's' version 4: unsupported_version"):
        decoder.decode(v1)
    bad = msgspec.structs.replace(v1, wire_version=2, body=b'{"account":"a","cents":"x"}')
    with pytest.raises(EventStoreError, match=r"validation_error: \$.cents"):
        decoder.decode(bad)


async def test_save_outside_a_transactional_handler_is_refused(es_store: Store) -> None:
    """Saving needs the handler's transaction and outbox; loading a bare transaction is fine."""
    from framework.errors import ConfigurationError

    account = Account("a-1")
    account.deposit(5)
    with pytest.raises(ConfigurationError, match="transactional"):
        await save(_PlainContext(), account)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="no @applies method for Deposit"):
        account.record(Deposit(account="a", cents=1))  # type: ignore[arg-type]


class _PlainContext:
    """What a handler without ``transactional=True`` has: no transaction."""

    tx: Any = None
