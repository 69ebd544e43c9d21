"""Snapshots: one stable, reviewable file per wire name and version; the shop's are current."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import contracts
from framework.errors import ConfigurationError
from framework.schema import ContractSet, export, read_snapshots
from handlers.app import build_app
from tests.support.contracts import make_contract

REPO = Path(__file__).resolve().parents[2]


def test_export_writes_one_sorted_file_per_version(tmp_path: Path) -> None:
    """Each contract version gets <wire>.v<version>.json with sorted keys and its metadata."""
    v1 = make_contract({"b": str, "a": int}, wire="shop.thing", version=1, name="ThingV1")
    v2 = make_contract({"b": str}, wire="shop.thing", version=2)
    result = export(ContractSet.of([v2, v1]), tmp_path)
    assert result.written == ("shop.thing.v1.json", "shop.thing.v2.json")
    text = (tmp_path / "shop.thing.v1.json").read_text()
    document = json.loads(text)
    assert text == json.dumps(document, indent=2, sort_keys=True) + "\n"
    assert document["x-leveret"] == {
        "class": "tests.fake_contracts.ThingV1",
        "kind": "command",
        "version": 1,
        "wire_name": "shop.thing",
    }
    assert document["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert document["$defs"]["ThingV1"]["required"] == ["b", "a"]


def test_export_is_deterministic_and_prunes_gone_contracts(tmp_path: Path) -> None:
    """Exporting again changes no byte; a gone contract's file goes, other files stay."""
    keep = make_contract({"a": str})
    gone = make_contract({"a": str}, wire="shop.gone", name="Gone")
    export(ContractSet.of([keep, gone]), tmp_path)
    (tmp_path / "README.md").write_text("snapshots\n")
    (tmp_path / "notes.json").write_text('{"mine": true}\n')
    before = (tmp_path / "shop.thing.v1.json").read_bytes()
    result = export(ContractSet.of([keep]), tmp_path)
    assert (result.written, result.unchanged, result.removed) == (
        (),
        ("shop.thing.v1.json",),
        ("shop.gone.v1.json",),
    )
    assert (tmp_path / "shop.thing.v1.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "README.md",
        "notes.json",
        "shop.thing.v1.json",
    ]


def test_query_snapshot_names_its_reply() -> None:
    """A query's snapshot records its reply's wire name, so a changed reply is caught."""
    from framework.schema import contract_schema

    document = contract_schema(contracts.orders.GetOrder)
    assert document["x-leveret"]["reply"] == "orders.order_view"


def test_committed_shop_snapshots_are_current(tmp_path: Path) -> None:
    """contracts/schemas holds exactly what exporting the shop app writes today."""
    app = build_app()
    export(ContractSet.from_app(app), tmp_path)
    committed = REPO / "contracts" / "schemas"
    assert sorted(p.name for p in committed.glob("*.json")) == sorted(
        p.name for p in tmp_path.glob("*.json")
    )
    for path in tmp_path.glob("*.json"):
        assert (committed / path.name).read_text() == path.read_text(), path.name


def test_shop_app_covers_every_shop_contract() -> None:
    """The shop app passes contracts.ALL, so its snapshots cover every contract of the shop."""
    app = build_app()
    assert set(contracts.ALL) <= set(app.codec.types())
    extra = set(ContractSet.from_app(app).types) - set(ContractSet.from_module(contracts).types)
    assert {c.__wire_name__ for c in extra} == {"saga.order.timeout"}  # the saga's own


def test_reading_a_missing_directory_says_how_to_create_it(tmp_path: Path) -> None:
    """Without snapshots the error names the export command."""
    with pytest.raises(ConfigurationError, match="leveret contracts export"):
        read_snapshots(tmp_path / "nowhere")


def test_misnamed_snapshot_is_refused(tmp_path: Path) -> None:
    """A snapshot file renamed by hand no longer matches what it describes."""
    export(ContractSet.of([make_contract({"a": str})]), tmp_path)
    (tmp_path / "shop.thing.v1.json").rename(tmp_path / "shop.thing.v2.json")
    with pytest.raises(ConfigurationError, match=r"name it shop\.thing\.v1\.json"):
        read_snapshots(tmp_path)
