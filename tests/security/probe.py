"""Before/after probe of issue 14's cases: one hostile case against a fresh worker on RabbitMQ.

``python -m tests.security.probe CASE`` starts an orders app (a command and a query handler) on
the broker at ``LEVERET_AMQP_URL`` (default the local one, vhost ``/``: point it at a scratch
vhost, the exchanges stay), publishes the case raw
(``tests.support.amqp_fields``), then a valid order, waits 10 s and prints one JSON line: whether
and when the valid order was handled, the DLQ and queue depths, the consumers, connection losses
and dead-letter publish failures (a requeue loop). It deletes its queues afterwards. To see the
behaviour before the hardening, run it from a checkout of an older commit with this file and
``tests/support/amqp_fields.py`` and ``raw_amqp.py`` copied in. CASE is one of ``CASES``, or
``8-forged-reply-to-x20``.
"""

import asyncio
import contextlib
import json
import os
import secrets
import subprocess
import sys
import time

from structlog.testing import capture_logs

from contracts.orders import GetOrder, OrderView, PlaceOrder
from framework import App, AppConfig, Context, QueryContext, RejectMessage, Service
from framework.transport.amqp import AmqpTransport
from tests.support import amqp_fields as f
from tests.support.raw_amqp import raw_channel

URL = os.environ.get("LEVERET_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
PLACE, GET = "orders.place_order", "orders.get_order"


def body(order_id):
    return b'{"order_id":"%s","customer_id":"c","address":"a","items":[]}' % order_id.encode()


def nested(depth):
    v = f.long_string(b"x")
    for _ in range(depth):
        v = f.table_value([(b"a", v)])
    return f.table([(b"deep", v)])


def valid(mid, **extra):
    return {"message_id": mid, "type": PLACE.encode(), "delivery_mode": 2, **extra}


BIG = f.table([(b"big", f.array([f.Field(b"V", b"")] * 120_000))])
CASES = {
    "1a-timestamp-property": lambda: [(PLACE, body("x"), valid(b"m1", timestamp=2**64 - 1))],
    "1b-timestamp-header": lambda: [
        (PLACE, body("x"), valid(b"m2", headers=f.table([(b"t", f.timestamp(2**64 - 1))])))
    ],
    "1c-nested-2000": lambda: [(PLACE, body("x"), valid(b"m3", headers=nested(2000)))],
    "2a-double-1e300-rejected": lambda: [
        (PLACE, body("reject"), valid(b"m4", headers=f.table([(b"r", f.double(1e300))])))
    ],
    "2b-attempt-max-rejected": lambda: [
        (
            PLACE,
            body("reject"),
            valid(b"m5", headers=f.table([(b"leveret-attempt", f.signed64(2**63 - 1))])),
        )
    ],
    "3-120kb-headers-x30": lambda: [
        (PLACE, body(f"b{i}"), valid(b"m6-%d" % i, headers=BIG)) for i in range(30)
    ],
    "8-forged-reply-to-x20": None,  # built in main (needs the victim queue's name)
    "9-oversize-body": lambda: [
        (PLACE, body("x")[:-1] + b',"pad":"' + b"x" * 1_100_000 + b'"}', valid(b"m9"))
    ],
}


async def main(case):
    prefix = "p" + secrets.token_hex(3)
    orders = Service("orders")
    handled = []

    @orders.command
    async def place_order(cmd: PlaceOrder, ctx: Context) -> None:
        if cmd.order_id == "reject":
            raise RejectMessage("no", reason="unknown_saga: probe")
        handled.append(cmd.order_id)

    @orders.query
    async def get_order(q: GetOrder, ctx: QueryContext) -> OrderView:
        return OrderView(order_id=q.order_id, customer_id="c", status="placed", total_cents=1)

    app = App([orders], url=URL, config=AppConfig(prefix=prefix, prefetch=20))
    out = {"case": case}
    with capture_logs() as logs:
        await app.start()
        queue = app.naming.handler_queue("orders", PLACE)
        dlq = app.naming.dlq(queue)
        if case.startswith("8"):
            msgs = [
                (
                    GET,
                    b'{"order_id":"q"}',
                    {"message_id": b"q%d" % i, "type": GET.encode(), "reply_to": dlq.encode()},
                )
                for i in range(20)
            ]
        else:
            msgs = CASES[case]()
        started = time.monotonic()
        async with raw_channel(URL) as ch:
            for rk, b, props in msgs:
                ex = app.naming.queries if rk == GET else app.naming.commands
                ch.publish(
                    exchange=ex, routing_key=rk, body=b, raw_properties=f.properties(**props)
                )
        await app.send(PlaceOrder(order_id="valid", customer_id="c", address="a", items=[]))
        valid_at = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if "valid" in handled and valid_at is None:
                valid_at = time.monotonic() - started
            await asyncio.sleep(0.1)
        probe = AmqpTransport(URL)
        await probe.connect()
        try:
            info = await probe.queue_info(queue)
            dinfo = await probe.queue_info(dlq)
        finally:
            await probe.close()
        q = await asyncio.to_thread(
            subprocess.run,
            ["rabbitmqctl", "-q", "list_queues", "name", "messages_unacknowledged"],
            capture_output=True,
            text=True,
        )
        listing = q.stdout
        unacked = sum(
            int(line.split()[1]) for line in listing.splitlines() if line.startswith(queue + "\t")
        )
        await app.stop(grace=0)
        events = [e["event"] for e in logs]
    out.update(
        sent=len(msgs),
        valid_handled_after_s=None if valid_at is None else round(valid_at, 2),
        dlq_messages=dinfo.messages,
        queue_ready=info.messages,
        queue_unacked=unacked,
        consumers=info.consumers,
        connection_lost=events.count("broker_connection_lost"),
        publish_failed=events.count("dead_letter_publish_failed"),
        log_lines=len(events),
    )
    print(json.dumps(out))
    # clean up the probe's queues
    t = AmqpTransport(URL)
    await t.connect()
    for name in (
        queue,
        dlq,
        app.naming.dlq(app.naming.handler_queue("orders", GET)),
        app.naming.handler_queue("orders", GET),
    ):
        with contextlib.suppress(Exception):
            await t.delete_queue(name)
    await t.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
