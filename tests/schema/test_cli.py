"""``leveret contracts export|check`` as a team uses them, including the README's walkthrough."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from framework.cli import main

REPO = Path(__file__).resolve().parents[2]

V1 = """
from framework import App, Command, Service


class PlaceOrder(Command):
    __wire_name__ = "orders.place_order"

    order_id: str
    address: str


orders = Service("orders")


@orders.command
async def place_order(cmd: PlaceOrder) -> None: ...


app = App([orders])
"""

BREAKING = """
import msgspec

from framework import App, Command, Service


class Address(msgspec.Struct, frozen=True, kw_only=True):
    street: str
    city: str


class PlaceOrder(Command):
    __wire_name__ = "orders.place_order"

    order_id: str
    address: Address


orders = Service("orders")


@orders.command
async def place_order(cmd: PlaceOrder) -> None: ...


app = App([orders])
"""

VERSIONED = """
import msgspec

from framework import App, Command, Service, upcaster


class Address(msgspec.Struct, frozen=True, kw_only=True):
    street: str
    city: str


class PlaceOrderV1(Command):
    __wire_name__ = "orders.place_order"
    __wire_version__ = 1

    order_id: str
    address: str


class PlaceOrder(Command):
    __wire_name__ = "orders.place_order"
    __wire_version__ = 2

    order_id: str
    address: Address


@upcaster
def place_order_v1_to_v2(old: PlaceOrderV1) -> PlaceOrder:
    street, _, city = old.address.rpartition(", ")
    return PlaceOrder(order_id=old.order_id, address=Address(street=street, city=city))


orders = Service("orders")


@orders.command
async def place_order(cmd: PlaceOrder) -> None: ...


app = App([orders], upcasters=[place_order_v1_to_v2])
"""


def leveret(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the leveret command in ``cwd`` as a separate process (fresh imports each time)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(cwd)])}
    return subprocess.run(
        [sys.executable, "-m", "framework", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def write_app(cwd: Path, source: str) -> None:
    (cwd / "shop.py").write_text(textwrap.dedent(source))


@pytest.mark.slow
def test_readme_walkthrough_breaking_change_is_caught_then_versioned(tmp_path: Path) -> None:
    """Export, break PlaceOrder (exit 1, one plain line), keep v1 with an upcaster (exit 0)."""
    write_app(tmp_path, V1)
    exported = leveret(tmp_path, "contracts", "export", "shop:app")
    assert exported.returncode == 0, exported.stderr
    assert "contracts/schemas: 1 written, 0 unchanged, 0 removed" in exported.stdout

    write_app(tmp_path, BREAKING)
    broken = leveret(tmp_path, "contracts", "check", "shop:app")
    assert broken.returncode == 1, broken.stderr
    assert broken.stdout.splitlines() == [
        "BREAK orders.place_order v1 (PlaceOrder): field 'address' type changed from string "
        "to Address",
        "1 breaking change (backward)",
    ]

    write_app(tmp_path, VERSIONED)
    fixed = leveret(tmp_path, "contracts", "check", "shop:app")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert fixed.stdout.splitlines() == [
        "note  orders.place_order v1: differs from orders.place_order.v1.json in compatible "
        "ways: export the snapshots again",
        "note  orders.place_order v2: new version, not in the snapshots yet: export them",
        "contracts compatible with the snapshots (backward)",
    ]
    assert leveret(tmp_path, "contracts", "export", "shop:app").returncode == 0
    clean = leveret(tmp_path, "contracts", "check", "shop:app", "--mode", "backward")
    assert clean.stdout == "contracts compatible with the snapshots (backward)\n"
    forward = leveret(tmp_path, "contracts", "check", "shop:app", "--mode", "forward")
    assert forward.returncode == 0  # v2 is in the snapshots now


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory with a contracts module, importable and current."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_check_json_lists_breaks_for_tools(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--format json gives the mode, ok, and each break with contract, field and kind."""
    (project / "cli_contracts_a.py").write_text(textwrap.dedent(V1))
    assert main(["contracts", "export", "cli_contracts_a", "--dir", "snaps"]) == 0
    (project / "cli_contracts_b.py").write_text(
        textwrap.dedent(V1).replace("    address: str\n", "")
    )
    capsys.readouterr()
    code = main(
        [
            "contracts",
            "check",
            "cli_contracts_b",
            "--dir",
            "snaps",
            "--mode",
            "full",
            "--format",
            "json",
        ]
    )
    report = json.loads(capsys.readouterr().out)
    assert code == 1
    assert report["ok"] is False
    assert report["mode"] == "full"
    (item,) = report["breaks"]
    assert {k: item[k] for k in ("contract", "version", "field", "kind", "check")} == {
        "contract": "orders.place_order",
        "version": 1,
        "field": "address",
        "kind": "field_removed",
        "check": "forward",
    }
    assert item["line"].startswith("orders.place_order v1 (PlaceOrder): field 'address' removed")


def test_check_without_snapshots_is_a_usage_error(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No snapshot directory: exit 2 and say how to create it."""
    (project / "cli_contracts_c.py").write_text(textwrap.dedent(V1))
    assert main(["contracts", "check", "cli_contracts_c", "--dir", "missing"]) == 2
    assert "leveret contracts export" in capsys.readouterr().err


def test_unknown_source_is_a_usage_error(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A module that does not exist: exit 2 naming it."""
    assert main(["contracts", "export", "no_such_module_here"]) == 2
    assert "cannot import module 'no_such_module_here'" in capsys.readouterr().err


def test_contracts_without_subcommand_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    """`leveret contracts` alone shows its commands and exits 2."""
    assert main(["contracts"]) == 2
    assert "export" in capsys.readouterr().err


@pytest.mark.slow
def test_shop_contracts_check_passes(tmp_path: Path) -> None:
    """The command CI runs: the shop is compatible with its committed snapshots."""
    done = leveret(REPO, "contracts", "check", "handlers.app:app", "--mode", "full", "--transitive")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == "contracts compatible with the snapshots (full transitive)\n"
