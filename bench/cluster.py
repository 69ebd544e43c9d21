"""The ``cluster`` section: leveret on a three-node RabbitMQ cluster with quorum queues, beside
the shared single node with classic queues, in one run.

It is opt-in (``python -m bench --only cluster``): it boots a disposable cluster of its own on
this machine (``tests.support.cluster``: unique node names and free ports, never the shared
node; 15-20 s and about 450 MiB) and stops it at the end. Each round measures, in alternation
and each in a fresh worker process, the leveret pipeline (throughput) and the shop's order saga
(throughput, on each store) first on the single node, then on the cluster; the table gives the
cluster's figures as ratios to the single node's.

On the cluster the workers get every node's URL (a leveret worker connects to one of them at
random, as a deployed one does) and ``AppConfig(queue_type="quorum")``; the orchestrator
connects to the first node and declares its own queues as quorum queues too.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from bench.harness import Broker, SectionFailed, WorkerFailed
from tests.support.broker import RabbitmqctlError
from tests.support.cluster import Cluster, cluster

if TYPE_CHECKING:
    from bench.cli import Bench

NODES = 3
SINGLE = "single node, classic"  # the baseline of every ratio
SECTION = "cluster"


@contextlib.asynccontextmanager
async def booted(size: int) -> AsyncIterator[Cluster]:
    """The test suite's disposable cluster, booted and stopped off the event loop.

    Raises:
        SectionFailed: a node did not boot or the nodes did not join.
    """
    manager = cluster(size)
    try:
        nodes = await asyncio.to_thread(manager.__enter__)
    except RabbitmqctlError as exc:
        raise SectionFailed(f"the {size}-node cluster did not boot: {exc}") from exc
    try:
        yield nodes
    finally:
        await asyncio.to_thread(manager.__exit__, None, None, None)


def _names(nodes: Cluster, what: str) -> list[str]:
    """The ``bench.`` queues or exchanges (``what``: list_queues, list_exchanges) on the cluster."""
    out = nodes.nodes[0].ctl(what, "-q", "--no-table-headers", "name", timeout=60)
    return [line.strip() for line in out.splitlines() if line.strip().startswith("bench.")]


async def sweep(bench: Bench, nodes: Cluster, broker: Broker) -> None:
    """Delete whatever the runs left on the cluster, and note it: nothing, when every worker
    reported its topology. Only the cluster is swept by name (it is this run's alone); on the
    shared node other runs' ``bench.`` queues may be in use."""
    try:
        queues = await asyncio.to_thread(_names, nodes, "list_queues")
        exchanges = await asyncio.to_thread(_names, nodes, "list_exchanges")
    except RabbitmqctlError as exc:
        bench.results.notes.append(f"cluster: could not list what the runs left: {exc}")
        return
    if not queues and not exchanges:
        bench.say("  nothing left on the cluster")
        return
    await broker.delete(queues=queues, exchanges=exchanges)
    left = ", ".join(sorted({*queues, *exchanges})[:6])
    bench.results.notes.append(
        f"cluster: the runs left {len(queues)} queues and {len(exchanges)} exchanges behind "
        f"(deleted at the end): {left}{' ...' if len(queues) + len(exchanges) > 6 else ''}"
    )


async def section_cluster(bench: Bench) -> None:
    """Boot the cluster, run the rounds, clean up and stop it."""
    from bench.cli import SAGA

    s = bench.s
    pipeline = bench.pick(("leveret",))
    stores = bench.pick(SAGA)
    bench.say(
        f"cluster: {NODES}-node RabbitMQ cluster with quorum queues vs the single node with "
        f"classic queues; leveret pipeline ({s.messages} messages) and saga ({s.saga_orders} "
        f"orders; stores {', '.join(stores) or 'none'}), {s.rounds} rounds in alternation"
    )
    started = time.monotonic()
    async with booted(NODES) as nodes:
        boot_s = time.monotonic() - started
        async with Broker(nodes.urls, queue_type="quorum") as on_cluster:
            label = f"{len(nodes.nodes)}-node cluster, quorum"
            bench.cluster_info = {
                "nodes": len(nodes.nodes),
                "rabbitmq": on_cluster.server_version,
                "queue_type": "quorum",
                "boot_s": round(boot_s, 1),
            }
            bench.results.notes.append(
                f"cluster: {len(nodes.nodes)} nodes on this machine, RabbitMQ "
                f"{on_cluster.server_version}, quorum queues; the single node is "
                f"{bench.broker.safe_url}, RabbitMQ {bench.broker.server_version}, classic queues"
            )
            bench.say(
                f"  {len(nodes.nodes)} nodes up in {boot_s:.0f} s, RabbitMQ "
                f"{on_cluster.server_version}"
            )
            sites = ((SINGLE, bench.broker), (label, on_cluster))
            try:
                await _rounds(bench, sites, pipeline, stores)
            finally:
                await sweep(bench, nodes, on_cluster)


async def _rounds(
    bench: Bench,
    sites: tuple[tuple[str, Broker], ...],
    pipeline: tuple[str, ...],
    stores: tuple[str, ...],
) -> None:
    s, add = bench.s, bench.results.add
    failed: set[str] = set()
    for r in range(s.rounds):
        for contender in pipeline:
            for label, broker in sites:
                res = await bench.pipeline_once(contender, "throughput", s.messages, broker=broker)
                add(SECTION, label, "pipeline throughput", "msgs/s", res["rate"], baseline=SINGLE)
                add(
                    SECTION,
                    label,
                    "pipeline client CPU",
                    "us/msg",
                    res["cpu_us_per_msg"],
                    baseline=SINGLE,
                    higher_is_better=False,
                )
                bench.say(
                    f"  round {r + 1}  pipeline  {label:<24} {res['rate']:8.0f} msgs/s  "
                    f"{res['cpu_us_per_msg']:6.0f} us CPU/msg"
                )
        for store in stores:
            for label, broker in sites:
                if store in failed:
                    break
                try:
                    res = await bench.saga_once(store, "throughput", s.saga_orders, broker=broker)
                except WorkerFailed as exc:  # e.g. no PostgreSQL here: the other store goes on
                    failed.add(store)
                    bench.results.notes.append(f"cluster saga/{store} on {label}: failed: {exc}")
                    bench.say(f"  saga/{store} on {label}: FAILED: {exc} (see the bench log)")
                    continue
                add(
                    SECTION,
                    label,
                    f"saga {store} throughput",
                    "sagas/s",
                    res["rate"],
                    baseline=SINGLE,
                )
                add(
                    SECTION,
                    label,
                    f"saga {store} messages handled per saga",
                    "msgs",
                    res["handled_per_saga"],
                    baseline=SINGLE,
                )
                add(
                    SECTION,
                    label,
                    f"saga {store} client CPU",
                    "us/saga",
                    res["cpu_us_per_saga"],
                    baseline=SINGLE,
                    higher_is_better=False,
                )
                bench.say(
                    f"  round {r + 1}  saga/{store:<8} {label:<24} {res['rate']:7.1f} sagas/s  "
                    f"{res['handled_per_saga']:.2f} msgs handled/saga  "
                    f"{res['cpu_us_per_saga']:6.0f} us CPU/saga  {res['outcomes']}"
                )
