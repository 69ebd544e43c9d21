"""A three-node RabbitMQ cluster of the session's own (``tests/support/cluster.py``).

Started once, for the first test that asks for it, and stopped at the end of the session; a test
that takes a node down brings the cluster back whole before the next one starts. Without
``rabbitmq-server`` the tests are skipped, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.broker import RabbitmqctlError
from tests.support.cluster import Cluster, cluster


@pytest.fixture(scope="session")
def rabbit_cluster() -> Iterator[Cluster]:
    try:
        with cluster() as started:
            yield started
    except RabbitmqctlError as exc:
        message = f"cannot start a RabbitMQ cluster of the tests' own: {exc}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
def nodes(rabbit_cluster: Cluster) -> Iterator[Cluster]:
    """The cluster, whole before the test and made whole again after it."""
    rabbit_cluster.ensure_all_running()
    yield rabbit_cluster
    rabbit_cluster.ensure_all_running()
