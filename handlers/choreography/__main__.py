"""``python -m handlers.choreography``: the order trail from the command line, what
``leveret sagas list|show`` is to the orchestrated shop.

    python -m handlers.choreography list [--db-url URL] [--status S] [--idle SECONDS] [--limit N]
    python -m handlers.choreography show ORDER_ID [--db-url URL]

It reads the trail's tables (``handlers.choreography.trail``) from the database, so it works
without a broker and while the services are down. The database is ``--db-url``, else
``LEVERET_SHOP_DB_URL``, else the choreographed shop's default. Exit codes: 0 done; 1 no such
order; 2 a usage error or a database without the trail's tables.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import sys
import time
from collections.abc import Sequence
from typing import get_args

from contracts.trail import ListOrderTrails, TrailStatus
from framework.store import store_from_url
from framework.urls import redact
from handlers.choreography import DEFAULT_DB_URL
from handlers.choreography.trail import list_trails, load_trail

__all__ = ["main", "run"]


def _stamp(at: float) -> str:
    return datetime.datetime.fromtimestamp(at, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


async def _list(db_url: str, query: ListOrderTrails) -> int:
    store = store_from_url(db_url)
    try:
        async with store.transaction() as tx:
            found = await list_trails(tx, query, now=time.time())
    finally:
        await store.close()
    print(f"{'order':<24} {'status':<10} {'events':>6}  {'furthest event':<34} {'idle':>8}")
    now = time.time()
    for order in found.orders:
        print(
            f"{order.order_id:<24} {order.status:<10} {order.events:>6}  {order.last_event:<34} "
            f"{now - order.last_at:>7.1f}s"
        )
    print(f"{len(found.orders)} order(s)")
    return 0


async def _show(db_url: str, order_id: str) -> int:
    store = store_from_url(db_url)
    try:
        async with store.transaction() as tx:
            trail = await load_trail(tx, order_id)
    finally:
        await store.close()
    if trail is None:
        print(f"no order {order_id!r} in the trail at {redact(db_url)}", file=sys.stderr)
        return 1
    print(f"order {trail.order_id}: {trail.status}")
    zero = trail.entries[0].at if trail.entries else 0.0
    for entry in trail.entries:
        print(
            f"  {_stamp(entry.at)}  {1000 * (entry.at - zero):+9.1f} ms  "
            f"{entry.event:<34} {entry.detail}"
        )
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m handlers.choreography",
        description="The choreographed shop's order trail: list orders, show one order's events.",
    )
    parser.add_argument(
        "--db-url",
        default=os.environ.get("LEVERET_SHOP_DB_URL", DEFAULT_DB_URL),
        help="the shop's database (default: LEVERET_SHOP_DB_URL, else %(default)s)",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="orders by status, or idle for a while")
    listing.add_argument("--status", choices=get_args(TrailStatus))
    listing.add_argument(
        "--idle", type=float, metavar="SECONDS", help="only orders with no event for SECONDS"
    )
    listing.add_argument("--limit", type=int, default=100)
    show = actions.add_parser("show", help="every event of one order, as the trail saw them")
    show.add_argument("order_id", metavar="ORDER_ID")
    return parser


async def run(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, print the trail asked for, return the exit code (``main`` in a loop
    that runs already)."""
    args = _parser().parse_args(argv)
    try:
        if args.action == "show":
            return await _show(args.db_url, args.order_id)
        status: TrailStatus | None = args.status
        query = ListOrderTrails(status=status, idle_seconds=args.idle, limit=args.limit)
        return await _list(args.db_url, query)
    except Exception as exc:  # no such table, no such database: say which and stop
        print(f"cannot read the order trail at {redact(args.db_url)}: {exc}", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (``sys.argv[1:]`` by default), print the trail asked for, return the exit
    code."""
    return asyncio.run(run(argv))


if __name__ == "__main__":
    raise SystemExit(main())
