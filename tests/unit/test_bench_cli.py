"""The benchmark's command line and what it hands its workers (no broker, no cluster)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bench.cli import DEFAULT_SECTIONS, SECTIONS, leveret_leftovers, main
from bench.harness import Broker
from bench.worker import URL, Params
from bench.workload import BenchOrder
from framework import App, AppConfig, Context, Service


def test_cluster_section_runs_only_when_asked() -> None:
    """``python -m bench`` without ``--only`` leaves out the cluster section."""
    assert "cluster" in SECTIONS
    assert "cluster" not in DEFAULT_SECTIONS
    assert set(DEFAULT_SECTIONS) == set(SECTIONS) - {"cluster"}


def test_cluster_section_without_rabbitmq_server_exits_non_zero(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without rabbitmq-server on the PATH, ``--only cluster`` says so and exits 2 at once."""
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["--only", "cluster", "--json", str(tmp_path / "out.json")]) == 2
    assert "rabbitmq-server" in capsys.readouterr().err
    assert not (tmp_path / "out.json").exists()


def test_broker_hands_workers_every_node_and_its_queue_type() -> None:
    """A cluster's broker gives workers all node URLs and its queue type, and logs no password."""
    urls = "amqp://u:s3cret@127.0.0.1:5801/,amqp://u:s3cret@127.0.0.1:5802/"
    broker = Broker(urls, queue_type="quorum")
    params = Params(tag="t", messages=1, **broker.worker_params())
    assert (params.url, params.queue_type) == (urls, "quorum")
    assert "s3cret" not in broker.safe_url
    assert broker.safe_url.count("127.0.0.1") == 2


def test_params_default_to_the_shared_broker_with_classic_queues() -> None:
    """A worker not told otherwise uses LEVERET_AMQP_URL and classic queues."""
    params = Params(tag="t", messages=1)
    assert (params.url, params.queue_type) == (URL, "classic")
    assert {f.name for f in dataclasses.fields(Params)} >= {"url", "queue_type"}


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_cleanup_names_every_queue_and_exchange_a_leveret_app_declares(queue_type: str) -> None:
    """Besides its handler queues, the orchestrator deletes all a leveret worker declares."""
    bench = Service("bench")

    @bench.command
    async def place_order(cmd: BenchOrder, ctx: Context) -> None:
        return None

    app = App([bench], config=AppConfig(prefix="bench.t", queue_type=queue_type))
    handler_queues = {p.queue for p in app.pipelines} | {
        app.naming.dlq(p.queue) for p in app.pipelines
    }
    queues, exchanges = leveret_leftovers("bench.t")
    assert {q.name for q in app.topology.queues} - handler_queues == set(queues)
    assert {x.name for x in app.topology.exchanges} == set(exchanges)
