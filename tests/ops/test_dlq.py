"""``leveret dlq``: poison messages dead-lettered, listed, shown, fixed and replayed on RabbitMQ.

The app runs in this process from a module written for the test (so ``--app MODULE:APP`` finds
it); the commands run through ``framework.cli.main`` in a thread, as an operator runs them.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from contracts.orders import LineItem, PlaceOrder
from framework import envelope
from framework.cli import main
from framework.dlq import Selection, peek, replay
from framework.errors import TransportClosed
from framework.transport.amqp import AmqpConfig, AmqpTransport
from framework.transport.base import OutgoingMessage
from tests.saga.conftest import eventually

pytestmark = pytest.mark.rabbitmq

WIRE = "orders.place_order"
APP_MODULE = """
from contracts.orders import PlaceOrder
from framework import App, AppConfig, Context, RetryPolicy, Service

fixed = False
handled: list[tuple[str, str]] = []  # (message id, order id), one per successful run

orders = Service("orders")


@orders.command
async def place_order(cmd: PlaceOrder, ctx: Context) -> None:
    if cmd.customer_id == "poison" and not fixed:
        raise ValueError(f"cannot place {{cmd.order_id}}: customer is poison")
    handled.append((ctx.message_id, cmd.order_id))


app = App(
    [orders],
    url={url!r},
    config=AppConfig(prefix={prefix!r}, retry=RetryPolicy(immediate=1, delays=())),
)
"""


def order(order_id: str, customer: str) -> PlaceOrder:
    return PlaceOrder(
        order_id=order_id,
        customer_id=customer,
        address="1 Main St, Springfield",
        items=[LineItem(sku="apple", qty=2, unit_price_cents=150)],
    )


@pytest.fixture
def shop_module(
    tmp_path: Path, amqp_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ModuleType]:
    """The test's app module, importable as ``dlq_<prefix>``."""
    name = f"dlq_{prefix}"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(APP_MODULE.format(url=amqp_url, prefix=prefix))
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(name)
    yield module
    sys.modules.pop(name, None)


@pytest.fixture
async def running(shop_module: ModuleType) -> AsyncIterator[ModuleType]:
    """The app started (consuming) for the test, stopped after it."""
    await shop_module.app.start()
    try:
        yield shop_module
    finally:
        await shop_module.app.stop(grace=0)


