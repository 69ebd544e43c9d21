"""The read side stopped under load on RabbitMQ: the command side does not notice, and the
projection catches up from its durable queues to the read model a rebuild gives.

The shop runs split, as an operator would deploy it: ``leveret run handlers.app:command_side``
(the saga and the services it commands, on one SQLite file) and ``leveret run
handlers.app:read_side`` (the ``orders_view`` projection, on a database of its own). Orders are
placed continuously; the read side is stopped with SIGTERM while they flow, more orders are
placed and finish while it is gone, then it is started again with orders still flowing.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from contracts.orders import GetOrder, PlaceOrder
from examples.shop import make_orders, place
from framework import App, AppConfig
from framework.cqrs import Projection, find_projection
from framework.messages import MessageKind
from framework.store import SagaRecord, SagaStatus, Store, store_from_url
from framework.transport.amqp import AmqpConfig, AmqpTransport
from handlers.app import build_read_side_app
from tests.cqrs.support import OUTCOME_ROWS, outcome_row, read_model
from tests.support.broker import list_queues, rabbitmqctl_available, vhost_of
from tests.test_worker import Leveret, eventually

pytestmark = [pytest.mark.slow, pytest.mark.rabbitmq]

# Orders placed before and while the read side is stopped, and after it is restarted.
BEFORE, WHILE_DOWN, AFTER = 30, 40, 30
# The events an order's saga publishes at least, by how it ended (a compensation resent after a
# timeout publishes its reply again, under a new message id, and adds to these).
EVENTS_OF_OUTCOME = {
    "completed": 5,  # placed, inventory reserved, payment charged, shipped, completed
    "out of stock": 3,  # placed, inventory rejected, cancelled
    "card declined": 5,  # placed, inventory reserved, payment declined and released, cancelled
    "no delivery": 7,  # placed, reserved, charged, shipping failed, refunded, released, cancelled
}


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Callable[..., Leveret]]:
    """Starts ``leveret run`` processes; kills each one's whole process group afterwards."""
    started: list[Leveret] = []

    def start(*args: str, env: Mapping[str, str]) -> Leveret:
        directory = tmp_path / f"run{len(started)}"
        directory.mkdir()
        started.append(Leveret(directory, args, env))
        return started[-1]

    yield start
    for leveret in started:
        leveret.kill_everything()


async def sagas_of(store: Store, orders: list[PlaceOrder]) -> dict[str, SagaRecord]:
    """The saga record of each of ``orders`` that has one, by order id."""
    wanted = {f"order-{o.order_id}" for o in orders}
    records = await store.list_sagas(saga="order", limit=10 * len(orders) + 100)
    return {r.saga_id.removeprefix("order-"): r for r in records if r.saga_id in wanted}


async def all_terminal(store: Store, orders: list[PlaceOrder]) -> dict[str, SagaRecord] | None:
    """The saga records of ``orders`` once every one of them has ended, else None."""
    records = await sagas_of(store, orders)
    if len(records) == len(orders) and all(r.status.terminal for r in records.values()):
        return records
    return None


def queue_counts(amqp_url: str, prefix: str) -> dict[str, tuple[int, int, int]]:
    """``{queue: (ready, unacked, consumers)}`` for the test's queues."""
    return {
        name: counts
        for name, counts in list_queues(vhost_of(amqp_url)).items()
        if name.startswith(f"{prefix}.")
    }


def _on_command_side(prefix: str, queue: str) -> bool:
    return not queue.startswith(f"{prefix}.order_view.") and ".delay." not in queue


def command_side_idle(amqp_url: str, prefix: str) -> dict[str, tuple[int, int, int]] | None:
    """The test's queues once no command-side handler queue holds a message, else None."""
    queues = queue_counts(amqp_url, prefix)
    busy = [
        name
        for name, (ready, unacked, _) in queues.items()
        if _on_command_side(prefix, name) and not name.endswith(".dlq") and (ready or unacked)
    ]
    return None if busy else queues


