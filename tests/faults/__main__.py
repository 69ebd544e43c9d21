"""``python -m tests.faults [--profile short|long] [--scenario NAME ...] [--keep DIR]``.

``--soak-only --soak-minutes N`` runs only the soak, N minutes long.

Starts a RabbitMQ node of its own, runs the scenarios one after the other, prints the report
table (Markdown) and each failing scenario's problems; exit status 1 if any scenario failed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

from tests.faults.harness import PROFILES, Harness, Row, table
from tests.faults.scenarios import SCENARIOS
from tests.faults.soak import soak
from tests.support.second_node import second_node


async def run(args: argparse.Namespace, directory: Path) -> list[Row]:
    rows: list[Row] = []
    profile = PROFILES[args.profile]
    names = [] if args.soak_only else args.scenario or list(SCENARIOS)
    with second_node() as node:
        harness = Harness(node, directory, profile)
        for name in names:
            started = time.monotonic()
            print(f"-- {name} ({profile.name})", file=sys.stderr, flush=True)
            try:
                row = await SCENARIOS[name](harness)
            except Exception as exc:  # a scenario that breaks is a failed row, not the end
                row = Row(name, 0, 0, 0, 0, 0, 0, None, [f"{type(exc).__name__}: {exc}"])
            print(
                f"   {'ok' if row.ok else 'FAILED'} in {time.monotonic() - started:.0f}s",
                file=sys.stderr,
                flush=True,
            )
            rows.append(row)
        soak_wanted = profile.soak_minutes and not args.scenario and not args.no_soak
        if soak_wanted or args.soak_minutes or args.soak_only:
            rows.append(await soak(harness, minutes=args.soak_minutes or profile.soak_minutes))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults", description=__doc__)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="short")
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS))
    parser.add_argument("--no-soak", action="store_true", help="long profile without the soak")
    parser.add_argument("--soak-only", action="store_true", help="the soak and no scenario")
    parser.add_argument(
        "--soak-minutes", type=float, help="soak length (long profile: 30); given, the soak runs"
    )
    parser.add_argument("--keep", type=Path, help="keep logs and databases in this directory")
    args = parser.parse_args(argv)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        rows = asyncio.run(run(args, args.keep))
    else:
        with tempfile.TemporaryDirectory(prefix="leveret-faults-") as tmp:
            rows = asyncio.run(run(args, Path(tmp)))
    print(f"profile: {args.profile}\n")
    print(table(rows))
    for row in rows:
        if row.notes:
            print(f"\n{row.scenario}: {row.notes}")
        if not row.ok:
            print(f"\n{row.scenario} FAILED:")
            for problem in row.problems[:30]:
                print(f"  - {problem}")
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    from framework.logging import configure_logging

    configure_logging(level="critical")  # the table is the output; workers log to files
    raise SystemExit(main())
