"""What every contender works on: the contracts, the 188-byte order payload, the wire properties.

Shared by the orchestrator (which fills queues and offers load) and by the worker processes
(which run one contender each). Every contender reads and writes the same wire format: leveret's
(``type`` = wire name, ``message_id``, ``correlation_id``, ``content_type``, ``timestamp``,
``delivery_mode`` 2, the ``leveret-version`` and ``leveret-causation-id`` headers), so the only
difference between contenders is the code that does the work.
"""

from __future__ import annotations

import msgspec

from framework import Command, Query, Reply

PREFETCH = 100
ORDER_TYPE = "bench.place_order"
FOLLOW_UP_TYPE = "bench.reserve_inventory"
QUERY_TYPE = "bench.get_order_status"
REPLY_TYPE = "bench.order_status"
SENT_HEADER = "bench-sent-ns"  # wall-clock nanoseconds at publish, for latency


class Item(msgspec.Struct, frozen=True, kw_only=True):
    sku: str
    qty: int
    unit_price_cents: int


class BenchOrder(Command):
    __wire_name__ = ORDER_TYPE

    order_id: str
    customer_id: str
    items: list[Item]
    address: str


class BenchFollowUp(Command):
    __wire_name__ = FOLLOW_UP_TYPE

    order_id: str
    items: list[Item]


class OrderStatus(Reply):
    __wire_name__ = REPLY_TYPE

    order_id: str
    status: str
    total_cents: int


class GetOrderStatus(Query[OrderStatus]):
    __wire_name__ = QUERY_TYPE

    order_id: str


def order(i: int) -> BenchOrder:
    """The i-th order command; its JSON body is 188 bytes."""
    return BenchOrder(
        order_id=f"order-{i % 100_000_000:08d}",
        customer_id="cust-0042",
        items=[
            Item(sku="apple-1kg", qty=2, unit_price_cents=250),
            Item(sku="pear", qty=1, unit_price_cents=199),
        ],
        address="221B Baker St",
    )


def order_body(i: int) -> bytes:
    return msgspec.json.encode(order(i))


def status_of(order_id: str) -> OrderStatus:
    """What the query handler answers (read-only: computed, no I/O)."""
    return OrderStatus(order_id=order_id, status="paid", total_cents=699)


class Names:
    """Exchange and queue names of one measurement, all under ``bench.<tag>``."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.prefix = f"bench.{tag}"
        # The direct exchange inputs arrive on and follow-ups leave on: leveret's command
        # exchange, which every other contender declares identically.
        self.exchange = f"{self.prefix}.commands"
        self.input = f"{self.prefix}.in"  # leveret names its own handler queue
        self.sink = f"{self.prefix}.sink"
        self.replies = f"{self.prefix}.replies"  # a query contender's own reply queue
