"""The short profile of the fault-injection suite, one test per scenario (CI runs these).

Each test runs one scenario of ``tests/faults/scenarios.py`` on a RabbitMQ node of the session's
own and asserts its row: every saga terminal and correct, nothing lost, no duplicate effect.
``python -m tests.faults`` runs the same scenarios and prints the report table.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest

from tests.faults.harness import SHORT, Harness, table
from tests.faults.scenarios import CI_SCENARIOS, SCENARIOS
from tests.support.broker import RabbitmqctlError
from tests.support.second_node import SecondNode, second_node

pytestmark = [pytest.mark.slow, pytest.mark.rabbitmq]


@pytest.fixture(scope="module")
def node() -> Iterator[SecondNode]:
    """A broker node of this module's own: the scenarios stop, restart and cut it."""
    try:
        with second_node() as started:
            yield started
    except RabbitmqctlError as exc:
        message = f"cannot start a RabbitMQ node of the tests' own: {exc}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def harness(node: SecondNode, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    h = Harness(node, tmp_path_factory.mktemp("faults"), SHORT)
    yield h
    if h.rows:
        print(f"\nfault-injection report (short profile):\n{table(h.rows)}", file=sys.stderr)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", CI_SCENARIOS)
async def test_scenario(harness: Harness, name: str) -> None:
    """The scenario ends with every saga correct, nothing lost and no effect applied twice."""
    row = await SCENARIOS[name](harness)
    harness.rows.append(row)
    assert row.problems == [], f"{name}: {row.notes}\n" + "\n".join(row.problems[:30])
    assert (row.correct, row.lost, row.duplicate_effects) == (row.sagas, 0, 0)
    assert row.faults > 0 or name == "baseline", f"{name}: no fault was injected"


def test_ci_runs_every_scenario_but_the_baseline() -> None:
    """Every fault scenario runs in CI; only the fault-free baseline is left to the CLI."""
    assert sorted(CI_SCENARIOS) == sorted(set(SCENARIOS) - {"baseline"})
