"""Hostile input published raw to a handler's queue on RabbitMQ, all of it in one stream.

``tests/app/test_bad_input.py`` pins one reason per case (malformed JSON, invalid UTF-8, unknown
type, unsupported version, missing message id or type, pickle, oversize, a string for an int).
This module adds what an attacker or a broken producer sends next: NaN and infinities, type
confusion in every position, JSON nested a hundred thousand levels deep, arrays of hundreds of
thousands of elements within the default size limit, a pickle that would leave a trace if it were
ever loaded, odd version headers, and a poison message whose handler always raises. They are
published back to back, ahead of a good message, to one running worker: each bad one must end in
the DLQ exactly once with its reason, the good ones must be handled, and the worker must still
be consuming at the end.
"""

from __future__ import annotations

import asyncio
import pickle
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from contracts.orders import LineItem, PlaceOrder
from framework import App, AppConfig, Context, RetryPolicy, Service
from framework import envelope as env
from framework.codec import DEFAULT_MAX_BODY_SIZE
from framework.transport.amqp import AmqpTransport
from framework.transport.base import Delivery

pytestmark = pytest.mark.rabbitmq

WIRE = "orders.place_order"
ITEM = b'{"sku":"apple","qty":1,"unit_price_cents":5}'
DEEP = 100_000  # levels of nesting: 200 kB of brackets, far past any recursion limit


def order(*, items: bytes = b"[" + ITEM + b"]", order_id: bytes = b'"o"', **extra: bytes) -> bytes:
    """A PlaceOrder body with the given raw JSON in its fields (and extra unknown fields)."""
    fields = {
        b"order_id": order_id,
        b"customer_id": b'"c"',
        b"address": b'"a"',
        b"items": items,
        **{k.encode(): v for k, v in extra.items()},
    }
    return b"{" + b",".join(b'"%s":%s' % (k, v) for k, v in fields.items()) + b"}"


class Unpickled:
    """Loading this pickle creates a file: proof that something unpickled it."""

    def __init__(self, trace: Path) -> None:
        self.trace = trace

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.trace), "w"))


@dataclass
class Case:
    """One raw publish: its body, properties, and the DLQ reason it must get (None: handled)."""

    body: bytes
    reason: str | None
    properties: dict[str, Any] = field(default_factory=dict)


