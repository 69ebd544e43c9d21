"""``leveret dlq list|show|replay|purge``: registered by ``framework.cli``.

The broker is named by ``--url`` or by ``--app MODULE:APP`` (the app's own URL, which ``--url``
overrides). Without the management plugin a client cannot list queues, so ``list`` needs
``--app`` (every handler queue's ``<queue>.dlq``) or the queues by name. A QUEUE argument is a
DLQ (``leveret.orders.orders.place_order.dlq``) or the handler queue it belongs to.

Exit codes: 0 done; 1 nothing matched, a replay stopped on a failed publish or left messages it
cannot replay in the DLQ, or a purge was not confirmed; 2 usage or configuration error (no broker
named, a missing queue, a bad MODULE:APP); 3 the broker could not be reached; 4 a DLQ could not be
read whole (a lost connection, messages that did not arrive): what was read is printed, once each.

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

import msgspec

from framework.argtypes import positive_float, positive_int
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
from framework.errors import BrokerUnreachable, ConfigurationError
from framework.transport.base import Transport

__all__ = ["register"]

EXIT_OK = 0
EXIT_NOTHING = 1
EXIT_USAGE = 2
EXIT_BROKER_UNREACHABLE = 3
EXIT_INCOMPLETE = 4


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
            "--app's handlers. Messages stay in place, in order."
        ),
    )
    listing.add_argument("queues", nargs="*", metavar="QUEUE", help="DLQs or handler queues")
    _broker_options(listing)
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(command=_list)

    show = actions.add_parser(
        "show",
        help="print the first messages of a DLQ",
        description=(
            "Print the first N messages of a DLQ: type, ids, reason, exception, attempts, first "
            "and last failure time, body. Messages stay in place, in order."
        ),
    )
    show.add_argument("queue", metavar="QUEUE")
    show.add_argument(
        "--limit", type=positive_int, default=10, metavar="N", help="at most N (default 10)"
    )
    _broker_options(show)
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(command=_show)

    again = actions.add_parser(
        "replay",
        help="republish dead letters to the queues they came from",
        description=(
            "Republish the chosen messages of a DLQ to their original queue with the same message "
            "id, attempts counted afresh and a leveret-replayed header. Each leaves the DLQ only "
            "after the broker confirmed its copy."
        ),
    )
    again.add_argument("queue", metavar="QUEUE")
    _selection_options(again, reason=True)
    _broker_options(again)
    again.set_defaults(command=_replay)

    drop = actions.add_parser(
        "purge",
        help="delete dead letters for good",
        description="Delete the chosen messages of a DLQ for good, after a confirmation.",
    )
    drop.add_argument("queue", metavar="QUEUE")
    _selection_options(drop, reason=False)
    drop.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    _broker_options(drop)
    drop.set_defaults(command=_purge)


def _broker_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        "--amqp-url",
        dest="url",
        metavar="URL",
        help="RabbitMQ URL, e.g. amqp://user:password@host:5672/vhost (default: --app's)",
    )
    parser.add_argument(
        "--app", metavar="MODULE:APP", help="the App: its broker URL and its handlers' DLQs"
    )
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


def dlq_name(queue: str) -> str:
    """``queue`` if it names a DLQ, else the DLQ of that handler queue."""
    return queue if queue.endswith(DLQ_SUFFIX) else f"{queue}{DLQ_SUFFIX}"


class _Target:
    """The transport to use and the DLQs an app knows, from ``--url`` and ``--app``."""

    def __init__(self, args: argparse.Namespace) -> None:
        from framework.transport.amqp import AmqpConfig, AmqpTransport

        self.app_dlqs: list[str] = []
        url: str | None = args.url
        if args.app:
            from framework.worker import load_app

            app = load_app(args.app)
            self.app_dlqs = sorted({app.naming.dlq(p.queue) for p in app.pipelines})
            url = url or app.url
        if not url:
            raise ConfigurationError(
                "name the broker: --url amqp://user:password@host:5672/vhost, or --app "
                "MODULE:APP to use the app's own URL"
            )
        if url.split("://", 1)[0].lower() not in ("amqp", "amqps"):
            raise ConfigurationError(
                f"the DLQ tools work on RabbitMQ (amqp:// or amqps://), not {url.split(':', 1)[0]}"
                ": a memory:// app's queues live in the process that runs it"
            )
        timeout = args.timeout
        self.transport: Transport = AmqpTransport(
            url,
            config=AmqpConfig(
                connect_timeout=timeout, declare_timeout=timeout, publish_timeout=timeout
            ),
        )
        self.idle = timeout


def _run(args: argparse.Namespace, work: Callable[[_Target], Awaitable[int]]) -> int:
    try:
        target = _Target(args)
    except ConfigurationError as exc:
        return _fail(str(exc), EXIT_USAGE)

    async def main() -> int:
        await target.transport.connect()
        try:
            return await work(target)
        finally:
            await target.transport.close()

    try:
        return asyncio.run(main())
    except ConfigurationError as exc:  # a refused login or vhost too (BrokerAccessDenied)
        return _fail(str(exc), EXIT_USAGE)
    except BrokerUnreachable as exc:
        return _fail(str(exc), EXIT_BROKER_UNREACHABLE)


def _fail(message: str, code: int) -> int:
    print(f"leveret: {message}", file=sys.stderr)
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
        queues = [dlq_name(q) for q in args.queues] or target.app_dlqs
        if not queues:
            raise ConfigurationError(
                "which DLQs? name them (leveret dlq list QUEUE...) or give --app MODULE:APP; "
                "a client cannot list a broker's queues without the management plugin"
            )
        rows: list[dict[str, Any]] = []
        unread: list[str] = []
        for dlq in queues:
            depth = await _existing(target.transport, dlq)
            if depth is None:
                if args.queues:
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
            print(msgspec.json.encode(rows).decode())
        else:
            _print_counts(rows, skipped=len(queues) - len(rows))
        for problem in unread:
            print(f"leveret: reasons counted over part of a DLQ only: {problem}", file=sys.stderr)
        return EXIT_INCOMPLETE if unread else EXIT_OK

    return _run(args, work)


def _print_counts(rows: Sequence[dict[str, Any]], *, skipped: int) -> None:
    total = sum(r["messages"] for r in rows)
    table = [("queue", "messages", "reason")]
    for row in rows:
        table.append((row["queue"], str(row["messages"]), ""))
        for reason, count in row["reasons"].items():
            table.append(("", str(count), reason))
    widths = [max(len(r[i]) for r in table) for i in range(2)]
    for queue, count, reason in table:
        print(f"{queue.ljust(widths[0])}  {count.rjust(widths[1])}  {reason}".rstrip())
    print(f"{total} dead letter(s) in {len(rows)} queue(s)")
    if any(r["messages"] > MAX_SCAN for r in rows):
        print(f"reasons are counted over the first {MAX_SCAN} messages of each queue")
    if skipped:
        print(f"{skipped} DLQ(s) of the app do not exist yet (the app has not run there)")


# -- show -------------------------------------------------------------------------------------


def _show(args: argparse.Namespace) -> int:
    async def work(target: _Target) -> int:
        dlq = dlq_name(args.queue)
        depth = await _existing(target.transport, dlq)
        if depth is None:
            raise ConfigurationError(f"queue {dlq!r} does not exist")
        problem: str | None = None
        try:
            found = await peek(target.transport, dlq, limit=args.limit, idle=target.idle)
        except ScanIncomplete as exc:
            found, problem = exc.partial, str(exc)
        if args.json:
            print(msgspec.json.encode(found).decode())
        else:
            print(f"{dlq}: {depth} message(s), showing {len(found)}")
            for info in found:
                print()
                _print_message(info, depth)
        if problem is not None:
            print(f"leveret: not every message could be shown: {problem}", file=sys.stderr)
            return EXIT_INCOMPLETE
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
    try:
        selection = _selection(args)
    except ConfigurationError as exc:
        return _fail(str(exc), EXIT_USAGE)

    async def work(target: _Target) -> int:
        dlq = dlq_name(args.queue)
        if await _existing(target.transport, dlq) is None:
            raise ConfigurationError(f"queue {dlq!r} does not exist")

        def replayed(message_id: str, queue: str) -> None:
            print(f"replayed {message_id} -> {queue}", flush=True)

        result = await replay(
            target.transport, dlq, selection, idle=target.idle, on_replayed=replayed
        )
        print(f"{len(result.replayed)} message(s) replayed from {dlq} ({result.scanned} scanned)")
        for label, note in result.notes:
            print(f"leveret: {label}: {note}", file=sys.stderr)
        for label, why in result.skipped:
            print(f"leveret: not replayed {label}: {why}; it stays in the DLQ", file=sys.stderr)
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
            return EXIT_INCOMPLETE
        if result.error is not None or result.skipped:
            return EXIT_NOTHING
        return EXIT_OK if result.replayed else EXIT_NOTHING

    return _run(args, work)


def _purge(args: argparse.Namespace) -> int:
    try:
        selection = Selection(ids=frozenset(args.id), everything=args.all)
    except ConfigurationError as exc:
        return _fail(str(exc).replace("--reason and ", ""), EXIT_USAGE)

    async def work(target: _Target) -> int:
        dlq = dlq_name(args.queue)
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
            return EXIT_NOTHING
        try:
            deleted = await purge(target.transport, dlq, selection, idle=target.idle)
        except ScanIncomplete as exc:
            print(f"{len(exc.partial)} message(s) deleted from {dlq}")
            print(f"leveret: purge did not read the whole DLQ: {exc}", file=sys.stderr)
            return EXIT_INCOMPLETE
        print(f"{len(deleted)} message(s) deleted from {dlq}")
        return EXIT_OK if deleted else EXIT_NOTHING

    return _run(args, work)


async def _confirm(prompt: str) -> bool:
    print(prompt, end="", flush=True)
    # Read in a thread: the connection keeps its heartbeats while the operator thinks.
    answer = await asyncio.to_thread(sys.stdin.readline)
    if not answer:
        print()
    return answer.strip().lower() in ("y", "yes")
