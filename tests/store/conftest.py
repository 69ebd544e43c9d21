"""Store fixtures: ``store`` and ``make_store`` over the memory, SQLite and PostgreSQL stores.

A SQLite test gets its own file in ``tmp_path``; a PostgreSQL test its own schema
(``leveret_test_<hex>``), dropped afterwards. PostgreSQL runs carry the ``postgres`` marker; an
unreachable server fails them under ``CI=true`` and skips them otherwise.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import pytest

from framework.store import Store
from framework.store._retention import INBOX_RETENTION
from framework.store.memory import MemoryStore
from framework.store.postgres import PostgresConfig, PostgresStore
from framework.store.sqlite import SqliteConfig, SqliteStore
from framework.urls import redact

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"

STORE_KINDS = ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
SQL_KINDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


class MakeStore(Protocol):
    """Opens another store on the test's database (set up unless ``setup=False``)."""

    def __call__(
        self,
        *,
        setup: bool = True,
        clock: Callable[[], float] | None = None,
        outbox_retention: float | None = None,
        inbox_retention: float | None = INBOX_RETENTION,
    ) -> Awaitable[Store]: ...


def with_query(url: str, **params: str) -> str:
    """``url`` with ``params`` added to its query string."""
    parts = urlsplit(url)
    query = [*parse_qsl(parts.query), *params.items()]
    return urlunsplit(parts._replace(query=urlencode(query)))


def run_in_thread(coro: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run a coroutine on an event loop of its own, outside the tests' loops."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro()).result()


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The PostgreSQL server for this run (``LEVERET_POSTGRES_URL``).

    Unreachable server: fails under ``CI=true``, skips otherwise.
    """
    url = os.environ.get("LEVERET_POSTGRES_URL", DEFAULT_POSTGRES_URL)

    async def probe() -> str | None:
        try:
            conn = await asyncpg.connect(url, timeout=5)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            return type(exc).__name__
        await conn.close()
        return None

    failure = run_in_thread(probe)
    if failure is not None:
        message = (
            f"PostgreSQL is not reachable at {redact(url)} ({failure}); set LEVERET_POSTGRES_URL"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return url


@pytest.fixture(params=STORE_KINDS)
def store_kind(request: pytest.FixtureRequest) -> str:
    """Which store the test runs against: ``"memory"``, ``"sqlite"`` or ``"postgres"``."""
    kind: str = request.param
    return kind


@pytest.fixture
async def store_url(
    store_kind: str, tmp_path: Any, request: pytest.FixtureRequest
) -> AsyncIterator[str]:
    """The URL of a database of this test's own (a PostgreSQL schema is dropped afterwards)."""
    if store_kind == "memory":
        yield "memory://"
        return
    if store_kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    base: str = request.getfixturevalue("postgres_url")
    schema = f"leveret_test_{secrets.token_hex(6)}"
    try:
        yield with_query(base, schema=schema)
    finally:
        conn = await asyncpg.connect(base, timeout=5)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()


@pytest.fixture
async def make_store(store_kind: str, store_url: str) -> AsyncIterator[MakeStore]:
    """A factory of stores on this test's database, like separate processes; all closed after.

    Memory stores share nothing: each call returns an empty one.
    """
    made: list[Store] = []

    async def make(
        *,
        setup: bool = True,
        clock: Callable[[], float] | None = None,
        outbox_retention: float | None = None,
        inbox_retention: float | None = INBOX_RETENTION,
    ) -> Store:
        store: Store
        options: dict[str, Any] = {} if clock is None else {"clock": clock}
        settings: dict[str, Any] = {"inbox_retention": inbox_retention}
        if outbox_retention is not None:
            settings["outbox_retention"] = outbox_retention
        if store_kind == "sqlite":
            store = SqliteStore(store_url, config=SqliteConfig(**settings), **options)
        elif store_kind == "postgres":
            store = PostgresStore(store_url, config=PostgresConfig(**settings), **options)
        else:
            store = MemoryStore(inbox_retention=inbox_retention, **options)
        made.append(store)
        if setup:
            await store.setup()
        return store

    yield make
    for store in reversed(made):
        await store.close()


@pytest.fixture
async def store(make_store: MakeStore) -> Store:
    """A set-up store (memory, SQLite or PostgreSQL) on a database of this test's own."""
    return await make_store()
