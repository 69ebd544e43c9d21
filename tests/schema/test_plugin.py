"""The pytest plugin: registered through an entry point, and its fixtures in a project's suite."""

from __future__ import annotations

import importlib.metadata
import textwrap
import tomllib
from pathlib import Path

import pytest

from framework.schema import ContractSet, export
from tests.support.contracts import make_contract

REPO = Path(__file__).resolve().parents[2]
PLUGIN = "framework.testing.pytest_plugin"


def plugin_args() -> list[str]:
    """Installed leveret loads the plugin itself; a source checkout names it with -p.

    The inner runs are synchronous, so pytest-asyncio (and its configuration warning) stays out.
    """
    installed = importlib.metadata.entry_points(group="pytest11")
    loaded = any(ep.value == PLUGIN for ep in installed)
    return ["-p", "no:asyncio", *([] if loaded else ["-p", PLUGIN])]


def test_entry_point_is_declared() -> None:
    """pyproject registers the plugin under pytest11, so installing leveret loads it."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["entry-points"]["pytest11"] == {"leveret": PLUGIN}


def test_plugin_is_loaded_in_this_suite(pytestconfig: pytest.Config) -> None:
    """The project's own suite runs with the plugin, under the entry point's name."""
    assert pytestconfig.pluginmanager.has_plugin("leveret")


def test_compatible_fixture_fails_with_one_line_per_break(pytester: pytest.Pytester) -> None:
    """In another project, leveret_compatible passes on current contracts and fails on a break,
    naming the contract and the field."""
    old = make_contract(
        {"order_id": str, "address": str}, wire="orders.place_order", name="PlaceOrder"
    )
    export(ContractSet.of([old]), pytester.path / "contracts" / "schemas")
    pytester.makepyfile(
        plugin_shop_contracts=textwrap.dedent(
            """
            from framework import Command


            class PlaceOrder(Command):
                __wire_name__ = "orders.place_order"

                order_id: str
                address: str


            class PlaceOrderWithoutAddress(Command):
                __wire_name__ = "orders.place_order"

                order_id: str
            """
        ),
        test_contracts=textwrap.dedent(
            """
            from framework.schema import ContractSet
            from plugin_shop_contracts import PlaceOrder, PlaceOrderWithoutAddress


            def test_current(leveret_compatible):
                assert leveret_compatible(ContractSet.of([PlaceOrder]), mode="full").ok


            def test_broken(leveret_compatible):
                leveret_compatible(ContractSet.of([PlaceOrderWithoutAddress]), mode="full")
            """
        ),
    )
    result = pytester.runpytest(*plugin_args())
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*contracts are not full-compatible with *schemas:",
            "*orders.place_order v1 (PlaceOrderWithoutAddress): field 'address' removed: "
            "consumers built from the snapshot require it",
        ]
    )


def test_ini_settings_choose_snapshots_and_mode(pytester: pytest.Pytester) -> None:
    """leveret_snapshots and leveret_compat_mode set the fixture's defaults."""
    thing = make_contract({"a": str})
    export(ContractSet.of([thing]), pytester.path / "snaps")
    pytester.makeini(
        """
        [pytest]
        leveret_snapshots = snaps
        leveret_compat_mode = forward
        """
    )
    pytester.makepyfile(
        test_ini=textwrap.dedent(
            """
            from framework.schema import ContractSet
            from tests.support.contracts import make_contract


            def test_forward_allows_a_new_required_field(leveret_compatible):
                new = make_contract({"a": str, "b": str})
                report = leveret_compatible(ContractSet.of([new]))
                assert report.mode == "forward" and report.ok
            """
        )
    )
    result = pytester.runpytest(*plugin_args())
    result.assert_outcomes(passed=1)