async def leveret(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``leveret ARGV`` in a thread; its exit code, stdout and stderr."""
    capsys.readouterr()
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def dead_letter_three(module: ModuleType) -> tuple[list[str], str]:
    """Send three poison orders between two good ones; wait until the three are in the DLQ."""
    app = module.app
    queue = app.naming.handler_queue("orders", WIRE)
    ids = []
    for i, customer in enumerate(["good", "poison", "poison", "good", "poison"]):
        ids.append(await app.send(order(f"o-{i}", customer)))
    dlq = app.naming.dlq(queue)
    await eventually(lambda: len(module.handled) == 2, what="the two good orders to be handled")
    probe = AmqpTransport(app.url)
    await probe.connect()
    try:
        await eventually(
            lambda: probe.queue_depth(dlq), what="the poison orders in the DLQ", timeout=20
        )
        await eventually(lambda: _equals(probe.queue_depth(dlq), 3), what="all three poison orders")
    finally:
        await probe.close()
    return [ids[1], ids[2], ids[4]], dlq


async def _equals(value: Any, expected: int) -> bool:
    return bool(await value == expected)


async def test_poison_messages_are_listed_shown_fixed_and_replayed_once(
    running: ModuleType, capsys: pytest.CaptureFixture[str], amqp_url: str
) -> None:
    """Dead letters are counted, shown in order without being moved, replayed once when fixed."""
    module = running
    poison, dlq = await dead_letter_three(module)
    spec = f"{module.__name__}:app"

    code, out, _ = await leveret(capsys, "dlq", "list", spec)
    assert code == 0
    assert dlq in out
    assert "3  handler_failed: ValueError" in out
    assert "3 dead letter(s) in 1 queue(s)" in out

    code, out, _ = await leveret(capsys, "dlq", "show", dlq, "--amqp-url", amqp_url, "--limit", "2")
    assert code == 0
    assert f"{dlq}: 3 message(s), showing 2" in out
    assert out.index(poison[0]) < out.index(poison[1])
    assert poison[2] not in out
    assert "exception    ValueError: cannot place o-1: customer is poison" in out
    assert "reason       handler_failed: ValueError" in out
    assert "attempts     2" in out
    assert "first failed 20" in out
    assert "last failed  20" in out
    assert '"order_id": "o-1"' in out  # pretty-printed body

    # Reading changed nothing: all three are still there, in the same order.
    code, out, _ = await leveret(capsys, "dlq", "show", dlq, "--amqp-url", amqp_url, "--json")
    shown = json.loads(out)
    assert [m["message_id"] for m in shown] == poison
    assert [m["position"] for m in shown] == [1, 2, 3]
    assert shown[0]["first_failed_at"] <= shown[0]["last_failed_at"]
    assert shown[0]["type"] == WIRE
    assert shown[0]["version"] == 1

    module.fixed = True  # the fix is deployed
    code, out, _ = await leveret(
        capsys, "dlq", "replay", spec, "orders.place_order", "--id", poison[1]
    )
    assert code == 2  # not a queue of this broker: a usage error, nothing replayed
    code, out, _ = await leveret(
        capsys, "dlq", "replay", dlq, "--amqp-url", amqp_url, "--id", poison[1]
    )
    assert code == 0, out
    assert f"replayed {poison[1]} -> {dlq[: -len('.dlq')]}" in out
    code, out, _ = await leveret(capsys, "dlq", "replay", dlq, "--amqp-url", amqp_url, "--all")
    assert code == 0
    assert "2 message(s) replayed" in out

    await eventually(lambda: len(module.handled) == 5, what="the replayed orders to be handled")
    code, out, _ = await leveret(capsys, "dlq", "list", dlq, "--amqp-url", amqp_url, "--json")
    assert json.loads(out) == [{"queue": dlq, "messages": 0, "reasons": {}}]
    handled_ids = [mid for mid, _ in module.handled]
    assert sorted(handled_ids[2:]) == sorted(poison)  # the same message ids, once each
    assert len(set(handled_ids)) == 5
    code, out, _ = await leveret(capsys, "dlq", "replay", dlq, "--amqp-url", amqp_url, "--all")
    assert code == 1
    assert "0 message(s) replayed" in out


class CutBeforePublish(AmqpTransport):
    """A transport whose connection dies just before its ``cut_at``-th publish is confirmed."""

    def __init__(self, url: str, *, cut_at: int) -> None:
        super().__init__(
            url, config=AmqpConfig(connect_timeout=5, publish_timeout=5, declare_timeout=1)
        )
        self.cut_at = cut_at
        self.publishes = 0

    async def publish(
        self, message: OutgoingMessage, *, exchange: str, routing_key: str, mandatory: bool = True
    ) -> None:
        self.publishes += 1
        if self.publishes == self.cut_at:
            await self.close()
        await super().publish(
            message, exchange=exchange, routing_key=routing_key, mandatory=mandatory
        )


async def test_a_replay_cut_before_the_confirm_loses_nothing(running: ModuleType) -> None:
    """A replay whose connection dies mid-way leaves the unconfirmed messages in the DLQ."""
    module = running
    poison, dlq = await dead_letter_three(module)
    module.fixed = True
    cut = CutBeforePublish(module.app.url, cut_at=2)
    await cut.connect()
    with pytest.raises(TransportClosed):
        await replay(cut, dlq, Selection(everything=True))

    probe = AmqpTransport(module.app.url)
    await probe.connect()
    try:
        left = await peek(probe, dlq)
        assert [m.message_id for m in left] == poison[1:]  # in order, none lost
        assert all(m.replayed == 0 for m in left)
        await eventually(lambda: len(module.handled) == 3, what="the first replay to be handled")
        result = await replay(probe, dlq, Selection(reason="handler_failed"))
        assert list(result.replayed) == poison[1:]
    finally:
        await probe.close()
    await eventually(lambda: len(module.handled) == 5, what="the rest to be handled")
    handled_ids = [mid for mid, _ in module.handled]
    assert sorted(handled_ids[2:]) == sorted(poison)
    assert len(set(handled_ids)) == 5


async def test_purge_asks_first_and_deletes_only_what_it_names(
    running: ModuleType,
    capsys: pytest.CaptureFixture[str],
    amqp_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Purge deletes nothing unless confirmed; --id deletes that message only; --yes skips."""
    poison, dlq = await dead_letter_three(running)
    monkeypatch.setattr(sys, "stdin", _Lines("n\n"))
    code, out, _ = await leveret(capsys, "dlq", "purge", dlq, "--amqp-url", amqp_url, "--all")
    assert code == 1
    assert "nothing deleted" in out
    monkeypatch.setattr(sys, "stdin", _Lines("y\n"))
    code, out, _ = await leveret(
        capsys, "dlq", "purge", dlq, "--amqp-url", amqp_url, "--id", poison[1]
    )
    assert code == 0
    assert "1 message(s) deleted" in out
    code, out, _ = await leveret(capsys, "dlq", "show", dlq, "--amqp-url", amqp_url, "--json")
    assert [m["message_id"] for m in json.loads(out)] == [poison[0], poison[2]]
    code, out, _ = await leveret(
        capsys, "dlq", "purge", dlq, "--amqp-url", amqp_url, "--all", "--yes"
    )
    assert code == 0
    assert "2 message(s) deleted" in out
    code, _, err = await leveret(capsys, "dlq", "purge", dlq, "--amqp-url", amqp_url)
    assert code == 2
    assert "--id" in err
    code, _, err = await leveret(capsys, "dlq", "list")
    assert code == 2
    assert "--amqp-url" in err


class _Lines:
    """A stdin that answers the confirmation prompt."""

    def __init__(self, text: str) -> None:
        self._lines = text.splitlines(keepends=True)

    def readline(self) -> str:
        return self._lines.pop(0) if self._lines else ""


def test_replay_copy_keeps_the_id_and_counts_attempts_afresh() -> None:
    """The replayed copy has the same id and body, attempt 0, no death headers, a replay mark."""
    from framework.dlq import replay_copy
    from framework.transport.memory import MemoryTransport

    async def run() -> None:
        transport = MemoryTransport()
        await transport.connect()
        from framework.transport.base import QueueSpec, Topology

        await transport.declare(Topology(queues=(QueueSpec("q.dlq"),)))
        headers = {
            envelope.DEAD_REASON: "handler_failed: KeyError",
            envelope.ATTEMPT: 4,
            envelope.FIRST_FAILED_AT: "2026-01-01T00:00:00.000Z",
            envelope.REPLAYED: 1,
            "x-death": [{"queue": "q"}],
        }
        await transport.publish(
            OutgoingMessage(body=b"{}", message_id="m-1", headers=headers),
            exchange="",
            routing_key="q.dlq",
        )
        [info] = await peek(transport, "q.dlq")
        assert info.reason == "handler_failed: KeyError"
        assert info.replayed == 1
        got: asyncio.Queue[Any] = asyncio.Queue()

        async def on(d: Any) -> None:
            got.put_nowait(d)

        await transport.consume("q.dlq", on, prefetch=1)
        copy = replay_copy(await got.get())
        assert copy.message_id == "m-1"
        assert copy.body == b"{}"
        assert copy.headers[envelope.ATTEMPT] == 0
        assert copy.headers[envelope.REPLAYED] == 2
        assert copy.headers[envelope.FIRST_FAILED_AT] == "2026-01-01T00:00:00.000Z"
        assert envelope.DEAD_REASON not in copy.headers
        assert "x-death" not in copy.headers
        await transport.close()

    asyncio.run(run())


async def test_broker_dead_letters_show_the_brokers_reason(transport: Any, prefix: str) -> None:
    """A message the broker dead-lettered itself reads as ``broker: <x-death reason>``, and a
    body that is not JSON is shown as bytes; on both transports."""
    from framework.transport.base import (
        BindingSpec,
        ExchangeSpec,
        ExchangeType,
        QueueSpec,
        Topology,
    )

    queue, dlx = f"{prefix}.q", f"{prefix}.dlx"
    await transport.declare(
        Topology(
            exchanges=(ExchangeSpec(dlx, ExchangeType.DIRECT),),
            queues=(
                QueueSpec(queue, dead_letter_exchange=dlx, dead_letter_routing_key=queue),
                QueueSpec(f"{queue}.dlq"),
            ),
            bindings=(BindingSpec(f"{queue}.dlq", dlx, queue),),
        )
    )
    try:
        await transport.publish(
            OutgoingMessage(body=b"\x80not json", message_id="m-raw", content_type=None),
            exchange="",
            routing_key=queue,
        )
        rejected: asyncio.Queue[Any] = asyncio.Queue()

        async def reject(delivery: Any) -> None:
            await delivery.nack(requeue=False)
            rejected.put_nowait(delivery.message_id)

        consumer = await transport.consume(queue, reject, prefetch=1)
        async with asyncio.timeout(10):
            assert await rejected.get() == "m-raw"
        await consumer.cancel()
        await eventually(lambda: _equals(transport.queue_depth(f"{queue}.dlq"), 1), what="DLQ")
        [info] = await peek(transport, f"{queue}.dlq")
        assert info.reason == "broker: rejected"
        assert not info.body_is_json
        assert info.body == repr(b"\x80not json")
        result = await replay(transport, f"{queue}.dlq", Selection(ids=frozenset({"m-raw"})))
        assert result.replayed == ("m-raw",)
        assert await transport.queue_depth(queue) == 1
    finally:
        await transport.delete_queue(queue)
        await transport.delete_queue(f"{queue}.dlq")