def cases(trace: Path) -> dict[str, Case]:
    """Every case by message id."""
    evil = pickle.dumps(Unpickled(trace))
    huge = b"[" + b",".join([b"0"] * 300_000) + b"]"  # 600 kB
    many_items = b"[" + b",".join([ITEM] * 20_000) + b"]"  # 900 kB, every item valid
    return {
        # Not JSON: NaN and the infinities are JavaScript, not JSON.
        "nan": Case(order(items=b'[{"sku":"a","qty":NaN,"unit_price_cents":5}]'), "malformed_json"),
        "infinity": Case(order(extra=b"Infinity"), "malformed_json"),
        "minus-infinity": Case(order(items=b"-Infinity"), "malformed_json"),
        "empty-body": Case(b"", "malformed_json"),
        "trailing-garbage": Case(order() + b"}", "malformed_json"),
        "huge-number": Case(
            order(items=b'[{"sku":"a","qty":1e999,"unit_price_cents":5}]'),
            "validation_error: $.items[0].qty number out of range",
        ),
        # Type confusion in every position.
        "bool-for-int": Case(
            order(items=b'[{"sku":"a","qty":true,"unit_price_cents":5}]'),
            "validation_error: $.items[0].qty expected int, got bool",
        ),
        "float-for-int": Case(
            order(items=b'[{"sku":"a","qty":1.5,"unit_price_cents":5}]'),
            "validation_error: $.items[0].qty expected int, got float",
        ),
        "int-for-str": Case(
            order(order_id=b"7"), "validation_error: $.order_id expected str, got int"
        ),
        "null-for-str": Case(
            order(order_id=b"null"), "validation_error: $.order_id expected str, got null"
        ),
        "object-for-list": Case(
            order(items=b"{}"), "validation_error: $.items expected array, got object"
        ),
        "list-for-object": Case(b"[1,2,3]", "validation_error: expected object, got array"),
        "string-body": Case(b'"PlaceOrder"', "validation_error: expected object, got str"),
        "out-of-range": Case(
            order(items=b'[{"sku":"a","qty":0,"unit_price_cents":5}]'),
            "validation_error: $.items[0].qty expected int >= 1",
        ),
        "missing-field": Case(
            b'{"order_id":"o","customer_id":"c","items":[]}',
            "validation_error: object missing required field address",
        ),
        # Depth: a hundred thousand levels, in an unknown field (skipped by the decoder) and in
        # a typed one; both bounded by msgspec's recursion guard, neither crashes the worker.
        "deep-unknown-field": Case(order(junk=b"[" * DEEP + b"]" * DEEP), "too_deeply_nested"),
        "deep-object": Case(order(junk=b'{"a":' * DEEP + b"1" + b"}" * DEEP), "too_deeply_nested"),
        "deep-in-items": Case(
            order(items=b"[" * DEEP + b"]" * DEEP),
            "validation_error: $.items[0] expected object, got array",
        ),
        # Size: arrays of hundreds of thousands of elements within the default 1 MiB limit.
        "huge-array-wrong-type": Case(
            order(items=huge), "validation_error: $.items[0] expected object, got int"
        ),
        "huge-unknown-array": Case(order(order_id=b'"o-huge-unknown"', junk=huge), None),
        "many-items": Case(order(order_id=b'"o-many-items"', items=many_items), None),
        # Rejected unread: the broker dead-letters it (no copy through the worker).
        "just-over-the-limit": Case(
            order(pad=b'"' + b"x" * DEFAULT_MAX_BODY_SIZE + b'"'), "broker: rejected"
        ),
        # Pickle is never loaded, whatever the content type says.
        "pickle": Case(
            evil,
            "unsupported_content_type: 'application/x-python-pickle'",
            {"content_type": "application/x-python-pickle"},
        ),
        "pickle-octet-stream": Case(
            evil,
            "unsupported_content_type: 'application/octet-stream'",
            {"content_type": "application/octet-stream"},
        ),
        "pickle-as-json": Case(evil, "malformed_json", {"content_type": "application/json"}),
        "pickle-no-content-type": Case(evil, "malformed_json", {"content_type": None}),
        # Version headers that are not a supported version.
        "version-text": Case(
            order(),
            "unsupported_version: 'orders.place_order' version 'two'",
            {"headers": {env.VERSION: "two"}},
        ),
        "version-zero": Case(
            order(),
            "unsupported_version: 'orders.place_order' version 0",
            {"headers": {env.VERSION: 0}},
        ),
        "version-float": Case(
            order(),
            "unsupported_version: 'orders.place_order' version 1.0",
            {"headers": {env.VERSION: 1.0}},
        ),
        # A valid message whose handler always raises: bounded retries, then the DLQ once.
        "poison": Case(order(order_id=b'"poison"'), "handler_failed: RuntimeError"),
    }


@dataclass
class Worker:
    app: App
    probe: AmqpTransport
    handled: asyncio.Queue[PlaceOrder]
    dead: asyncio.Queue[Delivery]
    poison_runs: list[int]


RETRY = RetryPolicy(immediate=1, delays=(0.05,))


@pytest.fixture
async def worker(amqp_url: str, prefix: str) -> AsyncIterator[Worker]:
    """A running orders app with the default size limit, and a consumer of its DLQ."""
    orders = Service("orders")
    handled: asyncio.Queue[PlaceOrder] = asyncio.Queue()
    poison_runs: list[int] = []

    @orders.command(retry=RETRY)
    async def place_order(cmd: PlaceOrder, ctx: Context) -> None:
        if cmd.order_id == "poison":
            poison_runs.append(ctx.attempt)
            raise RuntimeError("this handler fails on every attempt")
        handled.put_nowait(cmd)

    app = App([orders], url=amqp_url, config=AppConfig(prefix=prefix, prefetch=10))
    await app.start()
    probe = AmqpTransport(amqp_url)
    await probe.connect()
    dead: asyncio.Queue[Delivery] = asyncio.Queue()

    async def on_dead(d: Delivery) -> None:
        await d.ack()
        dead.put_nowait(d)

    await probe.consume(
        app.naming.dlq(app.naming.handler_queue("orders", WIRE)), on_dead, prefetch=50
    )
    try:
        yield Worker(app, probe, handled, dead, poison_runs)
    finally:
        await app.stop(grace=0)
        await probe.close()


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def reason_of(dead: Delivery) -> str:
    """leveret's reason header, or the broker's x-death reason of a message rejected unread."""
    if env.DEAD_REASON in dead.headers:
        return text(dead.headers[env.DEAD_REASON])
    return f"broker: {dead.headers['x-death'][0]['reason']}"


