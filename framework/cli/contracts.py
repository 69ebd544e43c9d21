"""``leveret contracts export|check`` and ``leveret asyncapi``: message contracts as documents.

``contracts check --json`` is machine output (``--format text|json`` is its old, deprecated
spelling); ``asyncapi --format yaml|json`` is the document's format, not a choice of output.

Exit codes: 0 done (``check``: no breaking change), 1 ``check`` found breaking changes, 2 a usage
or configuration error (the source does not load, no snapshots, PyYAML missing for YAML).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from framework.cli._common import add_amqp_url, add_app, add_json, load
from framework.cli.exits import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from framework.errors import ConfigurationError

__all__ = ["register"]

_SOURCE_HELP = (
    "MODULE:APP (every contract and upcaster of the app, e.g. handlers.app:app) or MODULE "
    "(every contract class defined in that module or package, e.g. contracts)"
)


def register(commands: Any) -> None:
    """Add the ``contracts`` and ``asyncapi`` commands to the ``leveret`` subparsers."""
    from framework.schema.compat import Mode
    from framework.schema.snapshot import DEFAULT_SNAPSHOT_DIR

    contracts = commands.add_parser(
        "contracts",
        help="export contract snapshots, check compatibility with them",
        description="Keep message contracts compatible: JSON Schema snapshots and checks.",
    )
    contracts.set_defaults(command=lambda _args: _help(contracts))
    sub = contracts.add_subparsers(title="commands", metavar="COMMAND")

    export = sub.add_parser(
        "export",
        help="write a JSON Schema snapshot of every contract version",
        description=(
            "Write DIR/<wire name>.v<version>.json for every contract version (sorted keys, "
            "stable bytes), and remove the snapshots of contracts that are gone. Commit them."
        ),
    )
    export.add_argument("source", metavar="SOURCE", help=_SOURCE_HELP)
    export.add_argument(
        "--dir",
        default=DEFAULT_SNAPSHOT_DIR,
        metavar="DIR",
        help=f"snapshot directory (default {DEFAULT_SNAPSHOT_DIR})",
    )
    export.set_defaults(command=_export)

    check = sub.add_parser(
        "check",
        help="list every breaking change against the snapshots; exit 1 if any",
        description=(
            "Compare the contracts in code with the snapshots and print one line per breaking "
            "change. backward: the code reads messages written with the snapshots (consumers "
            "upgrade first); forward: the snapshots' consumers read what the code writes "
            "(producers upgrade first); full: both. --transitive: every snapshot version, not "
            "only the newest, must stay readable. Exit 0 when compatible, 1 on any break."
        ),
    )
    check.add_argument("source", metavar="SOURCE", help=_SOURCE_HELP)
    check.add_argument(
        "--dir",
        default=DEFAULT_SNAPSHOT_DIR,
        metavar="DIR",
        help=f"snapshot directory (default {DEFAULT_SNAPSHOT_DIR})",
    )
    check.add_argument(
        "--mode",
        choices=[m.value for m in Mode],
        default=Mode.BACKWARD.value,
        help="compatibility mode (default backward)",
    )
    check.add_argument(
        "--transitive",
        action="store_true",
        help="check against every snapshot version, not only the newest of each contract",
    )
    add_json(check, old_format=("text",))
    check.set_defaults(command=_check)

    asyncapi = commands.add_parser(
        "asyncapi",
        help="write an AsyncAPI 3.0 document of an app",
        description=(
            "Write the AsyncAPI 3.0 document of MODULE:APP: channels for its exchanges, routing "
            "keys and queues, send and receive operations per service, message payload "
            "schemas, AMQP bindings."
        ),
    )
    add_app(asyncapi)
    asyncapi.add_argument(
        "-o", "--output", metavar="FILE", help="write here instead of standard output"
    )
    asyncapi.add_argument(
        "--format",
        choices=("yaml", "json"),
        help="document format (default: from the file extension, else json); yaml needs PyYAML",
    )
    asyncapi.add_argument("--title", help="info.title (default: named after the app's prefix)")
    asyncapi.add_argument(
        "--api-version", default="1.0.0", metavar="VERSION", help="info.version (default 1.0.0)"
    )
    add_amqp_url(
        asyncapi,
        help="the broker to list under servers (default: the app's URL); no password is written",
    )
    asyncapi.set_defaults(command=_asyncapi)


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USAGE


def _export(args: argparse.Namespace) -> int:
    from framework.schema.snapshot import export
    from framework.schema.source import load_contracts

    result = export(load_contracts(args.source), args.dir)
    for name in result.written:
        print(f"wrote   {Path(args.dir) / name}")
    for name in result.removed:
        print(f"removed {Path(args.dir) / name}")
    print(result.summary())
    return EXIT_OK


def _check(args: argparse.Namespace) -> int:
    from framework.schema.compat import check
    from framework.schema.snapshot import read_snapshots
    from framework.schema.source import load_contracts

    contracts = load_contracts(args.source)
    snapshots = read_snapshots(args.dir)
    report = check(contracts, snapshots, mode=args.mode, transitive=args.transitive)
    if args.json:
        sys.stdout.buffer.write(report.to_json())
        sys.stdout.flush()
    else:
        sys.stdout.write(report.text())
    return EXIT_OK if report.ok else EXIT_FAILED


def _asyncapi(args: argparse.Namespace) -> int:
    from framework.schema.asyncapi import asyncapi_document

    output: str | None = args.output
    fmt: str = args.format or (
        "yaml" if output and output.lower().endswith((".yaml", ".yml")) else "json"
    )
    dump = _yaml_dump() if fmt == "yaml" else _json_dump
    app = load(args.app)
    document = asyncapi_document(
        app, title=args.title, version=args.api_version, server_url=args.amqp_url
    )
    text = dump(document)
    if output:
        Path(output).write_text(text, encoding="utf-8", newline="\n")
        print(f"wrote {output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return EXIT_OK


def _json_dump(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def _yaml_dump() -> Any:
    try:
        import yaml
    except ImportError:
        raise ConfigurationError(
            "--format yaml needs PyYAML: pip install 'leveret[yaml]' (or use --format json)"
        ) from None

    def dump(document: dict[str, Any]) -> str:
        text: str = yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100)
        return text

    return dump