def outcome_of(record: SagaRecord) -> str:
    """How the saga of ``record`` ended: completed, or the cause it was compensated for."""
    if record.status is SagaStatus.COMPLETED:
        return "completed"
    assert record.status is SagaStatus.COMPENSATED, record
    causes = [c for c in EVENTS_OF_OUTCOME if record.reason and c in record.reason]
    assert len(causes) == 1, f"unexpected compensation: {record}"
    return causes[0]


def events_at_least(orders: list[PlaceOrder], records: Mapping[str, SagaRecord]) -> int:
    """The fewest events the sagas of ``orders`` have published, given how each ended."""
    return sum(EVENTS_OF_OUTCOME[outcome_of(records[o.order_id])] for o in orders)


def expected_row(order: PlaceOrder, record: SagaRecord) -> tuple[Any, ...]:
    """The ``read_model`` row of an order whose saga ended as ``record`` says: its final status
    and reason, the last step it reached and what it was charged and refunded."""
    total = sum(i.qty * i.unit_price_cents for i in order.items)
    return outcome_row(order.order_id, order.customer_id, total, outcome_of(record), record.reason)


@pytest.mark.timeout(240)
async def test_stopped_read_side_catches_up_and_equals_a_rebuild(
    served: Callable[..., Leveret], amqp_url: str, prefix: str, tmp_path: Path
) -> None:
    """While the read side is down, every order placed completes its saga and no command-side
    queue backs up; the events wait in the read side's queues, and once it is back the read
    model holds every order with its final status, row for row what a rebuild gives."""
    if not rabbitmqctl_available():
        pytest.skip("needs rabbitmqctl to see the queues")
    commands_db = f"sqlite:///{tmp_path / 'commands.db'}"
    view_db = f"sqlite:///{tmp_path / 'view.db'}"
    env = {
        "LEVERET_SHOP_DB_URL": commands_db,
        "LEVERET_SHOP_VIEW_DB_URL": view_db,
        "LEVERET_SHOP_PREFIX": prefix,
        "LEVERET_LOG_FORMAT": "json",
        "LEVERET_LOG_LEVEL": "info",
    }
    run = ("--workers", "1", "--amqp-url", amqp_url)
    orders = make_orders("catchup", BEFORE + WHILE_DOWN + AFTER, seed=5)
    before, while_down = orders[:BEFORE], orders[BEFORE : BEFORE + WHILE_DOWN]
    after = orders[BEFORE + WHILE_DOWN :]

    reads = served("handlers.app:read_side", *run, env=env)
    commands = served("handlers.app:command_side", *run, env=env)
    commands_store, view_store = store_from_url(commands_db), store_from_url(view_db)
    # The read side's projection, to read its position and rebuild it (never started here).
    read_app = build_read_side_app(store=view_store, prefix=prefix)
    projection = find_projection(read_app.services, "orders_view")
    assert isinstance(projection, Projection)
    # The queues the projection consumes, and their dead-letter queues.
    event_queues = [p.queue for p in read_app.pipelines if p.spec.kind is MessageKind.EVENT]
    # The three order events and the eight of the saga's steps (inventory, payment, shipping).
    assert len(event_queues) == 11
    event_queues += [f"{q}.dlq" for q in event_queues]
    client = App([], url=amqp_url, config=AppConfig(prefix=prefix))
    client.use_transport(
        AmqpTransport(amqp_url, config=AmqpConfig(connect_timeout=5.0, publish_timeout=10.0))
    )
    placing: asyncio.Task[None] | None = None
    try:
        # Both sides have declared their queues and consume once they log app_started.
        await eventually(
            lambda: reads.events("app_started") and commands.events("app_started"),
            timeout=60,
            what="both sides to start",
        )
        await client.start(consume=False)

        # Under load: half of the first orders go in, the read side is stopped once it has
        # applied some of their events, and the other half go in while it drains and exits
        # (it may still apply some of theirs before its consumers are cancelled).
        stopping = asyncio.Event()

        async def place_across_the_stop() -> None:
            await place(client, before[: BEFORE // 2], concurrency=5)
            await stopping.wait()
            await place(client, before[BEFORE // 2 :], concurrency=5)

        placing = asyncio.create_task(place_across_the_stop())
        await eventually(
            lambda: _position_at_least(projection, view_store, 10),
            timeout=90,
            what="the projection to apply 10 events",
        )
        reads.send(signal.SIGTERM)
        stopping.set()
        assert await reads.exit_code(timeout=60) == 0
        await placing
        stopped_at = await projection.position(view_store)
        assert stopped_at >= 10

        # Down: the command side carries on alone.
        await place(client, while_down, concurrency=5)
        ended = await eventually(
            lambda: all_terminal(commands_store, before + while_down),
            timeout=120,
            what="every saga placed so far to end with the read side down",
        )
        # The command side's queues drain with the read side still down: nothing backs up
        # behind it (notifications and stale compensation timeouts may trail the sagas).
        # Delay queues hold scheduled saga timeouts by design, and are no backlog.
        queues = await eventually(
            lambda: command_side_idle(amqp_url, prefix),
            timeout=60,
            what="the command side's queues to drain",
        )
        assert await projection.position(view_store) == stopped_at
        command_queues = {n: c for n, c in queues.items() if _on_command_side(prefix, n)}
        dead = {n: c for n, c in command_queues.items() if n.endswith(".dlq") and c[0]}
        assert dead == {}, dead
        consumed = [n for n in command_queues if not n.endswith(".dlq")]
        assert consumed
        assert all(command_queues[n][2] >= 1 for n in consumed), command_queues
        # Nobody consumes the read side's queues; every event it has not applied waits there.
        view_queues = {n: queues[n] for n in event_queues}
        assert all(consumers == 0 for _, _, consumers in view_queues.values()), view_queues
        waiting = sum(ready for ready, _, _ in view_queues.values())
        published = events_at_least(before + while_down, ended)
        assert waiting >= published - stopped_at, view_queues

        # Back: restart the read side while more orders are placed.
        reads = served("handlers.app:read_side", *run, env=env)
        placing = asyncio.create_task(place(client, after, concurrency=5))
        await eventually(
            lambda: reads.events("app_started"), timeout=60, what="the read side to restart"
        )
        await placing
        records = await eventually(
            lambda: all_terminal(commands_store, orders),
            timeout=120,
            what="every saga to end",
        )
        total = events_at_least(orders, records)
        await eventually(
            lambda: _position_at_least(projection, view_store, total),
            timeout=120,
            what=f"the projection to catch up to {total} events",
        )
        # Then both sides idle and the read side's queues empty, its dead-letter queues too (a
        # late resend, if any, applied; a duplicate delivery skipped).
        await eventually(
            lambda: command_side_idle(amqp_url, prefix),
            timeout=60,
            what="the command side's queues to drain",
        )
        await eventually(
            lambda: _drained(amqp_url, event_queues), timeout=60, what="the view queues to drain"
        )
        live = await read_model(view_store)
        # Each order's final status, and the step where its saga stopped: shipped when it
        # completed, else the failure or the last compensation.
        assert live == sorted(expected_row(o, records[o.order_id]) for o in orders)
        assert await projection.rebuild(view_store) >= total
        assert await read_model(view_store) == live
        # The read side answers over RPC from that read model, with the step.
        by_outcome = {outcome_of(records[o.order_id]): o.order_id for o in orders}
        for outcome, order_id in sorted(by_outcome.items()):
            view = await client.request(GetOrder(order_id=order_id), timeout=10)
            assert view.step == OUTCOME_ROWS[outcome][1], (outcome, view)
        assert len(by_outcome) == len(EVENTS_OF_OUTCOME)  # seed 5 gives every outcome
    finally:
        if placing is not None and not placing.done():
            placing.cancel()
            await asyncio.gather(placing, return_exceptions=True)
        await client.stop(grace=0)
        await commands_store.close()
        await view_store.close()
        for leveret in (commands, reads):
            if leveret.process.poll() is None:
                leveret.send(signal.SIGTERM)
                await leveret.exit_code(timeout=60)


def _drained(amqp_url: str, names: list[str]) -> bool:
    queues = list_queues(vhost_of(amqp_url))
    return all(queues[n][0] == 0 and queues[n][1] == 0 for n in names)


async def _position_at_least(projection: Projection, store: Store, events: int) -> bool:
    try:
        return await projection.position(store) >= events
    except Exception:  # the read side has not created its tables yet
        return False
