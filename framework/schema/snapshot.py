"""JSON Schema snapshots of contracts: one reviewable file per wire name and version.

``export`` writes ``<dir>/<wire name>.v<version>.json`` for every contract of a ``ContractSet``:
the JSON Schema msgspec derives from the class (draft 2020-12), plus an ``x-leveret`` object with
the wire name, version, kind, class and (queries) reply wire name. Keys are sorted and the
indentation fixed, so the same code always gives the same bytes and a diff shows only what
changed. Files of contracts that are gone are removed; other files in the directory are left
alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from framework.deprecation import renamed
from framework.errors import ConfigurationError
from framework.messages import Message, MessageKind, kind_of, reply_type_of
from framework.schema.source import ContractSet

__all__ = [
    "DEFAULT_SNAPSHOT_DIR",
    "ContractSnapshot",
    "ExportResult",
    "contract_schema",
    "export",
    "file_name",
    "read_snapshots",
    "render",
]

DEFAULT_SNAPSHOT_DIR = "contracts/schemas"
DIALECT = "https://json-schema.org/draft/2020-12/schema"
META = "x-leveret"


def contract_schema(cls: type[Message]) -> dict[str, Any]:
    """The snapshot document of one contract class."""
    kind = kind_of(cls)
    meta: dict[str, Any] = {
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "kind": kind.value,
        "version": cls.__wire_version__,
        "wire_name": cls.__wire_name__,
    }
    if kind is MessageKind.QUERY:
        meta["reply"] = reply_type_of(cls).__wire_name__
    return {"$schema": DIALECT, **msgspec.json.schema(cls), META: meta}


def file_name(wire_name: str, version: int) -> str:
    """``orders.place_order.v1.json``."""
    return f"{wire_name}.v{version}.json"


def render(document: dict[str, Any]) -> str:
    """The exact text of a snapshot file: sorted keys, two-space indent, final newline."""
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


@dataclass(frozen=True, slots=True)
class ExportResult:
    """File names written (new or changed), left unchanged, and removed (contract gone)."""

    directory: Path
    written: tuple[str, ...]
    unchanged: tuple[str, ...]
    removed: tuple[str, ...]

    def summary(self) -> str:
        return (
            f"{self.directory}: {len(self.written)} written, {len(self.unchanged)} unchanged, "
            f"{len(self.removed)} removed"
        )


def export(contracts: ContractSet, directory: str | Path = DEFAULT_SNAPSHOT_DIR) -> ExportResult:
    """Write the snapshot of every contract into ``directory`` and remove those of gone ones.

    Raises:
        ConfigurationError: ``directory`` exists but is not a directory.
    """
    target = Path(directory)
    if target.exists() and not target.is_dir():
        raise ConfigurationError(f"{target} is not a directory: pass --dir DIRECTORY")
    target.mkdir(parents=True, exist_ok=True)
    wanted = {
        file_name(cls.__wire_name__, cls.__wire_version__): render(contract_schema(cls))
        for cls in contracts.types
    }
    written: list[str] = []
    unchanged: list[str] = []
    for name in sorted(wanted):
        path = target / name
        text = wanted[name]
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            unchanged.append(name)
            continue
        path.write_text(text, encoding="utf-8", newline="\n")
        written.append(name)
    removed: list[str] = []
    for path in sorted(target.glob("*.json")):
        if path.name not in wanted and _is_snapshot(path):
            path.unlink()
            removed.append(path.name)
    return ExportResult(target, tuple(written), tuple(unchanged), tuple(removed))


def _is_snapshot(path: Path) -> bool:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(document, dict) and isinstance(document.get(META), dict)


@dataclass(frozen=True, slots=True)
class ContractSnapshot:
    """One contract's snapshot file as read back (not an aggregate's ``Snapshot``)."""

    wire_name: str
    version: int
    kind: str
    class_path: str
    reply: str | None
    schema: dict[str, Any]
    path: Path


# The aggregate snapshots of framework.eventsourcing are ``Snapshot``; this was too.
__getattr__ = renamed(__name__, {"Snapshot": ("ContractSnapshot", ContractSnapshot)})


def read_snapshots(
    directory: str | Path = DEFAULT_SNAPSHOT_DIR,
) -> dict[tuple[str, int], ContractSnapshot]:
    """Every snapshot in ``directory``, by wire name and version.

    Raises:
        ConfigurationError: the directory is missing or empty, or a snapshot file is unreadable
            or misnamed.
    """
    source = Path(directory)
    if not source.is_dir():
        raise ConfigurationError(
            f"no snapshot directory {source}: write the snapshots first with "
            "`leveret contracts export MODULE:APP --dir DIRECTORY` and commit them"
        )
    found: dict[tuple[str, int], ContractSnapshot] = {}
    for path in sorted(source.glob("*.json")):
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigurationError(f"cannot read snapshot {path}: {exc}") from None
        meta = document.get(META) if isinstance(document, dict) else None
        if not isinstance(meta, dict):
            continue  # not one of ours
        try:
            snapshot = ContractSnapshot(
                wire_name=str(meta["wire_name"]),
                version=int(meta["version"]),
                kind=str(meta["kind"]),
                class_path=str(meta.get("class", "")),
                reply=str(meta["reply"]) if meta.get("reply") is not None else None,
                schema=document,
                path=path,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigurationError(
                f"snapshot {path} has a broken {META!r} object ({exc}): export it again"
            ) from None
        expected = file_name(snapshot.wire_name, snapshot.version)
        if path.name != expected:
            raise ConfigurationError(
                f"snapshot {path} describes {snapshot.wire_name!r} version {snapshot.version}: "
                f"name it {expected} (or export again)"
            )
        found[(snapshot.wire_name, snapshot.version)] = snapshot
    if not found:
        raise ConfigurationError(
            f"no snapshots in {source}: write them with "
            "`leveret contracts export MODULE:APP --dir DIRECTORY` and commit them"
        )
    return found
