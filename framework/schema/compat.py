"""Compatibility of the contracts in code with their snapshots, under a schema-registry mode.

The modes mean what they mean in schema registries (Confluent's, Apicurio's), with the
snapshot as the previous schema and the code as the new one:

* ``backward`` (default): consumers built from the code can read every message written with
  the snapshot — messages still in queues, DLQs and retry queues, and from producers not yet
  redeployed. Consumers upgrade first. Allowed: new optional fields, removed fields, widened
  types and ranges, new enum values, a new version with an upcaster path from the previous one.
* ``forward``: consumers built from the snapshot can read every message the code writes.
  Producers upgrade first. Allowed: new fields (required or not), removed optional fields,
  narrowed types and ranges, removed enum values; no new versions (old consumers dead-letter
  them).
* ``full``: both. Allowed: new optional fields and removed optional fields.

Without ``transitive`` only the newest snapshot version of each wire name must still be
readable (through upcasters) by the newest version in code; with it, every snapshot version
must. In every mode a changed wire name, a changed kind or reply, and a lowered version break.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

import msgspec

from framework.codec import Codec
from framework.messages import Message, MessageKind, kind_of, reply_type_of
from framework.schema.snapshot import ContractSnapshot, contract_schema, render
from framework.schema.source import ContractSet
from framework.schema.structural import Issue, compare

__all__ = ["Break", "Mode", "Note", "Report", "check"]


class Mode(enum.StrEnum):
    """A compatibility mode; see the module docstring."""

    BACKWARD = "backward"
    FORWARD = "forward"
    FULL = "full"


class Break(msgspec.Struct, frozen=True, kw_only=True):
    """One breaking change.

    ``kind`` is one of ``field_removed``, ``field_added``, ``field_added_required``,
    ``field_made_required``, ``field_made_optional``, ``type_changed``, ``type_narrowed``,
    ``type_widened``, ``enum_value_removed``, ``enum_value_added``, ``wire_name_changed``,
    ``kind_changed``, ``reply_changed``, ``contract_removed``, ``version_lowered``,
    ``version_removed``, ``version_added``, ``upcaster_missing``. ``check`` is the check that
    found it: ``backward``, ``forward`` or ``both``.
    """

    contract: str
    version: int | None
    type_name: str | None
    field: str | None
    kind: str
    check: str
    message: str

    def line(self) -> str:
        """``orders.place_order v1 (PlaceOrder): field 'address' removed: ...``."""
        return _line(self.contract, self.version, self.type_name, self.message)


class Note(msgspec.Struct, frozen=True, kw_only=True):
    """Something to know that breaks nothing (a new contract, a snapshot out of date)."""

    contract: str
    version: int | None
    kind: str
    message: str

    def line(self) -> str:
        return _line(self.contract, self.version, None, self.message)


class Report(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of a check: every break and every note, in a stable order."""

    mode: Mode
    transitive: bool
    breaks: tuple[Break, ...]
    notes: tuple[Note, ...]

    @property
    def ok(self) -> bool:
        return not self.breaks

    def to_json(self) -> bytes:
        """``{"mode", "transitive", "ok", "breaks": [...], "notes": [...]}`` for tools."""
        data = msgspec.to_builtins(self)
        data["ok"] = self.ok
        for item in data["breaks"]:
            item["line"] = _line(
                item["contract"], item["version"], item["type_name"], item["message"]
            )
        return msgspec.json.format(msgspec.json.encode(data), indent=2) + b"\n"

    def text(self) -> str:
        """One line per break, then the notes, then a summary line."""
        lines = [f"BREAK {b.line()}" for b in self.breaks]
        lines += [f"note  {n.line()}" for n in self.notes]
        how = f"{self.mode.value}{' transitive' if self.transitive else ''}"
        if self.breaks:
            count = len(self.breaks)
            lines.append(f"{count} breaking change{'s' if count != 1 else ''} ({how})")
        else:
            lines.append(f"contracts compatible with the snapshots ({how})")
        return "\n".join(lines) + "\n"


def _line(contract: str, version: int | None, type_name: str | None, message: str) -> str:
    head = contract if version is None else f"{contract} v{version}"
    return f"{head}{f' ({type_name})' if type_name else ''}: {message}"


def check(
    contracts: ContractSet,
    snapshots: Mapping[tuple[str, int], ContractSnapshot],
    *,
    mode: Mode | str = Mode.BACKWARD,
    transitive: bool = False,
) -> Report:
    """Compare ``contracts`` with ``snapshots`` and list every breaking change under ``mode``."""
    return _Check(contracts, snapshots, Mode(mode), transitive).run()


