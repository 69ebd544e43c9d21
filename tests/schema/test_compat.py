"""Compatibility checks: each breaking change found, each compatible change accepted, per mode."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import pytest

from framework import Event, upcaster
from framework.messages import Message
from framework.schema import ContractSet, Mode, check
from framework.upcasting import Upcaster
from tests.support.contracts import make_contract, snapshot_of

Qty = Annotated[int, msgspec.Meta(ge=1, le=10_000)]
SmallQty = Annotated[int, msgspec.Meta(ge=1, le=100)]


class Item(msgspec.Struct, frozen=True, kw_only=True):
    sku: str
    qty: Qty


class SmallItem(msgspec.Struct, frozen=True, kw_only=True):
    sku: str
    qty: SmallQty


class Card(msgspec.Struct, frozen=True, kw_only=True, tag="card"):
    last4: str


class Cash(msgspec.Struct, frozen=True, kw_only=True, tag="cash"):
    pass


class Voucher(msgspec.Struct, frozen=True, kw_only=True, tag="voucher"):
    code: str


class Node(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    children: list[Node] = []


class WideNode(msgspec.Struct, frozen=True, kw_only=True):
    name: str | None
    children: list[WideNode] = []


def kinds(
    tmp_path: Path,
    old: dict[str, Any],
    new: dict[str, Any],
    mode: Mode,
    *,
    transitive: bool = False,
    **options: Any,
) -> set[str]:
    """Break kinds between a snapshot of ``old`` fields and code with ``new`` fields."""
    snapshots = snapshot_of(tmp_path, make_contract(old, **options))
    code = ContractSet.of([make_contract(new, **options)])
    return {b.kind for b in check(code, snapshots, mode=mode, transitive=transitive).breaks}


B, F, U = Mode.BACKWARD, Mode.FORWARD, Mode.FULL

# (id, old fields, new fields, {mode: expected break kinds}); a mode left out expects none.
FIELD_CHANGES: list[tuple[str, dict[str, Any], dict[str, Any], dict[Mode, set[str]]]] = [
    ("new optional field", {"a": str}, {"a": str, "b": (str | None, None)}, {}),
    (
        "new required field without default",
        {"a": str},
        {"a": str, "b": str},
        {B: {"field_added_required"}, U: {"field_added_required"}},
    ),
    (
        "required field removed",
        {"a": str, "b": str},
        {"a": str},
        {F: {"field_removed"}, U: {"field_removed"}},
    ),
    ("optional field removed", {"a": str, "b": (str, "x")}, {"a": str}, {}),
    (
        "type changed",
        {"a": str},
        {"a": int},
        {B: {"type_changed"}, F: {"type_changed"}, U: {"type_changed"}},
    ),
    (
        "type narrowed: null no longer accepted",
        {"a": int | None},
        {"a": int},
        {B: {"type_narrowed"}, U: {"type_narrowed"}},
    ),
    (
        "range narrowed",
        {"a": Annotated[int, msgspec.Meta(ge=0)]},
        {"a": Annotated[int, msgspec.Meta(ge=1)]},
        {B: {"type_narrowed"}, U: {"type_narrowed"}},
    ),
    (
        "type widened: int to float",
        {"a": int},
        {"a": float},
        {F: {"type_widened"}, U: {"type_widened"}},
    ),
    (
        "type widened: nullable",
        {"a": int},
        {"a": int | None},
        {F: {"type_widened"}, U: {"type_widened"}},
    ),
    (
        "string length widened",
        {"a": Annotated[str, msgspec.Meta(max_length=10)]},
        {"a": Annotated[str, msgspec.Meta(max_length=20)]},
        {F: {"type_widened"}, U: {"type_widened"}},
    ),
    (
        "enum value removed",
        {"a": Literal["x", "y"]},
        {"a": Literal["x"]},
        {B: {"enum_value_removed"}, U: {"enum_value_removed"}},
    ),
    (
        "enum value added",
        {"a": Literal["x"]},
        {"a": Literal["x", "y"]},
        {F: {"enum_value_added"}, U: {"enum_value_added"}},
    ),
    (
        "enum widened to string",
        {"a": Literal["x"]},
        {"a": str},
        {F: {"type_widened"}, U: {"type_widened"}},
    ),
    (
        "field made required",
        {"a": (str, "")},
        {"a": str},
        {B: {"field_made_required"}, U: {"field_made_required"}},
    ),
    (
        "field made optional",
        {"a": str},
        {"a": (str, "")},
        {F: {"field_made_optional"}, U: {"field_made_optional"}},
    ),
    (
        "nested field narrowed",
        {"items": list[Item]},
        {"items": list[SmallItem]},
        {B: {"type_narrowed"}, U: {"type_narrowed"}},
    ),
    (
        "dict values changed",
        {"labels": dict[str, str]},
        {"labels": dict[str, int]},
        {B: {"type_changed"}, F: {"type_changed"}, U: {"type_changed"}},
    ),
    (
        "list became a tuple",
        {"pair": list[int]},
        {"pair": tuple[int, int]},
        {B: {"type_narrowed"}, U: {"type_narrowed"}},
    ),
    (
        "tagged union variant added",
        {"pay": Card | Cash},
        {"pay": Card | Cash | Voucher},
        {F: {"type_widened"}, U: {"type_widened"}},
    ),
    (
        "tagged union variant removed",
        {"pay": Card | Cash},
        {"pay": Card},
        {B: {"type_narrowed"}, U: {"type_narrowed"}},
    ),
    (
        "recursive struct widened",
        {"tree": Node},
        {"tree": WideNode},
        {F: {"type_widened"}, U: {"type_widened"}},
    ),
    ("unchanged", {"a": str, "items": list[Item]}, {"a": str, "items": list[Item]}, {}),
]


@pytest.mark.parametrize("mode", [B, F, U], ids=str)
@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [pytest.param(o, n, e, id=i) for i, o, n, e in FIELD_CHANGES],
)
def test_field_changes_per_mode(
    tmp_path: Path,
    old: dict[str, Any],
    new: dict[str, Any],
    expected: dict[Mode, set[str]],
    mode: Mode,
) -> None:
    """Each field change breaks exactly in the modes a schema registry says it does."""
    assert kinds(tmp_path, old, new, mode) == expected.get(mode, set())


def test_forbidding_unknown_fields_makes_a_removal_break_backward(tmp_path: Path) -> None:
    """A strict contract rejects the old field it no longer knows, so removing it breaks."""
    assert kinds(tmp_path, {"a": str, "b": str}, {"a": str}, B, forbid_unknown_fields=True) == {
        "field_removed"
    }
    assert kinds(
        tmp_path, {"a": str}, {"a": str, "b": (str, "")}, F, forbid_unknown_fields=True
    ) == {"field_added"}


def test_break_lines_name_contract_version_class_and_field(tmp_path: Path) -> None:
    """Each break is one line in plain words naming the contract, version, class and field."""
    snapshots = snapshot_of(
        tmp_path, make_contract({"order_id": str, "address": str}, wire="orders.place_order")
    )
    code = ContractSet.of([make_contract({"order_id": str}, wire="orders.place_order")])
    report = check(code, snapshots, mode="full")
    assert [b.line() for b in report.breaks] == [
        "orders.place_order v1 (Thing): field 'address' removed: consumers built from the "
        "snapshot require it"
    ]
    (item,) = report.breaks
    assert (item.contract, item.version, item.field, item.kind, item.check) == (
        "orders.place_order",
        1,
        "address",
        "field_removed",
        "forward",
    )


def test_nested_fields_are_named_by_path(tmp_path: Path) -> None:
    """A change inside a list of structs names the field as items[].qty with both ranges."""
    snapshots = snapshot_of(tmp_path, make_contract({"items": list[Item]}))
    code = ContractSet.of([make_contract({"items": list[SmallItem]})])
    (item,) = check(code, snapshots).breaks
    assert item.field == "items[].qty"
    assert "integer 1..10000 to integer 1..100" in item.message


def test_type_change_is_reported_once_in_full_mode(tmp_path: Path) -> None:
    """A type change breaks both ways but full mode lists it once."""
    snapshots = snapshot_of(tmp_path, make_contract({"a": str}))
    report = check(ContractSet.of([make_contract({"a": int})]), snapshots, mode=Mode.FULL)
    assert [(b.kind, b.check) for b in report.breaks] == [("type_changed", "both")]
    assert report.breaks[0].message == "field 'a' type changed from string to integer"


def test_wire_name_change_is_caught(tmp_path: Path) -> None:
    """The same class under a new wire name is a break in every mode."""
    snapshots = snapshot_of(tmp_path, make_contract({"a": str}, wire="orders.place_order"))
    code = ContractSet.of([make_contract({"a": str}, wire="orders.submit_order")])
    for mode in Mode:
        report = check(code, snapshots, mode=mode)
        assert [b.kind for b in report.breaks] == ["wire_name_changed"]
        assert "'orders.submit_order'" in report.breaks[0].message
        assert not report.notes  # the new name is the rename, not a new contract


def test_kind_change_is_caught(tmp_path: Path) -> None:
    """A command turned event would travel on another exchange: a break in every mode."""
    snapshots = snapshot_of(tmp_path, make_contract({"a": str}))
    code = ContractSet.of([make_contract({"a": str}, base=Event)])
    assert [b.kind for b in check(code, snapshots, mode="forward").breaks] == ["kind_changed"]


def test_removed_contract_breaks_backward_only(tmp_path: Path) -> None:
    """Dropping a contract means its queued messages can no longer be read (backward)."""
    snapshots = snapshot_of(
        tmp_path,
        make_contract({"a": str}),
        make_contract({"b": str}, wire="shop.other", name="Other"),
    )
    code = ContractSet.of([make_contract({"a": str})])
    assert [b.kind for b in check(code, snapshots).breaks] == ["contract_removed"]
    assert check(code, snapshots, mode="forward").ok


def test_new_contract_and_compatible_change_are_notes(tmp_path: Path) -> None:
    """A contract without snapshot, or a compatible change, is a note and not a break."""
    snapshots = snapshot_of(tmp_path, make_contract({"a": str}))
    code = ContractSet.of(
        [
            make_contract({"a": str, "b": (int, 0)}),
            make_contract({"x": str}, wire="shop.new", name="New"),
        ]
    )
    report = check(code, snapshots, mode="full")
    assert report.ok
    assert [(n.contract, n.kind) for n in report.notes] == [
        ("shop.thing", "snapshot_outdated"),
        ("shop.new", "new_contract"),
    ]


# Versions: v1 (address: str) and v2 (street + city), side by side.
V1 = make_contract({"order_id": str, "address": str}, version=1, name="ThingV1")
V2 = make_contract({"order_id": str, "street": str, "city": str}, version=2, name="Thing")
V3 = make_contract(
    {"order_id": str, "street": str, "city": str, "zip": (str, "")}, version=3, name="ThingV3"
)


def _v1_to_v2(old: Any) -> Any:
    street, _, city = old.address.rpartition(", ")
    return V2(order_id=old.order_id, street=street, city=city)


def _v2_to_v3(old: Any) -> Any:
    return V3(order_id=old.order_id, street=old.street, city=old.city)


UP_1_2: Upcaster[Any, Any] = Upcaster(V1, V2, _v1_to_v2)
UP_2_3: Upcaster[Any, Any] = Upcaster(V2, V3, _v2_to_v3)


def version_kinds(
    tmp_path: Path,
    snap: list[type[Message]],
    code: list[type[Message]],
    ups: tuple[Upcaster[Any, Any], ...],
    mode: Mode,
    *,
    transitive: bool = False,
    snap_ups: tuple[Upcaster[Any, Any], ...] = (),
) -> list[str]:
    snapshots = snapshot_of(tmp_path, *snap, upcasters=snap_ups)
    report = check(ContractSet.of(code, ups), snapshots, mode=mode, transitive=transitive)
    return [b.kind for b in report.breaks]


def test_version_reused_with_another_schema_breaks(tmp_path: Path) -> None:
    """Changing version 1 in place into the v2 shape is caught field by field."""
    reused = make_contract({"order_id": str, "street": str, "city": str}, version=1)
    assert version_kinds(tmp_path, [V1], [reused], (), B) == [
        "field_added_required",
        "field_added_required",
    ]


def test_new_version_with_upcaster_is_backward_compatible(tmp_path: Path) -> None:
    """v2 next to v1 with an upcaster passes backward; forward and full flag the new version."""
    assert version_kinds(tmp_path, [V1], [V1, V2], (UP_1_2,), B) == []
    assert version_kinds(tmp_path, [V1], [V1, V2], (UP_1_2,), F) == ["version_added"]
    assert version_kinds(tmp_path, [V1], [V1, V2], (UP_1_2,), U) == ["version_added"]


def test_new_version_without_upcaster_breaks_backward(tmp_path: Path) -> None:
    """Without an upcaster a v2 handler would dead-letter the v1 messages still around."""
    assert version_kinds(tmp_path, [V1], [V1, V2], (), B) == ["upcaster_missing"]


def test_chained_upcasters_reach_the_newest_version(tmp_path: Path) -> None:
    """v1 -> v2 -> v3 composes, so dropping nothing and adding v3 passes transitively."""
    snap = [V1, V2]
    assert version_kinds(tmp_path, snap, [V1, V2, V3], (UP_1_2, UP_2_3), B, transitive=True) == []
    assert version_kinds(tmp_path, snap, [V1, V2, V3], (UP_2_3,), B) == []
    assert version_kinds(tmp_path, snap, [V1, V2, V3], (UP_2_3,), B, transitive=True) == [
        "upcaster_missing"
    ]


def test_version_lowered_breaks_in_every_mode(tmp_path: Path) -> None:
    """Code whose newest version is below the snapshots' newest has gone back in time."""
    for mode in Mode:
        kinds_found = version_kinds(tmp_path, [V1, V2], [V1], (), mode, snap_ups=(UP_1_2,))
        assert "version_lowered" in kinds_found


def test_dropping_an_old_version_breaks_only_transitively(tmp_path: Path) -> None:
    """Non-transitive checks keep only the newest snapshot version readable; transitive, all."""
    snap = [V1, V2]
    assert version_kinds(tmp_path, snap, [V2, V3], (UP_2_3,), B, snap_ups=(UP_1_2,)) == []
    assert version_kinds(
        tmp_path, snap, [V2, V3], (UP_2_3,), B, transitive=True, snap_ups=(UP_1_2,)
    ) == ["version_removed"]


def test_upcaster_decorator_builds_the_same_upcaster() -> None:
    """@upcaster reads both versions from the annotations."""

    @upcaster
    def up(old: V1) -> V2:  # type: ignore[valid-type]  # classes made at run time
        return _v1_to_v2(old)  # type: ignore[no-any-return]

    assert (up.source, up.target, up.from_version, up.to_version) == (V1, V2, 1, 2)
