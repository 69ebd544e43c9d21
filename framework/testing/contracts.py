"""Contract assertions for tests: compatible with the snapshots, payloads that decode forever.

``source`` is anything that names a set of contracts: an ``App``, a module (or its name), a
``MODULE:APP`` string, or a ``ContractSet``.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import ModuleType

from framework.app import App
from framework.codec import Codec
from framework.errors import DecodeFailure
from framework.messages import Message
from framework.schema.compat import Mode, Report, check
from framework.schema.snapshot import DEFAULT_SNAPSHOT_DIR, read_snapshots
from framework.schema.source import ContractSet, load_contracts

__all__ = ["Source", "assert_compatible", "contract_set_of", "decode_payload_files", "round_trip"]

Source = App | ModuleType | ContractSet | str
_PAYLOAD = re.compile(r"^(?P<wire>[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)+)\.v(?P<version>[0-9]+)\b")


def contract_set_of(source: Source) -> ContractSet:
    """The contracts and upcasters ``source`` names."""
    if isinstance(source, ContractSet):
        return source
    if isinstance(source, App):
        return ContractSet.from_app(source)
    if isinstance(source, ModuleType):
        return ContractSet.from_module(source)
    return load_contracts(source)


def _codec_of(source: Source) -> Codec:
    if isinstance(source, App):
        return source.codec
    contracts = contract_set_of(source)
    return Codec(contracts.types, upcasters=contracts.upcasters)


def assert_compatible(
    source: Source,
    snapshots: str | Path = DEFAULT_SNAPSHOT_DIR,
    *,
    mode: Mode | str = Mode.BACKWARD,
    transitive: bool = False,
) -> Report:
    """Check ``source`` against the snapshots in ``snapshots``; returns the report.

    Raises:
        AssertionError: a breaking change, with one line per break.
    """
    report = check(
        contract_set_of(source), read_snapshots(snapshots), mode=mode, transitive=transitive
    )
    if not report.ok:
        raise AssertionError(
            f"contracts are not {report.mode.value}-compatible with {snapshots}:\n"
            + "\n".join(f"  {b.line()}" for b in report.breaks)
        )
    return report


def _newest(codec: Codec, wire_name: str) -> type[Message]:
    versions = codec.versions(wire_name)
    if not versions:
        raise AssertionError(f"{wire_name!r} is not a registered contract")
    newest = {(c.__wire_name__, c.__wire_version__): c for c in codec.types()}
    return newest[(wire_name, versions[-1])]


def _read_back(codec: Codec, message: Message) -> Message:
    cls = type(message)
    return codec.decode(
        codec.encode(message),
        wire_name=cls.__wire_name__,
        version=cls.__wire_version__,
        content_type="application/json",
    )


def round_trip(source: Source, *examples: Message) -> list[Message]:
    """Encode each example, decode it as the newest version of its contract (through the
    upcasters), and check that this newest form encodes and decodes to itself.

    An example of the newest version must come back equal. Returns the newest forms.

    Raises:
        AssertionError: naming every example that failed and why.
    """
    codec = _codec_of(source)
    failures: list[str] = []
    results: list[Message] = []
    for example in examples:
        cls = type(example)
        what = f"{cls.__qualname__} ({cls.__wire_name__} v{cls.__wire_version__})"
        try:
            newest = codec.decode(
                codec.encode(example),
                wire_name=cls.__wire_name__,
                version=cls.__wire_version__,
                content_type="application/json",
                into=_newest(codec, cls.__wire_name__),
            )
            again = _read_back(codec, newest)
        except (DecodeFailure, AssertionError) as exc:
            failures.append(f"{what}: {exc}")
            continue
        if again != newest or (type(newest) is cls and newest != example):
            failures.append(f"{what}: changed on the way: {example!r} -> {again!r}")
            continue
        results.append(newest)
    if failures:
        raise AssertionError(
            "examples do not round-trip:\n" + "\n".join(f"  {f}" for f in failures)
        )
    return results


def decode_payload_files(source: Source, directory: str | Path) -> dict[Path, Message]:
    """Decode every ``<wire name>.v<version>[.<label>].json`` body in ``directory``.

    Each body is decoded as the version its name says and upcast to the newest version of its
    contract, which must then round-trip. Keep old payloads here forever: they prove that
    messages written long ago still reach today's handlers.

    Raises:
        AssertionError: the directory holds no payloads, or naming every file that failed.
    """
    codec = _codec_of(source)
    files = sorted(Path(directory).glob("*.json"))
    if not files:
        raise AssertionError(f"no payload files (<wire name>.v<version>.json) in {directory}")
    failures: list[str] = []
    decoded: dict[Path, Message] = {}
    for path in files:
        match = _PAYLOAD.match(path.name)
        if match is None:
            failures.append(f"{path.name}: name it <wire name>.v<version>[.<label>].json")
            continue
        wire_name, version = match["wire"], int(match["version"])
        try:
            message = codec.decode(
                path.read_bytes(),
                wire_name=wire_name,
                version=version,
                content_type="application/json",
                into=_newest(codec, wire_name),
            )
            again = _read_back(codec, message)
        except (DecodeFailure, AssertionError) as exc:
            failures.append(f"{path.name}: {exc}")
            continue
        if again != message:
            failures.append(f"{path.name}: changed on the way: {message!r} -> {again!r}")
            continue
        decoded[path] = message
    if failures:
        raise AssertionError(
            f"payloads in {directory} do not decode:\n" + "\n".join(f"  {f}" for f in failures)
        )
    return decoded
