"""``leveret sagas``: see and operate an app's sagas from the command line.

    leveret sagas list MODULE:APP [--db-url URL] [--state S] [--saga NAME] [--limit N] [--json]
    leveret sagas show MODULE:APP ID [--db-url URL] [--json]
    leveret sagas graph MODULE:APP NAME
    leveret sagas resume MODULE:APP ID [--db-url URL] [--amqp-url URL] [--connect-timeout S]
    leveret sagas abort MODULE:APP ID [--reason R] [--db-url URL] [--amqp-url URL]
                                      [--connect-timeout S]

The store is the app's own (``App(db_url=...)``) unless ``--db-url`` names another. ``resume`` and
``abort`` go through the app's ``SagaRunner``: state, history and outbox change in one
transaction, then the outbox is published on the app's broker (connected without consuming). An
app on the in-process broker (``memory://``) has no broker another process could reach: there the
messages stay in the outbox, and the app publishes them when it next runs.

A SQLite store file that does not exist is not created: the command exits 3 and says where it
looked (``--format table|json`` is the old, deprecated spelling of ``--json``).

Exit codes: 0; 1 (no saga with that id, or the action does not apply to it as it is); 2
(MODULE:APP does not load, runs no sagas, an unknown saga name or state, an unusable URL); 3 (the
broker or the database did not answer, or the SQLite file does not exist).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from typing import Any

import msgspec

from framework.app import App
from framework.argtypes import positive_float, positive_int
from framework.cli._common import (
    CommandError,
    add_amqp_url,
    add_app,
    add_db_url,
    add_json,
    check_amqp_url,
    existing_store,
    load,
    print_json,
    table,
)
from framework.cli.exits import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from framework.logging import configure_logging
from framework.saga.definition import START, Saga
from framework.saga.diagram import mermaid
from framework.saga.runner import SagaActionRefused
from framework.store.base import HistoryRow, SagaRecord, SagaStatus, Store, store_from_url
from framework.transport.memory import MemoryTransport
from framework.urls import redact
from framework.worker import configure_transport

__all__ = ["register"]

_REASON_WIDTH = 60
_encode_json = msgspec.json.Encoder().encode


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``sagas list|show|graph|resume|abort`` to the ``leveret`` command line."""
    sagas = commands.add_parser(
        "sagas",
        help="list, show, draw, resume and abort saga instances",
        description="See and operate the sagas of MODULE:APP. Exit codes: 0 done; 1 no saga "
        "with that id, or the action does not apply to it; 2 usage or configuration error; "
        "3 the broker or the database cannot be reached.",
    )
    actions = sagas.add_subparsers(title="actions", metavar="ACTION", required=True)

    listing = actions.add_parser("list", help="saga instances, newest first")
    _app_and_store(listing)
    listing.add_argument(
        "--state",
        metavar="S",
        help="only sagas with this status (running, compensating, completed, compensated, "
        "compensation_failed, failed, aborted) or in this state (e.g. charge:compensating)",
    )
    listing.add_argument("--saga", metavar="NAME", help="only instances of this saga definition")
    listing.add_argument(
        "--limit", type=positive_int, default=50, metavar="N", help="at most N (default 50)"
    )
    add_json(listing, old_format=("table",))
    listing.set_defaults(command=_command(_list))

    show = actions.add_parser("show", help="one saga: its state, data and timeline")
    _app_and_store(show)
    show.add_argument("id", metavar="ID", help="the saga id, e.g. order-1234")
    add_json(show, old_format=("table",))
    show.set_defaults(command=_command(_show))

    graph = actions.add_parser("graph", help="a Mermaid state diagram of a saga definition")
    add_app(graph)
    graph.add_argument("name", metavar="NAME", help="the saga definition's name, e.g. order")
    graph.set_defaults(command=_command(_graph))

    for name, help_text in (
        ("resume", "resend where a stuck or failed saga stopped"),
        ("abort", "end a saga as aborted, sending nothing"),
    ):
        action = actions.add_parser(name, help=help_text)
        _app_and_store(action)
        action.add_argument("id", metavar="ID", help="the saga id, e.g. order-1234")
        if name == "abort":
            action.add_argument(
                "--reason", default="aborted by an operator", help="recorded as the saga's reason"
            )
        add_amqp_url(action)
        action.add_argument(
            "--connect-timeout",
            type=positive_float,
            metavar="SECONDS",
            help="how long to wait for the broker before exiting 3",
        )
        action.set_defaults(command=_command(_resume if name == "resume" else _abort))


# -- commands ----------------------------------------------------------------------------------


