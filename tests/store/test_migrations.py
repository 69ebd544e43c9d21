"""Versioned schemas: ``Store.upgrade`` as a deploy step, and workers that only check them."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest

from framework import App, AppConfig, Service
from framework.cli import main
from framework.store import Store
from framework.store.migrations import Migrations, PendingStep, SchemaBehind, Step
from tests.store.conftest import SQL_KINDS, MakeStore

sql_kinds = pytest.mark.parametrize("store_kind", SQL_KINDS, indirect=True)
postgres_only = pytest.mark.parametrize(
    "store_kind", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)

PROJECT = Path(__file__).resolve().parents[2]
TICKETS = Migrations(
    "tickets",
    (
        Step("CREATE TABLE IF NOT EXISTS tickets (id TEXT PRIMARY KEY)"),
        Step(
            "ALTER TABLE tickets ADD COLUMN seat TEXT",
            "CREATE INDEX tickets_seat ON tickets (seat)",
        ),
    ),
)
STEP_ONE = Migrations("tickets", TICKETS.steps[:1])
# leveret's own steps, before any component's.
LEVERET = ["leveret 1", "leveret 2"]


def steps(found: list[PendingStep]) -> list[str]:
    return [str(step) for step in found]


async def versions(store: Store) -> dict[str, int]:
    async with store.transaction() as tx:
        rows = await tx.fetchall("SELECT component, version FROM leveret_schema")
    return {str(name): int(version) for name, version in rows}


@sql_kinds
async def test_upgrade_from_empty_applies_every_step_once(make_store: MakeStore) -> None:
    """An empty database gets leveret's step and each component's, recorded; a second run
    applies nothing."""
    store = await make_store(setup=False)
    assert steps(await store.pending_steps([TICKETS])) == [*LEVERET, "tickets 1", "tickets 2"]
    assert steps(await store.upgrade([TICKETS])) == [*LEVERET, "tickets 1", "tickets 2"]
    assert await store.pending_steps([TICKETS]) == []
    assert await store.upgrade([TICKETS]) == []
    assert await versions(store) == {"leveret": 2, "tickets": 2}
    async with store.transaction() as tx:
        await tx.execute("INSERT INTO tickets (id, seat) VALUES (?, ?)", "t1", "12A")


@sql_kinds
async def test_a_new_step_runs_alone_on_a_database_at_the_previous_version(
    make_store: MakeStore,
) -> None:
    """A database at tickets 1 gets only step 2 (an ALTER TABLE), its rows kept."""
    store = await make_store(setup=False)
    await store.upgrade([STEP_ONE])
    async with store.transaction() as tx:
        await tx.execute("INSERT INTO tickets (id) VALUES (?)", "t1")
    assert steps(await store.upgrade([TICKETS])) == ["tickets 2"]
    async with store.transaction() as tx:
        assert await tx.fetchall("SELECT id, seat FROM tickets") == [("t1", None)]


@sql_kinds
async def test_upgrade_from_a_database_from_before_versioning(make_store: MakeStore) -> None:
    """Tables and rows made by a leveret without leveret_schema (setup() and a service's
    CREATE TABLE IF NOT EXISTS) upgrade to the versioned scheme with their rows."""
    store = await make_store(setup=False)
    await store.setup(STEP_ONE.steps[0].statements)
    async with store.transaction() as tx:
        await tx.execute("INSERT INTO tickets (id) VALUES (?)", "t1")
        await tx.execute("INSERT INTO leveret_inbox VALUES (?, ?, ?)", "c", "m1", 1.0)
        await tx.execute("DROP TABLE leveret_schema")
        await tx.execute("UPDATE leveret_schema_version SET version = 1")
    assert steps(await store.pending_steps([TICKETS])) == [*LEVERET, "tickets 1", "tickets 2"]
    assert steps(await store.upgrade([TICKETS])) == [*LEVERET, "tickets 1", "tickets 2"]
    async with store.transaction() as tx:
        assert await tx.fetchall("SELECT id FROM tickets") == [("t1",)]
        assert await tx.fetchall("SELECT message_id FROM leveret_inbox") == [("m1",)]
        assert await tx.fetchall("SELECT version FROM leveret_schema_version") == [(2,)]


@sql_kinds
async def test_an_app_on_postgresql_refuses_a_schema_that_is_behind(
    make_store: MakeStore, store_kind: str
) -> None:
    """On PostgreSQL a starting app reads the versions and names the missing steps and the
    command that applies them; with upgrade_db=True it applies them itself (on SQLite it
    always may)."""
    store = await make_store(setup=False)
    service = Service("tickets", schema=[*TICKETS.steps])
    app = App([service], store=store, config=AppConfig(prefix="mig"))
    if store_kind == "postgres":
        with pytest.raises(
            SchemaBehind,
            match=r"\(leveret 1, leveret 2, tickets 1, tickets 2\): run `leveret db upgrade",
        ):
            await app.start()
        assert await store.pending_steps(app.migrations) != []
        app = App([service], store=store, config=AppConfig(prefix="mig", upgrade_db=True))
    await app.start()
    try:
        assert await store.pending_steps(app.migrations) == []
    finally:
        await app.stop()


@postgres_only
async def test_two_concurrent_upgrades_apply_each_step_once(
    make_store: MakeStore, store_url: str
) -> None:
    """Two runners at once on PostgreSQL: one waits for the other's advisory lock, both
    succeed, and the step ran once."""
    slow = Migrations(
        "slow",
        (
            Step(
                "CREATE TABLE slow_runs (n INTEGER)",
                "SELECT pg_sleep(0.5)",
                "INSERT INTO slow_runs VALUES (1)",
            ),
        ),
    )
    first, second = await make_store(setup=False), await make_store(setup=False)
    results = await asyncio.gather(first.upgrade([slow]), second.upgrade([slow]))
    assert sorted(len(r) for r in results) == [0, 3]  # leveret 1, 2 + slow 1, by one of them
    async with first.transaction() as tx:
        assert await tx.fetchall("SELECT n FROM slow_runs") == [(1,)]


@postgres_only
async def test_a_worker_start_on_a_current_schema_takes_no_table_lock(
    make_store: MakeStore, store_url: str, postgres_url: str
) -> None:
    """With live transactions holding every table (ROW EXCLUSIVE, as a saga step does), an
    app starts on a current schema: it runs no DDL, which would wait for them. The control:
    setup()'s CREATE INDEX IF NOT EXISTS on the existing index does wait."""
    service = Service("tickets", schema=[*TICKETS.steps])
    store = await make_store(setup=False)
    await store.upgrade([*service.migrations])
    schema = store_url.split("schema=", 1)[1]
    holder = await asyncpg.connect(postgres_url, server_settings={"search_path": schema})
    try:
        await holder.execute("BEGIN")
        await holder.execute(
            "LOCK TABLE leveret_inbox, leveret_sagas, leveret_outbox, leveret_history,"
            " leveret_meta, leveret_schema, tickets IN ROW EXCLUSIVE MODE"
        )
        app = App([service], store=store, config=AppConfig(prefix="mig"))
        await asyncio.wait_for(app.start(), timeout=10)
        await app.stop()
        other = await make_store(setup=False)
        index = "CREATE INDEX IF NOT EXISTS leveret_inbox_created ON leveret_inbox (created_at)"
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(other.setup([index]), timeout=1)
    finally:
        await holder.close()


