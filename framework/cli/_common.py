"""What every ``leveret`` command shares: its options, loading the app, errors, tables, JSON.

A command is a function ``(args) -> int`` set as the parser's ``command`` default. It returns
an exit code (``framework.cli.exits``) or raises: ``CommandError`` with its own code, a
``ConfigurationError`` (exit 2), ``BrokerUnreachable`` or ``StoreUnreachable`` (exit 3);
``framework.cli.main`` prints the message as ``leveret: ...`` on stderr.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from framework.cli.exits import EXIT_UNREACHABLE, EXIT_USAGE
from framework.errors import ConfigurationError

if TYPE_CHECKING:
    from framework.app import App
    from framework.store.base import Store

__all__ = [
    "AMQP_EXAMPLE",
    "CommandError",
    "add_amqp_url",
    "add_app",
    "add_db_url",
    "add_deprecated",
    "add_json",
    "check_amqp_url",
    "existing_store",
    "is_amqp",
    "load",
    "missing_sqlite_file",
    "note",
    "print_json",
    "print_table",
    "readable_handler",
    "require_broker",
    "table",
    "usage_error",
]

AMQP_EXAMPLE = "amqp://user:password@host:5672/vhost"
APP_HELP = "the App, e.g. handlers.app:app (a dotted module path, run from the project directory)"

_encode_json = msgspec.json.Encoder().encode


class CommandError(Exception):
    """Ends a command with exit ``code`` after ``leveret: <message>`` on stderr."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def note(message: str) -> None:
    """``leveret: <message>`` on stderr: a warning that does not end the command."""
    print(f"leveret: {message}", file=sys.stderr)


# -- options ----------------------------------------------------------------------------------


class _Deprecated(argparse.Action):
    """An old spelling of an option: stores into the new one's ``dest`` and says so on stderr."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        self.instead: str = kwargs.pop("instead")
        self.value_map: dict[str, Any] | None = kwargs.pop("value_map", None)
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        note(f"{option_string} is deprecated and will be removed: write {self.instead}")
        if self.value_map is not None:
            values = self.value_map[values]
        setattr(namespace, self.dest, values)


def add_deprecated(
    parser: argparse.ArgumentParser, option: str, *, dest: str, instead: str
) -> None:
    """``option`` as an old spelling kept working: hidden from ``--help``, noted on stderr."""
    parser.add_argument(option, dest=dest, action=_Deprecated, instead=instead)


def add_app(parser: argparse.ArgumentParser, *, optional: bool = False) -> None:
    """The positional ``MODULE:APP``."""
    if optional:
        parser.add_argument("app", metavar="MODULE:APP", nargs="?", help=APP_HELP)
    else:
        parser.add_argument("app", metavar="MODULE:APP", help=APP_HELP)


def add_amqp_url(
    parser: argparse.ArgumentParser, *, help: str | None = None, old_url: bool = False
) -> None:
    """``--amqp-url URL``: the broker instead of the app's own; ``--url`` as an old spelling."""
    parser.add_argument(
        "--amqp-url",
        metavar="URL",
        help=help
        or f"RabbitMQ URL instead of the app's own, e.g. {AMQP_EXAMPLE}; a cluster's nodes as "
        "several URLs separated by commas",
    )
    if old_url:
        add_deprecated(parser, "--url", dest="amqp_url", instead="--amqp-url")


def add_db_url(parser: argparse.ArgumentParser, *, help: str | None = None) -> None:
    """``--db-url URL``: the store instead of the app's own."""
    parser.add_argument(
        "--db-url",
        metavar="URL",
        help=help
        or "the store instead of the app's own: sqlite:///file.db or postgresql://user@host/db",
    )


def add_json(parser: argparse.ArgumentParser, *, old_format: Sequence[str] = ()) -> None:
    """``--json``: machine output; ``--format CHOICE|json`` as an old spelling of it."""
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    if old_format:
        parser.add_argument(
            "--format",
            dest="json",
            action=_Deprecated,
            instead="--json (or nothing, for text)",
            choices=(*old_format, "json"),
            value_map={**{choice: False for choice in old_format}, "json": True},
        )


