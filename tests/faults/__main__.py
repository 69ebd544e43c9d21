"""``python -m tests.faults [--profile short|long] [--scenario NAME ...] [--cluster] [--keep DIR]``.

``--soak-only --soak-minutes N`` runs only the soak, N minutes long. ``--cluster`` runs the
cluster scenarios (``tests/faults/cluster.py``) on a three-node cluster of its own; alone, only
them. A ``--scenario`` may also be a prefix of names (``--scenario cluster_``).

Starts a RabbitMQ node (or cluster) of its own, runs the scenarios one after the other, prints
the report table (Markdown; with the longest stall in saga progress when cluster scenarios ran)
and each failing scenario's problems; exit status 1 if any scenario failed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

from tests.faults.cluster import CLUSTER_SCENARIOS, ClusterBroker
from tests.faults.harness import PROFILES, Harness, Row, table
from tests.faults.scenarios import SCENARIOS, Scenario
from tests.faults.soak import soak
from tests.support.cluster import cluster
from tests.support.second_node import second_node


def selected(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """The single-node and the cluster scenarios asked for, in their registries' order."""
    if args.soak_only:
        return [], []
    wanted = args.scenario or []
    for name in wanted:
        if not any(n.startswith(name) for n in [*SCENARIOS, *CLUSTER_SCENARIOS]):
            raise SystemExit(f"no scenario is called {name!r} (or starts so)")
    if not wanted:
        single = [] if args.cluster else list(SCENARIOS)
        return single, list(CLUSTER_SCENARIOS) if args.cluster else []
    single = [n for n in SCENARIOS if any(n.startswith(w) for w in wanted)]
    clustered = [n for n in CLUSTER_SCENARIOS if any(n.startswith(w) for w in wanted)]
    return single, list(CLUSTER_SCENARIOS) if args.cluster else clustered


async def _run_all(harness: Harness, names: list[str], registry: dict[str, Scenario]) -> list[Row]:
    rows: list[Row] = []
    for name in names:
        started = time.monotonic()
        print(f"-- {name} ({harness.profile.name})", file=sys.stderr, flush=True)
        try:
            row = await registry[name](harness)
        except Exception as exc:  # a scenario that breaks is a failed row, not the end
            row = Row(name, 0, 0, 0, 0, 0, 0, None, [f"{type(exc).__name__}: {exc}"])
        print(
            f"   {'ok' if row.ok else 'FAILED'} in {time.monotonic() - started:.0f}s: {row.notes}",
            file=sys.stderr,
            flush=True,
        )
        rows.append(row)
    return rows


async def run(args: argparse.Namespace, directory: Path) -> list[Row]:
    rows: list[Row] = []
    profile = PROFILES[args.profile]
    single, clustered = selected(args)
    soak_wanted = profile.soak_minutes and not args.scenario and not args.no_soak
    soak_wanted = soak_wanted and not args.cluster
    if single or soak_wanted or args.soak_minutes or args.soak_only:
        with second_node() as node:
            harness = Harness(node, directory, profile)
            rows += await _run_all(harness, single, SCENARIOS)
            if soak_wanted or args.soak_minutes or args.soak_only:
                minutes = args.soak_minutes or profile.soak_minutes
                rows.append(await soak(harness, minutes=minutes))
    if clustered:
        with cluster() as nodes:
            harness = Harness(ClusterBroker(nodes), directory / "cluster", profile)
            rows += await _run_all(harness, clustered, CLUSTER_SCENARIOS)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults", description=__doc__)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="short")
    parser.add_argument(
        "--scenario",
        action="append",
        metavar="NAME",
        help=f"a scenario, or a prefix of names: {', '.join([*SCENARIOS, *CLUSTER_SCENARIOS])}",
    )
    parser.add_argument(
        "--cluster", action="store_true", help="the cluster scenarios, on a three-node cluster"
    )
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
    print(table(rows, stall=bool(selected(args)[1])))
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
