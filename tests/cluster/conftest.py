"""The cluster tests' ``nodes``: the session's three-node cluster (``rabbit_cluster`` in
``tests/conftest.py``, shared with the fault scenarios on a cluster), whole before and after each
test.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.cluster import Cluster


@pytest.fixture
def nodes(rabbit_cluster: Cluster) -> Iterator[Cluster]:
    """The cluster, whole before the test and made whole again after it."""
    rabbit_cluster.ensure_all_running()
    yield rabbit_cluster
    rabbit_cluster.ensure_all_running()