class _Check:
    def __init__(
        self,
        contracts: ContractSet,
        snapshots: Mapping[tuple[str, int], ContractSnapshot],
        mode: Mode,
        transitive: bool,
    ) -> None:
        self.mode = mode
        self.transitive = transitive
        self.backward = mode in (Mode.BACKWARD, Mode.FULL)
        self.forward = mode in (Mode.FORWARD, Mode.FULL)
        self.codec = Codec(contracts.types, upcasters=contracts.upcasters)
        self.code: dict[str, dict[int, type[Message]]] = {}
        for cls in contracts.types:
            self.code.setdefault(cls.__wire_name__, {})[cls.__wire_version__] = cls
        self.snaps: dict[str, dict[int, ContractSnapshot]] = {}
        for (wire, version), snap in snapshots.items():
            self.snaps.setdefault(wire, {})[version] = snap
        self.breaks: list[Break] = []
        self.notes: list[Note] = []

    def run(self) -> Report:
        renamed: set[str] = set()
        for wire in sorted(self.snaps):
            if wire in self.code:
                self.wire(wire)
            else:
                renamed |= self.gone(wire)
        for wire in sorted(set(self.code) - set(self.snaps) - renamed):
            for version in sorted(self.code[wire]):
                self.notes.append(
                    Note(
                        contract=wire,
                        version=version,
                        kind="new_contract",
                        message="new contract, not in the snapshots yet: export them",
                    )
                )
        unique = list(dict.fromkeys(self.breaks))
        return Report(
            mode=self.mode,
            transitive=self.transitive,
            breaks=tuple(unique),
            notes=tuple(self.notes),
        )

    def add(
        self,
        wire: str,
        version: int | None,
        kind: str,
        message: str,
        *,
        check: str = "both",
        field: str | None = None,
        type_name: str | None = None,
    ) -> None:
        self.breaks.append(
            Break(
                contract=wire,
                version=version,
                type_name=type_name,
                field=field or None,
                kind=kind,
                check=check,
                message=message,
            )
        )

    def gone(self, wire: str) -> set[str]:
        """A wire name with snapshots and no class: renamed, or removed. Returns new names."""
        new_names: set[str] = set()
        by_class = {
            f"{cls.__module__}.{cls.__qualname__}": cls
            for versions in self.code.values()
            for cls in versions.values()
        }
        for version, snap in sorted(self.snaps[wire].items()):
            moved = by_class.get(snap.class_path)
            name = snap.class_path.rpartition(".")[2] or None
            if moved is not None and moved.__wire_name__ not in self.snaps:
                new_names.add(moved.__wire_name__)
                self.add(
                    wire,
                    version,
                    "wire_name_changed",
                    f"wire name changed to {moved.__wire_name__!r}: consumers bound to "
                    f"{wire!r} no longer receive it, and messages sent as {wire!r} are unknown",
                    type_name=name,
                )
            elif self.backward:
                self.add(
                    wire,
                    version,
                    "contract_removed",
                    "contract removed: its messages still in queues or sent by services not yet "
                    "redeployed can no longer be read",
                    check="backward",
                    type_name=name,
                )
        return new_names

    def wire(self, wire: str) -> None:
        code, snaps = self.code[wire], self.snaps[wire]
        for version in sorted(set(code) & set(snaps)):
            self.version(wire, code[version], snaps[version])
        newest_snap, newest_code = max(snaps), max(code)
        if newest_code < newest_snap:
            self.add(
                wire,
                None,
                "version_lowered",
                f"version lowered: the snapshots reach version {newest_snap}, the code only "
                f"version {newest_code}",
            )
        if self.backward:
            for version in sorted(set(snaps) - set(code)):
                if version < newest_code and (self.transitive or version == newest_snap):
                    self.add(
                        wire,
                        version,
                        "version_removed",
                        f"version removed: messages of version {version} can no longer be "
                        "read (keep its class and its upcaster until none are left)",
                        check="backward",
                    )
            sources = sorted(v for v in snaps if v in code and v < newest_code)
            if not self.transitive:
                sources = [v for v in sources if v == newest_snap]
            for version in sources:
                if self.codec.upcast_path(wire, version, newest_code) is None:
                    self.add(
                        wire,
                        newest_code,
                        "upcaster_missing",
                        f"no upcaster path from version {version}: handlers of version "
                        f"{newest_code} would dead-letter version-{version} messages; declare "
                        f"an @upcaster from {code[version].__qualname__}",
                        check="backward",
                        type_name=code[newest_code].__qualname__,
                    )
        for version in sorted(set(code) - set(snaps)):
            self.notes.append(
                Note(
                    contract=wire,
                    version=version,
                    kind="new_version",
                    message="new version, not in the snapshots yet: export them",
                )
            )
        if self.forward:
            for version in sorted(v for v in code if v > newest_snap):
                self.add(
                    wire,
                    version,
                    "version_added",
                    f"new version: consumers of version {newest_snap} cannot read it (they "
                    "dead-letter it as unsupported_version); forward compatibility lets "
                    "producers upgrade first, so keep the version and change it compatibly",
                    check="forward",
                    type_name=code[version].__qualname__,
                )

    def version(self, wire: str, cls: type[Message], snap: ContractSnapshot) -> None:
        version = cls.__wire_version__
        name = cls.__qualname__
        before = len(self.breaks)
        kind = kind_of(cls)
        if kind.value != snap.kind:
            self.add(
                wire,
                version,
                "kind_changed",
                f"kind changed from {snap.kind} to {kind.value}: it now travels on another "
                "exchange, where its consumers do not listen",
                type_name=name,
            )
        if kind is MessageKind.QUERY:
            reply = reply_type_of(cls).__wire_name__
            if snap.reply is not None and reply != snap.reply:
                self.add(
                    wire,
                    version,
                    "reply_changed",
                    f"reply changed from {snap.reply!r} to {reply!r}: callers expect the old one",
                    type_name=name,
                )
        document = contract_schema(cls)
        if self.backward:
            for issue in compare(reader=document, writer=snap.schema):
                self.add(
                    wire,
                    version,
                    *_backward(issue),
                    check="backward",
                    field=issue.path,
                    type_name=name,
                )
        if self.forward:
            for issue in compare(reader=snap.schema, writer=document):
                self.add(
                    wire,
                    version,
                    *_forward(issue),
                    check="forward",
                    field=issue.path,
                    type_name=name,
                )
        if self.mode is Mode.FULL:
            self._merge_changed(before)
        if len(self.breaks) == before and render(document) != render(snap.schema):
            self.notes.append(
                Note(
                    contract=wire,
                    version=version,
                    kind="snapshot_outdated",
                    message=f"differs from {snap.path.name} in compatible ways: export the "
                    "snapshots again",
                )
            )

    def _merge_changed(self, start: int) -> None:
        """A type change breaks both ways; in full mode say it once."""
        seen: set[tuple[str | None, str]] = set()
        kept = self.breaks[:start]
        for item in self.breaks[start:]:
            if item.kind == "type_changed":
                if (item.field, item.kind) in seen:
                    continue
                seen.add((item.field, item.kind))
                item = msgspec.structs.replace(item, check="both")
            kept.append(item)
        self.breaks[:] = kept