async def _list(args: argparse.Namespace) -> int:
    app = _load(args.app)
    definitions = _definitions(app)
    if args.saga is not None and args.saga not in definitions:
        raise CommandError(
            EXIT_USAGE, f"{args.app} has no saga {args.saga!r}; {_known(definitions)}"
        )
    status, state = _state_filter(args.state, definitions, args.saga)
    store = _store(app, args)
    async with _opened(store):
        if state is None:
            records = await store.list_sagas(status=status, saga=args.saga, limit=args.limit)
        else:  # a state name: the port filters by status only, so filter here
            found = await store.list_sagas(saga=args.saga, limit=sys.maxsize >> 1)
            records = [r for r in found if r.state == state][: args.limit]
    if args.json:
        print_json([_summary(r) for r in records])
    else:
        print(_table(records))
    return EXIT_OK


async def _show(args: argparse.Namespace) -> int:
    app = _load(args.app)
    store = _store(app, args)
    async with _opened(store):
        record = await store.get_saga(args.id)
        if record is None:
            raise CommandError(
                EXIT_FAILED, f"no saga {args.id!r} in the store at {redact(store.url)}"
            )
        history = await store.history(args.id)
    if args.json:
        print_json({**_summary(record), **_persisted(record), "history": history})
    else:
        print(_timeline(record, history))
    return EXIT_OK


async def _graph(args: argparse.Namespace) -> int:
    definitions = _definitions(_load(args.app))
    saga = definitions.get(args.name)
    if saga is None:
        raise CommandError(
            EXIT_USAGE, f"{args.app} has no saga {args.name!r}; {_known(definitions)}"
        )
    sys.stdout.write(mermaid(saga))
    return EXIT_OK


async def _resume(args: argparse.Namespace) -> int:
    async def resume(app: App, record: SagaRecord) -> SagaRecord:
        return await app.sagas[record.saga].resume(record.saga_id)

    return await _operate(args, "resumed", resume)


async def _abort(args: argparse.Namespace) -> int:
    async def abort(app: App, record: SagaRecord) -> SagaRecord:
        return await app.sagas[record.saga].abort(record.saga_id, args.reason)

    return await _operate(args, "aborted", abort)


async def _operate(
    args: argparse.Namespace,
    done: str,
    action: Callable[[App, SagaRecord], Awaitable[SagaRecord]],
) -> int:
    """Run an operator action through the app's runner, with the app's broker connected."""
    app = _load(args.app)
    store = _store(app, args, reading=False)
    check_amqp_url(args.amqp_url)
    configure_transport(app, url=args.amqp_url, connect_timeout=args.connect_timeout)
    # The in-process broker would take the messages and lose them with this process: leave
    # them in the outbox for the app's own sweeper instead.
    live = not isinstance(app.transport, MemoryTransport)
    try:
        if live:
            await app.start(consume=False)
        else:
            await store.setup()
        record = await store.get_saga(args.id)
        if record is None:
            raise CommandError(
                EXIT_FAILED, f"no saga {args.id!r} in the store at {redact(store.url)}"
            )
        if record.saga not in app.sagas:
            raise CommandError(
                EXIT_USAGE,
                f"{args.id!r} is a {record.saga!r} saga, which {args.app} does not run; "
                f"{_known(_definitions(app))}",
            )
        try:
            new = await action(app, record)
        except SagaActionRefused as exc:
            raise CommandError(EXIT_FAILED, str(exc)) from None
        except LookupError as exc:
            raise CommandError(EXIT_FAILED, str(exc)) from None
        history = await store.history(args.id)
        emitted = history[-1].emitted if history else []
        pending = {r.message_id for r in await store.pending_outbox(limit=100_000)}
    finally:
        with contextlib.suppress(Exception):
            await app.stop(grace=0)
        with contextlib.suppress(Exception):
            await app.transport.close()
        await store.close()
    print(f"{done} {new.saga_id}: {new.status} in state {new.state!r} (version {new.version})")
    sent = [m for m in emitted if m not in pending]
    held = [m for m in emitted if m in pending]
    if sent:
        print(f"sent: {', '.join(sent)}")
    if held:
        where = "the app publishes them when it runs" + (
            "" if live else " (pass --amqp-url to publish them now)"
        )
        print(f"in the outbox: {', '.join(held)}; {where}")
    return EXIT_OK


# -- plumbing ----------------------------------------------------------------------------------


def _command(
    run: Callable[[argparse.Namespace], Coroutine[Any, Any, int]],
) -> Callable[[argparse.Namespace], int]:
    """A synchronous entry point for ``leveret``'s dispatcher (``main`` maps errors to codes)."""

    def command(args: argparse.Namespace) -> int:
        configure_logging(level="error")
        return asyncio.run(run(args))

    return command


def _load(spec: str) -> App:
    app = load(spec)  # AppLoadError is a ConfigurationError: exit 2
    if not app.sagas:
        raise CommandError(EXIT_USAGE, f"{spec} runs no sagas: there is nothing to see or operate")
    return app


