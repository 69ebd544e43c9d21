"""The client library versions the transport's patches are tested against, and a check of them.

``_pamqp`` replaces pamqp's content-header decoding (without it one crafted publish can drop a
worker's connection for good), ``_frames`` writes frames into aiormq's channel bookkeeping,
``_aiormq_flow`` and ``_aiormq_handshake`` wrap private aiormq methods and ``_failover`` one of
aio-pika's. Each relies on internals that a release may
move. ``require()`` runs when ``framework.transport.amqp`` is imported: what the decoder patch
and the frame writer cannot do without is checked, and an ``ImportError`` names what is missing,
the installed versions and the tested ones, instead of an ``AttributeError`` deep in a patch or
an undecodable header killing a connection later. The fast publish/ack path and flow control
degrade instead (``_frames.supports_fast_path``, ``_aiormq_flow.hear_flow``,
``_aiormq_handshake.install``, ``FailoverConnection.on_attempt_failed``): they only cost speed, an
early warning or detail in a log line.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import import_module, metadata
from types import ModuleType

__all__ = ["TESTED", "installed", "missing", "require", "tested_series"]

#: Distribution -> the release series (major.minor) the patches are tested against.
TESTED: Mapping[str, str] = {"aio-pika": "10.2", "aiormq": "7.2", "pamqp": "4.0"}

# What the patches cannot do without: module -> dotted attributes within it.
_REQUIRED: Mapping[str, tuple[str, ...]] = {
    "pamqp.decode": ("METHODS",),
    "pamqp.encode": ("METHODS",),
    "pamqp.frame": ("_unmarshal_header_frame",),
    "pamqp.header": ("ContentHeader",),
    "pamqp.commands": ("Basic.Properties",),
    "aiormq.abc": ("ChannelFrame",),
}
# Codecs in pamqp's decode / encode METHODS tables that ``_pamqp.install`` replaces.
_CODECS: Mapping[str, tuple[str, ...]] = {
    "pamqp.decode": ("shortstr", "table"),
    "pamqp.encode": ("shortstr",),
}


def installed() -> dict[str, str]:
    """Distribution -> installed version ("missing" when not installed)."""
    versions = {}
    for name in TESTED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "missing"
    return versions


def tested_series(versions: Mapping[str, str]) -> dict[str, bool]:
    """Distribution -> whether ``versions`` has it in the tested series."""
    return {
        name: versions.get(name, "").split(".")[:2] == series.split(".")
        for name, series in TESTED.items()
    }


def missing(
    modules: Mapping[str, ModuleType | None] | None = None,
    *,
    libraries: tuple[str, ...] = ("pamqp", "aiormq"),
) -> list[str]:
    """What the patches rely on and the installed pamqp/aiormq lack (empty: all there).

    Args:
        modules: the modules to inspect, by name (default: imported); None for one that cannot
            be imported.
        libraries: check what is needed of these only.
    """
    wanted = {n: a for n, a in _REQUIRED.items() if n.split(".")[0] in libraries}
    if modules is None:
        modules = {name: _module(name) for name in wanted}
    lacking = []
    for name, attributes in wanted.items():
        module = modules.get(name)
        if module is None:
            lacking.append(f"module {name}")
            continue
        for dotted in attributes:
            if _lookup(module, dotted) is None:
                lacking.append(f"{name}.{dotted}")
        table = getattr(module, "METHODS", None)
        for codec in _CODECS.get(name, ()):
            if not isinstance(table, dict) or codec not in table:
                lacking.append(f"{name}.METHODS[{codec!r}]")
    return lacking


def require(
    modules: Mapping[str, ModuleType | None] | None = None,
    *,
    libraries: tuple[str, ...] = ("pamqp", "aiormq"),
) -> None:
    """Check that the patches can be applied (what ``missing`` checks, with the same arguments).

    Raises:
        ImportError: something they rely on is missing; the message names it, the installed
            versions and the tested ones (install those: ``pip install 'aiormq==7.2.*'
            'pamqp==4.0.*'``).
    """
    lacking = missing(modules, libraries=libraries)
    if not lacking:
        return
    versions = installed()
    have = ", ".join(f"{name} {versions[name]}" for name in TESTED)
    tested = ", ".join(f"{name} {series}.x" for name, series in TESTED.items())
    raise ImportError(
        "the RabbitMQ transport patches internals of its client libraries and cannot run with "
        f"{have}: missing {', '.join(lacking)}. It is tested with {tested}; install those "
        "versions (or update framework/transport/amqp/_pamqp.py and _frames.py for these)"
    )


def _module(name: str) -> ModuleType | None:
    try:
        return import_module(name)
    except ImportError:
        return None


def _lookup(root: object, dotted: str) -> object | None:
    current: object | None = root
    for part in dotted.split("."):
        current = getattr(current, part, None)
    return current