async def test_hostile_input_is_dead_lettered_once_and_the_worker_keeps_going(
    worker: Worker, amqp_url: str, tmp_path: Path
) -> None:
    """Every bad message lands in the DLQ once with its reason, nothing is unpickled, and the
    valid ones — including one published after all the bad ones — are handled."""
    trace = tmp_path / "unpickled"
    table = cases(trace)
    app = worker.app
    queue = app.naming.handler_queue("orders", WIRE)
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(app.naming.commands)
        for message_id, case in table.items():
            properties: dict[str, Any] = {
                "type": WIRE,
                "content_type": "application/json",
                "headers": {env.VERSION: 1},
                **case.properties,
            }
            properties = {k: v for k, v in properties.items() if v is not None}
            await exchange.publish(
                aio_pika.Message(case.body, message_id=message_id, **properties),
                routing_key=WIRE,
            )
        good = PlaceOrder(
            order_id="o-good",
            customer_id="c",
            address="a",
            items=[LineItem(sku="apple", qty=1, unit_price_cents=5)],
        )
        await app.send(good)

        bad = {mid for mid, case in table.items() if case.reason is not None}
        expected_handled = {"o-good", "o-huge-unknown", "o-many-items"}
        dead: dict[str, Delivery] = {}
        handled: dict[str, PlaceOrder] = {}
        async with asyncio.timeout(30):
            while set(dead) != bad:
                got = await worker.dead.get()
                assert got.message_id not in dead, f"{got.message_id} dead-lettered twice"
                dead[got.message_id or ""] = got
            while set(handled) != expected_handled:
                cmd = await worker.handled.get()
                handled[cmd.order_id] = cmd

        # The worker is still consuming after all of it.
        await app.send(PlaceOrder(order_id="o-after", customer_id="c", address="a", items=[]))
        async with asyncio.timeout(15):
            assert (await worker.handled.get()).order_id == "o-after"

        # Stop the app: nothing can be dead-lettered any more, so a marker published to the
        # DLQ now arrives after any duplicate would have.
        await app.stop(grace=5)
        await channel.default_exchange.publish(
            aio_pika.Message(b"{}", message_id="marker"), routing_key=app.naming.dlq(queue)
        )
        late: list[str] = []
        async with asyncio.timeout(15):
            while (got := await worker.dead.get()).message_id != "marker":
                late.append(got.message_id or "")
    finally:
        await connection.close()

    assert late == [], f"dead-lettered more than once: {Counter(late)}"
    reasons = {mid: reason_of(d) for mid, d in dead.items()}
    wrong = {
        mid: reason
        for mid, reason in reasons.items()
        if not reason.startswith(table[mid].reason or "")
    }
    assert wrong == {}, wrong
    for mid, delivery in dead.items():
        assert delivery.body == table[mid].body, f"{mid}: the DLQ copy differs from the original"
        if env.DEAD_REASON in delivery.headers:  # a copy, not the broker's own dead letter
            assert text(delivery.headers[env.ORIGINAL_QUEUE]) == queue
    assert not trace.exists(), "a pickle was loaded"
    # The poison message ran 1 + immediate + delayed times, then went to the DLQ with its error.
    assert worker.poison_runs == [0, 1, 2]
    poison = dead["poison"]
    assert poison.headers[env.ATTEMPT] == 3
    assert text(poison.headers[env.EXCEPTION_TYPE]) == "RuntimeError"
    assert text(poison.headers[env.EXCEPTION_MESSAGE]) == "this handler fails on every attempt"
    assert len(handled["o-many-items"].items) == 20_000
    assert worker.handled.empty()
