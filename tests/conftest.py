"""Fixtures shared by every suite: the broker URL, unique names, and connected transports.

Servers: ``LEVERET_AMQP_URL`` and ``LEVERET_POSTGRES_URL``; when one is unset and a Docker engine
answers, the session runs that server in a container (``tests/support/containers.py``), else the
local default.

``transport`` and ``make_transport`` are parametrized over the memory and RabbitMQ transports, so
a test written once runs against both; the RabbitMQ runs carry the ``rabbitmq`` marker.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from urllib.parse import urlsplit

import pytest
import structlog

from framework.transport.base import Transport
from framework.transport.memory import MemoryBroker, MemoryTransport
from framework.urls import redact
from tests.support import containers
from tests.support.broker import (
    DEFAULT_AMQP_URL,
    RabbitmqctlError,
    broker_reachable,
    rabbitmqctl,
    with_vhost,
)
from tests.support.cluster import Cluster, cluster

MakeTransport = Callable[[], Awaitable[Transport]]

pytest_plugins = ["pytester"]


def pytest_configure(config: pytest.Config) -> None:
    # Installed, leveret brings its plugin through the pytest11 entry point; a checkout run
    # through PYTHONPATH (or an install older than the entry point) loads it here instead.
    if not config.pluginmanager.has_plugin("leveret"):
        from framework.testing import pytest_plugin

        config.pluginmanager.register(pytest_plugin, "leveret")


_containers = contextlib.ExitStack()


def pytest_collection_finish(session: pytest.Session) -> None:
    """Containers for the servers the collected tests need, where Docker answers (see
    ``tests.support.containers``); started once, before the first test."""
    if not any(
        item.get_closest_marker("rabbitmq") or item.get_closest_marker("postgres")
        for item in session.items
    ):
        return
    try:
        services = containers.plan(os.environ)
        urls = _containers.enter_context(containers.started(services, os.environ))
    except containers.ContainerError as exc:
        raise pytest.UsageError(str(exc)) from exc
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    for variable, url in urls.items():
        if reporter is not None:
            reporter.write_line(f"{variable}={redact(url)} (a container of this session)")


def pytest_unconfigure(config: pytest.Config) -> None:
    _containers.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "amqp_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.rabbitmq)


@pytest.fixture(autouse=True)
def _logging_as_found(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Logging after a test is as it was before it.

    No test caches a structlog logger: a module's logger first used after some test configured
    logging as a worker does (``cache_logger_on_first_use``) would keep that configuration for
    good, and every later ``capture_logs`` would miss its events. And what a test configured is
    undone: an in-process ``leveret`` command configures logging onto the stream pytest captured
    for that test, which is closed after it ("I/O operation on closed file" in whichever test
    logs next).
    """
    configure = structlog.configure

    def uncached(*args: object, **kwargs: object) -> None:
        kwargs["cache_logger_on_first_use"] = False
        configure(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(structlog, "configure", uncached)
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    configure(**saved)
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    """The broker URL for this run, on a fresh vhost deleted at the end (when rabbitmqctl works).

    Unreachable broker: fails under ``CI=true``, skips otherwise.
    """
    base = os.environ.get("LEVERET_AMQP_URL", DEFAULT_AMQP_URL)
    if not broker_reachable(base):
        message = f"RabbitMQ is not reachable at {redact(base)}; set LEVERET_AMQP_URL"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    if urlsplit(base).hostname not in ("127.0.0.1", "localhost", "::1"):
        yield base  # rabbitmqctl would talk to a different (local) node
        return
    vhost = f"leveret-test-{secrets.token_hex(4)}"
    try:
        rabbitmqctl("add_vhost", vhost)
    except RabbitmqctlError:  # not installed or not permitted: share the base vhost
        yield base
        return
    try:
        user = urlsplit(base).username or "guest"
        rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
    except RabbitmqctlError:
        with contextlib.suppress(RabbitmqctlError):
            rabbitmqctl("delete_vhost", vhost)
        yield base
        return
    try:
        yield with_vhost(base, vhost)
    finally:
        with contextlib.suppress(RabbitmqctlError):
            rabbitmqctl("delete_vhost", vhost)


@pytest.fixture(scope="session")
def rabbit_cluster() -> Iterator[Cluster]:
    """A three-node RabbitMQ cluster of the session's own (``tests/support/cluster.py``).

    Started once, for the first test that asks for it, and stopped at the end of the session; a
    test that takes a node down brings the cluster back whole before the next one starts.
    Without ``rabbitmq-server`` the tests are skipped, except under ``CI=true``, where they fail.
    """
    try:
        with cluster() as started:
            yield started
    except RabbitmqctlError as exc:
        message = f"cannot start a RabbitMQ cluster of the tests' own: {exc}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
def prefix() -> str:
    """A unique prefix for the queue and exchange names of one test."""
    return "t" + secrets.token_hex(4)


@pytest.fixture(params=["memory", pytest.param("amqp", marks=pytest.mark.rabbitmq)])
def transport_kind(request: pytest.FixtureRequest) -> str:
    """Which transport the test runs against: ``"memory"`` or ``"amqp"``."""
    kind: str = request.param
    return kind


@pytest.fixture
async def make_transport(
    transport_kind: str, request: pytest.FixtureRequest
) -> AsyncIterator[MakeTransport]:
    """A factory of connected transports (one per call, like separate connections).

    Memory transports of one test share one ``MemoryBroker``; all are closed after the test.
    """
    from framework.transport.amqp import AmqpConfig, AmqpTransport

    url = request.getfixturevalue("amqp_url") if transport_kind == "amqp" else ""
    broker = MemoryBroker()
    made: list[Transport] = []
    config = AmqpConfig(
        connect_timeout=5.0,
        publish_timeout=5.0,
        declare_timeout=5.0,
        heartbeat=5,
        reconnect_interval=0.2,
        consumer_verify_timeout=10.0,
    )

    async def make() -> Transport:
        transport: Transport
        if transport_kind == "memory":
            transport = MemoryTransport(broker)
        else:
            transport = AmqpTransport(url, config=config)
        await transport.connect()
        made.append(transport)
        return transport

    yield make
    for transport in reversed(made):
        await transport.close()


@pytest.fixture
async def transport(make_transport: MakeTransport) -> Transport:
    """A connected transport (memory or RabbitMQ), closed after the test."""
    return await make_transport()