def test_db_upgrade_and_check_exit_codes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``leveret db upgrade|check``: 0 done or current, 1 steps missing, 2 a bad target, 3 an
    unreachable database; MODULE:APP brings the services' tables."""
    url = f"sqlite:///{tmp_path / 'shop.db'}"
    assert main(["db", "check", url]) == 1
    assert "missing leveret 1" in capsys.readouterr().out
    assert main(["db", "upgrade", url]) == 0
    assert "applied leveret 1" in capsys.readouterr().out
    assert main(["db", "check", url]) == 0
    assert main(["db", "check", "handlers.app:app", "--db-url", url]) == 1
    assert "projection:orders_view 1" in capsys.readouterr().out
    assert main(["db", "upgrade", "handlers.app:app", "--db-url", url]) == 0
    assert main(["db", "upgrade", "handlers.app:app", "--db-url", url]) == 0
    assert "the schema is current" in capsys.readouterr().out
    assert main(["db", "upgrade", "no_such_module:app"]) == 2
    assert main(["db", "upgrade", "mysql://db/x"]) == 2
    assert main(["db", "upgrade", "postgresql://postgres@127.0.0.1:1/x"]) == 3


@pytest.mark.slow
@pytest.mark.timeout(120)
@postgres_only
def test_leveret_run_exits_2_on_a_schema_that_is_behind_and_serves_after_upgrade_db(
    store_url: str, tmp_path: Path
) -> None:
    """``leveret run`` on a fresh PostgreSQL schema: the worker refuses (exit 2, the message
    says to run ``leveret db upgrade``); ``--upgrade-db`` upgrades it and the workers start."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEVERET_")}
    env.update({"LEVERET_SHOP_DB_URL": store_url, "LEVERET_LOG_FORMAT": "json"})
    command = [sys.executable, "-m", "framework", "run", "handlers.app:app"]
    refused = subprocess.run(command, cwd=PROJECT, env=env, capture_output=True, timeout=90)
    assert refused.returncode == 2, refused.stderr.decode()
    assert "leveret db upgrade" in refused.stderr.decode()
    assert main(["db", "check", "handlers.app:app", "--db-url", store_url]) == 1
    log = tmp_path / "stderr"
    with log.open("wb") as stderr:
        served = subprocess.Popen(
            [*command, "--upgrade-db"],
            cwd=PROJECT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        deadline = time.monotonic() + 60
        # Polls a child's log: nothing in this process to await.
        while "app_started" not in log.read_text():
            assert served.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.2)
    finally:
        served.terminate()
        served.wait(30)
    assert main(["db", "check", "handlers.app:app", "--db-url", store_url]) == 0
