"""A property-based fuzzer of AMQP properties and header tables against a running worker.

Hypothesis builds content headers below every client (``tests.support.amqp_fields``): any subset
of the properties with arbitrary bytes in their short strings, timestamps anywhere in 64 bits,
any delivery mode and priority, and header tables of every AMQP type nested and sized at random
(names that are not UTF-8, doubles and floats from raw bytes — NaN and infinities included —,
large arrays, deep nesting). Each message carries a valid order in its body, so what became of it
can be told: it must be handled or reach its DLQ, exactly once, and after every batch the worker
must still have its connection and both consumers. What RabbitMQ itself refuses (it parses
header tables and closes a publisher's connection on some) never reaches the worker and is left
out of the count.

``LEVERET_FUZZ_EXAMPLES`` sets the number of batches (default 25, CI's short profile).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import struct
import threading
from collections import Counter
from collections.abc import Iterator, MutableMapping
from concurrent.futures import Future
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from contracts.orders import PlaceOrder
from framework import App, AppConfig, Context, RetryPolicy, Service
from framework.transport.amqp import AmqpTransport
from framework.transport.base import Delivery
from tests.support import amqp_fields as f
from tests.support.raw_amqp import raw_channel

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow]

PLACE = "orders.place_order"


def body(order_id: str) -> bytes:
    return b'{"order_id":"%s","customer_id":"c","address":"a","items":[]}' % order_id.encode()


EXAMPLES = int(os.environ.get("LEVERET_FUZZ_EXAMPLES", "25"))
T = TypeVar("T")

# -- strategies ------------------------------------------------------------------------------

_FIXED = {b"b": 1, b"B": 1, b"s": 2, b"u": 2, b"I": 4, b"i": 4, b"l": 8, b"L": 8, b"f": 4, b"d": 8}
_SPECIAL_DOUBLES = [1e300, -1e300, float("inf"), float("nan"), 5e-324, 0.0]

leaf = st.one_of(
    st.sampled_from(sorted(_FIXED)).flatmap(
        lambda code: st.binary(min_size=_FIXED[code], max_size=_FIXED[code]).map(
            lambda raw: f.Field(code, raw)
        )
    ),
    st.sampled_from(_SPECIAL_DOUBLES).map(f.double),
    st.booleans().map(lambda b: f.Field(b"t", b"\x01" if b else b"\x00")),
    st.integers(min_value=0, max_value=2**64 - 1).map(f.timestamp),
    st.sampled_from([0, 2**32, 2**63, 2**64 - 1]).map(f.timestamp),
    st.binary(min_size=5, max_size=5).map(lambda raw: f.Field(b"D", raw)),
    st.binary(max_size=60).map(f.long_string),
    st.binary(max_size=60).map(lambda raw: f.Field(b"x", struct.pack(">I", len(raw)) + raw)),
    st.just(f.Field(b"V", b"")),
)
names = st.one_of(st.text(max_size=12).map(str.encode), st.binary(max_size=12))


def _tree(children: st.SearchStrategy[f.Field]) -> st.SearchStrategy[f.Field]:
    return st.one_of(
        st.lists(children, max_size=6).map(f.array),
        st.lists(st.tuples(names, children), max_size=6).map(f.table_value),
    )


field_values = st.recursive(leaf, _tree, max_leaves=40)
deep = st.integers(min_value=1, max_value=60).map(lambda depth: _nest(f.Field(b"V", b""), depth))
wide = st.integers(min_value=0, max_value=12_000).map(
    lambda n: f.array([f.Field(b"b", b"\x01")] * n)
)
header_tables = st.lists(st.tuples(names, st.one_of(field_values, deep, wide)), max_size=8).map(
    f.table
)
short = st.one_of(st.text(max_size=40).map(str.encode), st.binary(max_size=40))


def _nest(value: f.Field, depth: int) -> f.Field:
    for _ in range(depth):
        value = f.array([value])
    return value


@st.composite
def content_headers(draw: st.DrawFn) -> dict[str, bytes | int]:
    """A random subset of Basic.Properties (never user_id or expiration: RabbitMQ refuses a
    user_id that is not the publisher's, and an expiration that is not a number)."""
    props: dict[str, bytes | int] = {}
    message_id = draw(st.one_of(st.none(), short, st.binary(min_size=200, max_size=255)))
    if message_id is not None:
        props["message_id"] = message_id
    message_type = draw(st.one_of(st.just(PLACE.encode()), st.none(), short))
    if message_type is not None:
        props["type"] = message_type
    for name in ("content_type", "content_encoding", "correlation_id", "reply_to", "app_id"):
        if draw(st.booleans()):
            props[name] = draw(st.one_of(short, st.just(b"application/json")))
    if draw(st.booleans()):
        props["priority"] = draw(st.integers(min_value=0, max_value=255))
    if draw(st.booleans()):
        # RabbitMQ refuses a delivery mode other than 1 and 2: mostly draw those.
        props["delivery_mode"] = draw(
            st.one_of(st.sampled_from([1, 2]), st.integers(min_value=0, max_value=255))
        )
    if draw(st.booleans()):
        props["timestamp"] = draw(
            st.one_of(
                st.integers(min_value=0, max_value=2**64 - 1), st.sampled_from([2**64 - 1, 0])
            )
        )
    if draw(st.booleans()):
        props["headers"] = draw(header_tables)
    return props


# -- a worker on a loop of its own, so that hypothesis can drive it from sync code -----------


class Worker:
    """The orders app on a background event loop, a consumer of its DLQ, and the outcomes."""

    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.prefix = prefix
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.outcomes: Counter[str] = Counter()
        self.changed: asyncio.Event | None = None
        self.logs: list[MutableMapping[str, Any]] = []
        self.app: App | None = None
        self.probe: AmqpTransport | None = None

    def run(self, coro: Any, timeout: float = 60) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    async def start(self) -> None:
        self.changed = asyncio.Event()
        orders = Service("orders")

        @orders.command(retry=RetryPolicy.none())
        async def place_order(cmd: PlaceOrder, ctx: Context) -> None:
            self._saw(cmd.order_id)

        self.app = App([orders], url=self.url, config=AppConfig(prefix=self.prefix, prefetch=50))
        await self.app.start()
        self.probe = AmqpTransport(self.url)
        await self.probe.connect()

        async def on_dead(d: Delivery) -> None:
            await d.ack()
            self._saw(d.body.decode(errors="replace"))

        await self.probe.consume(self.dlq, on_dead, prefetch=100)

    def _saw(self, key: str) -> None:
        self.outcomes[key] += 1
        assert self.changed is not None
        self.changed.set()

    @property
    def queue(self) -> str:
        assert self.app is not None
        return self.app.naming.handler_queue("orders", PLACE)

    @property
    def dlq(self) -> str:
        assert self.app is not None
        return self.app.naming.dlq(self.queue)

    async def publish(self, batch: list[tuple[str, dict[str, bytes | int]]]) -> list[str]:
        """Publish each message on a connection of its own; returns the order ids the broker
        accepted (it closes the connection of one whose headers it will not parse)."""
        assert self.app is not None
        accepted = []
        for order_id, props in batch:
            try:
                async with raw_channel(self.url) as channel:
                    channel.publish(
                        exchange=self.app.naming.commands,
                        routing_key=PLACE,
                        body=body(order_id),
                        raw_properties=f.properties(**props),
                    )
            except ConnectionError:
                continue  # refused by RabbitMQ: it never reaches the worker
            accepted.append(order_id)
        return accepted

    def seen(self, order_id: str) -> int:
        """Times the order was handled (by id) or dead-lettered (by body)."""
        return self.outcomes[order_id] + self.outcomes[body(order_id).decode()]

    async def settle(self, ids: list[str]) -> None:
        """Wait until every accepted message was handled or dead-lettered."""
        assert self.changed is not None
        async with asyncio.timeout(30):
            while not all(self.seen(order_id) for order_id in ids):
                self.changed.clear()
                await self.changed.wait()
        await asyncio.sleep(0.3)  # a duplicate or a requeue loop would show by now
        assert self.probe is not None
        info = await self.probe.queue_info(self.queue)
        assert info.consumers == 1, "the worker lost its consumer"

    async def stop(self) -> None:
        if self.app is not None:
            await self.app.stop(grace=1)
        if self.probe is not None:
            await self.probe.close()


@pytest.fixture
def worker(amqp_url: str, prefix: str) -> Iterator[Worker]:
    running = Worker(amqp_url, prefix)
    with capture_logs() as logs:
        running.logs = logs
        running.run(running.start())
        try:
            yield running
        finally:
            running.run(running.stop())
            running.loop.call_soon_threadsafe(running.loop.stop)
            running.thread.join(10)
            running.loop.close()


_counter = itertools.count()


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    # One worker for every example: that it survives them all is the point.
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
@given(batch=st.lists(content_headers(), min_size=1, max_size=6))
def test_no_content_header_stops_the_worker_or_escapes_the_dlq(
    worker: Worker, batch: list[dict[str, bytes | int]]
) -> None:
    """Every fuzzed message the broker accepts is handled or dead-lettered exactly once, and
    the worker keeps its connection and its consumer."""
    named = [(f"fz-{next(_counter)}", props) for props in batch]
    ids = worker.run(worker.publish(named))
    worker.run(worker.settle(ids))
    for order_id in ids:
        assert worker.seen(order_id) == 1, f"{order_id} ended {worker.seen(order_id)} times"
    trouble = {"broker_connection_lost", "consumers_verified"}
    assert [e for e in worker.logs if e["event"] in trouble] == [], "the connection was lost"