# -- the app ----------------------------------------------------------------------------------


def load(spec: str) -> App:
    """The App ``spec`` (``module.path:attribute``) names.

    Raises:
        ConfigurationError: it does not load; the message says what to change.
    """
    from framework.worker import load_app

    return load_app(spec)


def is_amqp(url: str) -> bool:
    return url.split("://", 1)[0].lower() in ("amqp", "amqps")


def check_amqp_url(url: str | None) -> None:
    """Refuse an ``--amqp-url`` that is not a RabbitMQ URL.

    Raises:
        ConfigurationError: what to write instead.
    """
    if url is not None and not is_amqp(url):
        raise ConfigurationError(
            f"--amqp-url must start with amqp:// or amqps://, e.g. {AMQP_EXAMPLE}"
        )


def require_broker(app: App, spec: str, *, what: str) -> None:
    """Refuse an app on the in-process broker for a command that needs RabbitMQ.

    Raises:
        ConfigurationError: the app is on ``memory://``; the message says to pass ``--amqp-url``.
    """
    from framework.transport.memory import MemoryTransport

    if isinstance(app.transport, MemoryTransport):
        raise ConfigurationError(
            f"{spec} uses the in-process broker (memory://), whose queues live only in the "
            f"process that runs it, so {what} needs RabbitMQ: pass --amqp-url {AMQP_EXAMPLE}"
        )


def existing_store(store: Store, *, db_url_given: bool) -> Store:
    """``store``, unless it is a SQLite file that does not exist: reading it would create it.

    Raises:
        CommandError: exit 3, saying where the file was looked for and what to pass.
    """
    path = missing_sqlite_file(store)
    if path is not None:
        instead = "check the path" if db_url_given else "name the app's database with --db-url URL"
        raise CommandError(
            EXIT_UNREACHABLE,
            f"no database at {path} (leveret creates it when the app first runs there): {instead}",
        )
    return store


def missing_sqlite_file(store: Store) -> str | None:
    """The path of ``store``'s SQLite file when that file does not exist, else None."""
    path = getattr(store, "path", None)
    if isinstance(path, str) and path != ":memory:" and not Path(path).exists():
        return path
    return None


# -- output -----------------------------------------------------------------------------------


def print_json(value: Any) -> None:
    """``value`` as one line of JSON on stdout (msgspec: Structs, dataclasses, dicts...)."""
    print(_encode_json(value).decode())


def table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    indent: str = "",
    right: Collection[int] = (),
) -> list[str]:
    """The lines of a table: columns as wide as their widest cell, two spaces apart.

    Args:
        header: the column names, the first line.
        rows: the cells, as text.
        indent: put before every line.
        right: the indexes of the columns aligned right (numbers).
    """
    lines = [header, *rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return [
        (
            indent
            + "  ".join(
                cell.rjust(width) if i in right else cell.ljust(width)
                for i, (cell, width) in enumerate(zip(line, widths, strict=True))
            )
        ).rstrip()
        for line in lines
    ]


def print_table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    indent: str = "",
    right: Collection[int] = (),
) -> None:
    """Print ``table(...)``."""
    for line in table(header, rows, indent=indent, right=right):
        print(line)


_TAG = re.compile(r"^(?P<name>.*)\[(?P<tag>[\w-]+)\]$")


def readable_handler(name: str) -> str:
    """A handler's registered name as a person reads it.

    >>> readable_handler("order_view.build_read_side.<locals>.on_placed[projection]")
    'order_view.on_placed (projection)'
    """
    tag = ""
    match = _TAG.match(name)
    if match is not None:
        name, tag = match["name"], f" ({match['tag']})"
    parts = name.split(".")
    while "<locals>" in parts:  # `outer.<locals>.inner`: the function that built it says little
        at = parts.index("<locals>")
        del parts[max(at - 1, 0) : at + 1]
    return ".".join(parts) + tag


def usage_error(message: str) -> CommandError:
    """A ``CommandError`` with exit 2."""
    return CommandError(EXIT_USAGE, message)