def _store(app: App, args: argparse.Namespace, *, reading: bool = True) -> Store:
    """The app's store, or the one ``--db-url`` names (then the app uses it too); when only
    ``reading``, a SQLite file must exist (reading it must not create it)."""
    if args.db_url is not None:
        app.use_store(store_from_url(args.db_url))
    assert app.store is not None  # an app with sagas has one
    if not reading:
        return app.store
    return existing_store(app.store, db_url_given=args.db_url is not None)


@contextlib.asynccontextmanager
async def _opened(store: Store) -> AsyncIterator[Store]:
    """The store with leveret's tables present (created if missing), closed afterwards."""
    try:
        await store.setup()
        yield store
    finally:
        await store.close()


def _definitions(app: App) -> dict[str, Saga[Any]]:
    return {name: runner.saga for name, runner in app.sagas.items()}


def _known(definitions: dict[str, Saga[Any]]) -> str:
    return f"its sagas are: {', '.join(sorted(definitions))}"


def _state_filter(
    text: str | None, definitions: dict[str, Saga[Any]], only: str | None
) -> tuple[SagaStatus | None, str | None]:
    """``--state``: a status, or the name of a state of the (selected) definitions."""
    if text is None:
        return None, None
    if text in {str(s) for s in SagaStatus}:
        return SagaStatus(text), None
    names = {
        state
        for name, saga in definitions.items()
        if only is None or name == only
        for rule in saga.rules
        for state in (*rule.in_states, *rule.to)
        if state != START
    }
    if text not in names:
        whose = f"saga {only!r}" if only else "the app's sagas"
        raise CommandError(
            EXIT_USAGE,
            f"--state {text!r} is neither a status ({', '.join(str(s) for s in SagaStatus)}) "
            f"nor a state of {whose} ({', '.join(sorted(names))})",
        )
    return None, text


def _summary(record: SagaRecord) -> dict[str, Any]:
    return {
        "saga_id": record.saga_id,
        "saga": record.saga,
        "status": str(record.status),
        "state": record.state,
        "version": record.version,
        "reason": record.reason,
        "correlation_id": record.correlation_id,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "deadline_at": record.deadline_at,
    }


def _persisted(record: SagaRecord) -> dict[str, Any]:
    """The saga's data and step bookkeeping, as the runner saved them."""
    try:
        saved = msgspec.json.decode(record.data)
    except msgspec.DecodeError:
        return {"data": None, "completed": [], "attempt": 0}
    if not isinstance(saved, dict):
        return {"data": saved, "completed": [], "attempt": 0}
    return {
        "data": saved.get("data"),
        "completed": saved.get("completed", []),
        "attempt": saved.get("attempt", 0),
    }


def _when(at: float | None) -> str:
    if at is None:
        return "-"
    moment = datetime.datetime.fromtimestamp(at, datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _table(records: Sequence[SagaRecord]) -> str:
    header = ("SAGA ID", "SAGA", "STATUS", "STATE", "VERSION", "UPDATED", "REASON")
    rows = [
        (
            r.saga_id,
            r.saga,
            str(r.status),
            r.state,
            str(r.version),
            _when(r.updated_at),
            _clip(r.reason or ""),
        )
        for r in records
    ]
    lines = table(header, rows)
    if not rows:
        lines.append("(no sagas)")
    return "\n".join(lines)


def _clip(text: str) -> str:
    return text if len(text) <= _REASON_WIDTH else text[: _REASON_WIDTH - 1] + "…"


def _timeline(record: SagaRecord, history: Sequence[HistoryRow]) -> str:
    saved = _persisted(record)
    lines = [
        f"saga         {record.saga_id} ({record.saga})",
        f"status       {record.status}",
        f"state        {record.state}",
        f"reason       {record.reason or '-'}",
        f"version      {record.version}",
        f"correlation  {record.correlation_id}",
        f"created      {_when(record.created_at)}",
        f"updated      {_when(record.updated_at)}",
        f"deadline     {_when(record.deadline_at)}",
        f"completed    {', '.join(saved['completed']) or '-'} (attempt {saved['attempt']})",
        f"data         {_encode_json(saved['data']).decode()}",
        "",
        f"timeline ({len(history)} entries)",
    ]
    for row in history:
        offset = row.at - record.created_at
        lines.append(
            f"  {_when(row.at)}  +{offset:.3f}s  v{row.version}  in {row.message_type} "
            f"[{row.message_id}]"
        )
        if row.note:
            lines.append(f"      {row.from_state} (unchanged)  [{row.status}]  note: {row.note}")
        else:
            lines.append(f"      {row.from_state} -> {row.to_state}  [{row.status}]")
        if row.emitted:
            lines.append(f"      out {', '.join(row.emitted)}")
    return "\n".join(lines)


def _app_and_store(parser: argparse.ArgumentParser) -> None:
    add_app(parser)
    add_db_url(
        parser,
        help="the saga store instead of the app's own: sqlite:///file.db or postgresql://...",
    )