def _field(path: str) -> str:
    return f"field {path!r}" if path else "the message"


def _values(values: tuple[Any, ...]) -> str:
    shown = ", ".join(msgspec.json.encode(v).decode() for v in values)
    return f"value{'s' if len(values) != 1 else ''} {shown}"


def _them(values: tuple[Any, ...]) -> str:
    return "them" if len(values) != 1 else "it"


def _backward(issue: Issue) -> tuple[str, str]:
    """Kind and words of an issue found with the code reading snapshot-written messages."""
    where = _field(issue.path)
    if issue.kind == "missing":
        return (
            "field_added_required",
            f"new required {where} has no default: messages written with the snapshot lack it",
        )
    if issue.kind == "made_required":
        return (
            "field_made_required",
            f"{where} became required: messages written with the snapshot may lack it",
        )
    if issue.kind == "changed":
        return "type_changed", f"{where} type changed from {issue.writer} to {issue.reader}"
    if issue.kind == "narrower":
        return (
            "type_narrowed",
            f"{where} type narrowed from {issue.writer} to {issue.reader}: messages written "
            "with the snapshot may not fit",
        )
    if issue.kind == "enum_missing":
        return (
            "enum_value_removed",
            f"{where} enum {_values(issue.values)} removed: messages written with the "
            f"snapshot may carry {_them(issue.values)}",
        )
    return (
        "field_removed",
        f"{where} removed, and the contract forbids unknown fields: messages written with the "
        "snapshot are rejected",
    )


def _forward(issue: Issue) -> tuple[str, str]:
    """Kind and words of an issue found with the snapshot reading code-written messages."""
    where = _field(issue.path)
    if issue.kind == "missing":
        return "field_removed", f"{where} removed: consumers built from the snapshot require it"
    if issue.kind == "made_required":
        return (
            "field_made_optional",
            f"{where} became optional: consumers built from the snapshot require it",
        )
    if issue.kind == "changed":
        return "type_changed", f"{where} type changed from {issue.reader} to {issue.writer}"
    if issue.kind == "narrower":
        return (
            "type_widened",
            f"{where} type widened from {issue.reader} to {issue.writer}: consumers built from "
            "the snapshot reject the new values",
        )
    if issue.kind == "enum_missing":
        return (
            "enum_value_added",
            f"{where} enum {_values(issue.values)} added: consumers built from the snapshot "
            f"reject {_them(issue.values)}",
        )
    return (
        "field_added",
        f"new {where}: consumers built from the snapshot forbid unknown fields",
    )
