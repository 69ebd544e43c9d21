"""Contract classes made on the fly, and snapshot directories made from them."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

from framework.messages import Command, Message
from framework.schema import ContractSet, export, read_snapshots
from framework.schema.snapshot import ContractSnapshot
from framework.upcasting import Upcaster

__all__ = ["NO_DEFAULT", "make_contract", "snapshot_of"]

NO_DEFAULT = object()


def make_contract(
    fields: dict[str, Any],
    *,
    wire: str = "shop.thing",
    version: int = 1,
    base: type[Message] = Command,
    name: str = "Thing",
    module: str = "tests.fake_contracts",
    **struct_options: Any,
) -> type[Message]:
    """A contract class; ``fields`` maps names to a type or to ``(type, default)``."""
    annotations: dict[str, Any] = {}
    defaults: dict[str, Any] = {}
    for field, spec in fields.items():
        typ, default = spec if isinstance(spec, tuple) else (spec, NO_DEFAULT)
        annotations[field] = typ
        if default is not NO_DEFAULT:
            defaults[field] = default

    def body(ns: dict[str, Any]) -> None:
        ns.update(
            {
                "__wire_name__": wire,
                "__wire_version__": version,
                "__annotations__": annotations,
                "__module__": module,
                "__qualname__": name,
                **defaults,
            }
        )

    cls: type[Message] = types.new_class(name, (base,), struct_options, body)
    return cls


def snapshot_of(
    directory: Path,
    *classes: type[Message],
    upcasters: tuple[Upcaster[Any, Any], ...] = (),
) -> dict[tuple[str, int], ContractSnapshot]:
    """Export ``classes`` into ``directory`` and read the snapshots back."""
    export(ContractSet.of(classes, upcasters), directory)
    return read_snapshots(directory)
