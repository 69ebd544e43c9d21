"""``leveret dlq list|show|replay|purge``: an app's dead-letter queues on RabbitMQ.

``leveret dlq ACTION MODULE:APP [QUEUE]``: the app names the broker (its own URL, which
``--amqp-url`` overrides) and, for ``list``, the DLQs (every handler queue's ``<queue>.dlq``).
Without MODULE:APP, ``--amqp-url`` names the broker and the queues are named one by one: a client
cannot list a broker's queues without the management plugin. A QUEUE argument is a DLQ
(``leveret.orders.orders.place_order.dlq``) or the handler queue it belongs to. ``--app`` and
``--url`` are the old, deprecated spellings of MODULE:APP and ``--amqp-url``.

Exit codes: 0 done; 1 nothing matched, a replay stopped on a failed publish or left messages it
cannot replay in the DLQ, or a purge was not confirmed; 2 usage or configuration error (no broker
named, a missing queue, a bad MODULE:APP, a memory:// app); 3 the broker could not be reached; 4
a DLQ could not be read whole (a lost connection, messages that did not arrive): what was read is
printed, once each.

A message whose headers the client could not decode is listed and shown as ``undecodable`` with
the reason; ``replay`` leaves it in the DLQ. ``replay`` republishes only to the queue the DLQ
belongs to (``<queue>`` for ``<queue>.dlq``), whatever a message's ``leveret-original-queue``
header says (it says so when they differ).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from framework.argtypes import positive_float, positive_int
from framework.cli._common import (
    AMQP_EXAMPLE,
    add_amqp_url,
    add_app,
    add_deprecated,
    add_json,
    is_amqp,
    load,
    note,
    print_json,
    require_broker,
    table,
    usage_error,
)
from framework.cli.exits import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from framework.dlq.scan import (
    DLQ_SUFFIX,
    MAX_SCAN,
    DeadLetterInfo,
    ScanIncomplete,
    Selection,
    count_reasons,
    peek,
    purge,
    replay,
)
from framework.errors import ConfigurationError
from framework.transport.base import Transport

__all__ = ["dlq_name", "register"]


def register(commands: Any) -> None:
    """Add ``dlq list|show|replay|purge`` to the ``leveret`` subparsers."""
    dlq = commands.add_parser(
        "dlq",
        help="inspect, replay and purge dead-letter queues",
        description="Inspect, replay and purge the dead-letter queues of leveret handlers.",
    )
    actions = dlq.add_subparsers(title="actions", metavar="ACTION")

    def usage(_: argparse.Namespace) -> int:
        dlq.print_help(sys.stderr)
        return EXIT_USAGE

    dlq.set_defaults(command=usage)

    listing = actions.add_parser(
        "list",
        help="count dead letters per queue and per reason",
        description=(
            "Count the messages of each DLQ, per dead-letter reason. Without QUEUE, every DLQ of "
            "the app's handlers. Messages stay in place, in order."
        ),
    )
    add_app(listing, optional=True)
    listing.add_argument("queues", nargs="*", metavar="QUEUE", help="DLQs or handler queues")
    _broker_options(listing)
    add_json(listing)
    listing.set_defaults(command=_list, action="list")

    show = actions.add_parser(
        "show",
        help="print the first messages of a DLQ",
        description=(
            "Print the first N messages of a DLQ: type, ids, reason, exception, attempts, first "
            "and last failure time, body. Messages stay in place, in order."
        ),
    )
    _app_and_queue(show)
    show.add_argument(
        "--limit", type=positive_int, default=10, metavar="N", help="at most N (default 10)"
    )
    _broker_options(show)
    add_json(show)
    show.set_defaults(command=_show, action="show")

    again = actions.add_parser(
        "replay",
        help="republish dead letters to the queues they came from",
        description=(
            "Republish the chosen messages of a DLQ to their original queue with the same message "
            "id, attempts counted afresh and a leveret-replayed header. Each leaves the DLQ only "
            "after the broker confirmed its copy."
        ),
    )
    _app_and_queue(again)
    _selection_options(again, reason=True)
    _broker_options(again)
    again.set_defaults(command=_replay, action="replay")

    drop = actions.add_parser(
        "purge",
        help="delete dead letters for good",
        description="Delete the chosen messages of a DLQ for good, after a confirmation.",
    )
    _app_and_queue(drop)
    _selection_options(drop, reason=False)
    drop.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    _broker_options(drop)
    drop.set_defaults(command=_purge, action="purge")


def _app_and_queue(parser: argparse.ArgumentParser) -> None:
    add_app(parser, optional=True)
    parser.add_argument("queue", metavar="QUEUE", help="a DLQ or the handler queue it belongs to")


def _broker_options(parser: argparse.ArgumentParser) -> None:
    add_amqp_url(parser, old_url=True)
    add_deprecated(parser, "--app", dest="app_option", instead="MODULE:APP before the queues")
    parser.add_argument(
        "--timeout",
        type=positive_float,
        default=5.0,
        metavar="SECONDS",
        help="longest wait for the broker's next message or answer (default 5)",
    )


def _selection_options(parser: argparse.ArgumentParser, *, reason: bool) -> None:
    parser.add_argument(
        "--id", action="append", default=[], metavar="ID", help="a message id (repeatable)"
    )
    if reason:
        parser.add_argument(
            "--reason", metavar="R", help="messages whose reason starts with R, e.g. handler_failed"
        )
    parser.add_argument("--all", action="store_true", help="every message of the DLQ")


def _looks_like_app(word: str) -> bool:
    return ":" in word and "://" not in word


def dlq_name(queue: str) -> str:
    """``queue`` if it names a DLQ, else the DLQ of that handler queue."""
    return queue if queue.endswith(DLQ_SUFFIX) else f"{queue}{DLQ_SUFFIX}"


class _Target:
    """The transport to use and the DLQs an app knows, from MODULE:APP and ``--amqp-url``."""

    def __init__(self, args: argparse.Namespace) -> None:
        from framework.transport.amqp import AmqpConfig, AmqpTransport

        spec, self.queues = _app_and_queues(args)
        self.app_dlqs: list[str] = []
        url: str | None = args.amqp_url
        if spec is not None:
            app = load(spec)
            self.app_dlqs = sorted({app.naming.dlq(p.queue) for p in app.pipelines})
            if url is None:
                require_broker(app, spec, what="leveret dlq")
            url = url or app.url
        if not url:
            raise ConfigurationError(
                "name the app (leveret dlq ACTION MODULE:APP ...: its broker and its DLQs) or the "
                f"broker (--amqp-url {AMQP_EXAMPLE})"
            )
        if not is_amqp(url):
            raise ConfigurationError(
                f"the DLQ tools work on RabbitMQ (amqp:// or amqps://), not {url.split(':', 1)[0]}"
                f": pass --amqp-url {AMQP_EXAMPLE}"
            )
        timeout = args.timeout
        self.transport: Transport = AmqpTransport(
            url,
            config=AmqpConfig(
                connect_timeout=timeout, declare_timeout=timeout, publish_timeout=timeout
            ),
        )
        self.idle = timeout


def _app_and_queues(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """MODULE:APP (positional, or the old ``--app``) and the QUEUE arguments."""
    spec: str | None = args.app_option
    words: list[str] = [args.app] if args.app is not None else []
    words += args.queues if hasattr(args, "queues") else [args.queue]
    if words and _looks_like_app(words[0]):
        if spec is not None:
            raise usage_error(f"the app is named twice: {words[0]} and --app {spec}; drop --app")
        spec = words.pop(0)
    if not hasattr(args, "queues") and len(words) != 1:
        raise usage_error(
            f"{' '.join(words) or 'no queue'}: write leveret dlq {args.action} MODULE:APP QUEUE, "
            "e.g. handlers.app:app shop.orders.orders.place_order"
        )
    return spec, words


def _run(args: argparse.Namespace, work: Callable[[_Target], Awaitable[int]]) -> int:
    target = _Target(args)

    async def main() -> int:
        await target.transport.connect()
        try:
            return await work(target)
        finally:
            await target.transport.close()

    code: int = asyncio.run(main())  # a refused login is a ConfigurationError: exit 2
    return code


async def _existing(transport: Transport, dlq: str) -> int | None:
    """Ready messages of ``dlq``, None when it does not exist."""
    try:
        return (await transport.queue_info(dlq)).messages
    except ConfigurationError:
        return None


# -- list -------------------------------------------------------------------------------------


def _list(args: argparse.Namespace) -> int:
    async def work(target: _Target) -> int:
        queues = [dlq_name(q) for q in target.queues] or target.app_dlqs
        if not queues:
            raise ConfigurationError(
                "which DLQs? name the app (leveret dlq list MODULE:APP) or the queues (leveret "
                "dlq list QUEUE... --amqp-url URL): a client cannot list a broker's queues "
                "without the management plugin"
            )
        rows: list[dict[str, Any]] = []
        unread: list[str] = []
        for dlq in queues:
            depth = await _existing(target.transport, dlq)
            if depth is None:
                if target.queues:
                    raise ConfigurationError(f"queue {dlq!r} does not exist")
                continue  # the app's handler has not declared its queues yet
            reasons: Counter[str] = Counter()
            if depth:
                try:
                    reasons = await count_reasons(target.transport, dlq, idle=target.idle)
                except ScanIncomplete as exc:
                    reasons = exc.partial
                    unread.append(str(exc))
            rows.append({"queue": dlq, "messages": depth, "reasons": dict(reasons.most_common())})
        if args.json:
            print_json(rows)
        else:
            _print_counts(rows, skipped=len(queues) - len(rows))
        for problem in unread:
            note(f"reasons counted over part of a DLQ only: {problem}")
        return EXIT_INTERRUPTED if unread else EXIT_OK

    return _run(args, work)


def _print_counts(rows: Sequence[dict[str, Any]], *, skipped: int) -> None:
    total = sum(r["messages"] for r in rows)
    cells: list[tuple[str, str, str]] = []
    for row in rows:
        cells.append((row["queue"], str(row["messages"]), ""))
        cells += [("", str(count), reason) for reason, count in row["reasons"].items()]
    for line in table(("queue", "messages", "reason"), cells, right={1}):
        print(line)
    print(f"{total} dead letter(s) in {len(rows)} queue(s)")
    if any(r["messages"] > MAX_SCAN for r in rows):
        print(f"reasons are counted over the first {MAX_SCAN} messages of each queue")
    if skipped:
        print(f"{skipped} DLQ(s) of the app do not exist yet (the app has not run there)")


# -- show -------------------------------------------------------------------------------------


def _show(args: argparse.Namespace) -> int:
    async def work(target: _Target) -> int:
        dlq = dlq_name(target.queues[0])
        depth = await _existing(target.transport, dlq)
        if depth is None:
            raise ConfigurationError(f"queue {dlq!r} does not exist")
        problem: str | None = None
        try:
            found = await peek(target.transport, dlq, limit=args.limit, idle=target.idle)
        except ScanIncomplete as exc:
            found, problem = exc.partial, str(exc)
        if args.json:
            print_json(found)
        else:
            print(f"{dlq}: {depth} message(s), showing {len(found)}")
            for info in found:
                print()
                _print_message(info, depth)
        if problem is not None:
            note(f"not every message could be shown: {problem}")
            return EXIT_INTERRUPTED
        return EXIT_OK

    return _run(args, work)


def _print_message(info: DeadLetterInfo, depth: int) -> None:
    version = f" v{info.version}" if info.version is not None else ""
    exception = None
    if info.exception_type:
        exception = f"{info.exception_type}: {info.exception_message or ''}".rstrip(": ")
    replayed = None
    if info.replayed:
        replayed = f"{info.replayed} time(s) before"
    fields = (
        ("type", f"{info.type or '-'}{version}"),
        ("message id", info.message_id),
        ("correlation", info.correlation_id),
        ("causation", info.causation_id),
        ("saga", info.saga_id),
        ("reason", info.reason),
        (
            "undecodable",
            info.undecodable and "its headers could not be read; it cannot be replayed",
        ),
        ("exception", exception),
        ("attempts", None if info.attempts is None else str(info.attempts)),
        ("first failed", info.first_failed_at),
        ("last failed", info.last_failed_at),
        ("from queue", info.original_queue),
        ("replayed", replayed),
    )
    print(f"#{info.position} of {depth}")
    for name, value in fields:
        if value:
            print(f"  {name:<13}{value}")
    print(f"  body ({info.content_type or 'no content type'}):")
    for line in info.body.splitlines() or [""]:
        print(f"    {line}")


# -- replay and purge -------------------------------------------------------------------------


def _selection(args: argparse.Namespace) -> Selection:
    return Selection(
        ids=frozenset(args.id),
        reason=getattr(args, "reason", None),
        everything=args.all,
    )


def _replay(args: argparse.Namespace) -> int:
    selection = _selection(args)

    async def work(target: _Target) -> int:
        dlq = dlq_name(target.queues[0])
        if await _existing(target.transport, dlq) is None:
            raise ConfigurationError(f"queue {dlq!r} does not exist")

        def replayed(message_id: str, queue: str) -> None:
            print(f"replayed {message_id} -> {queue}", flush=True)

        result = await replay(
            target.transport, dlq, selection, idle=target.idle, on_replayed=replayed
        )
        print(f"{len(result.replayed)} message(s) replayed from {dlq} ({result.scanned} scanned)")
        for label, text in result.notes:
            note(f"{label}: {text}")
        for label, why in result.skipped:
            note(f"not replayed {label}: {why}; it stays in the DLQ")
        if result.error is not None:
            print(
                f"leveret: replay stopped: {result.error}; it and the rest stay in the DLQ",
                file=sys.stderr,
            )
        if result.incomplete is not None:
            print(
                f"leveret: replay did not read the whole DLQ: {result.incomplete}; the "
                "messages not read are still in the DLQ, run it again",
                file=sys.stderr,
            )
            return EXIT_INTERRUPTED
        if result.error is not None or result.skipped:
            return EXIT_FAILED
        return EXIT_OK if result.replayed else EXIT_FAILED

    return _run(args, work)


def _purge(args: argparse.Namespace) -> int:
    try:
        selection = Selection(ids=frozenset(args.id), everything=args.all)
    except ConfigurationError as exc:
        raise usage_error(str(exc).replace("--reason and ", "")) from None

    async def work(target: _Target) -> int:
        dlq = dlq_name(target.queues[0])
        depth = await _existing(target.transport, dlq)
        if depth is None:
            raise ConfigurationError(f"queue {dlq!r} does not exist")
        what = (
            f"all {depth} message(s)"
            if selection.everything
            else f"message(s) {', '.join(sorted(selection.ids))}"
        )
        if not args.yes and not await _confirm(f"delete {what} from {dlq} for good? [y/N] "):
            print("nothing deleted")
            return EXIT_FAILED
        try:
            deleted = await purge(target.transport, dlq, selection, idle=target.idle)
        except ScanIncomplete as exc:
            print(f"{len(exc.partial)} message(s) deleted from {dlq}")
            note(f"purge did not read the whole DLQ: {exc}")
            return EXIT_INTERRUPTED
        print(f"{len(deleted)} message(s) deleted from {dlq}")
        return EXIT_OK if deleted else EXIT_FAILED

    return _run(args, work)


async def _confirm(prompt: str) -> bool:
    print(prompt, end="", flush=True)
    # Read in a thread: the connection keeps its heartbeats while the operator thinks.
    answer = await asyncio.to_thread(sys.stdin.readline)
    if not answer:
        print()
    return answer.strip().lower() in ("y", "yes")
