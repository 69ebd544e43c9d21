"""leveret's pytest plugin, loaded through the ``pytest11`` entry point when leveret is installed.

Fixtures:

* ``leveret_compatible(source, snapshots=None, *, mode=None, transitive=None)``: fails the test
  with one line per breaking change between ``source`` (an App, a contracts module, its name or
  ``MODULE:APP``) and its snapshots.
* ``leveret_round_trip(source, *examples)`` and ``leveret_round_trip.files(source, directory)``:
  example messages and old payload files decode (through the upcasters) and round-trip.
* ``leveret_harness(app, **options)``: a ``Harness`` (async context manager) that runs the app
  on a private in-memory broker, captures every message each service emits, and checks each
  against every handler that consumes it (``assert_consumers_accept``); with
  ``clock=VirtualClock()``, ``await harness.advance(seconds)`` moves time.

Settings (``[tool.pytest.ini_options]``): ``leveret_snapshots`` (default ``contracts/schemas``,
relative to the rootdir), ``leveret_compat_mode`` (default ``backward``) and
``leveret_compat_transitive`` (default false).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from framework.app import App
    from framework.messages import Message
    from framework.schema.compat import Report
    from framework.testing.contracts import Source
    from framework.testing.harness import Harness

__all__ = ["RoundTrip"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "leveret_snapshots",
        "directory of contract snapshots written by `leveret contracts export`",
        default="contracts/schemas",
    )
    parser.addini(
        "leveret_compat_mode",
        "compatibility mode of leveret_compatible: backward, forward or full",
        default="backward",
    )
    parser.addini(
        "leveret_compat_transitive",
        "check every snapshot version, not only the newest",
        type="bool",
        default=False,
    )


@pytest.fixture
def leveret_compatible(pytestconfig: pytest.Config) -> Callable[..., Report]:
    """Assert that contracts are compatible with their snapshots; returns the report."""
    from framework.testing.contracts import assert_compatible

    def compatible(
        source: Source,
        snapshots: str | Path | None = None,
        *,
        mode: str | None = None,
        transitive: bool | None = None,
    ) -> Report:
        __tracebackhide__ = True
        directory = Path(snapshots or str(pytestconfig.getini("leveret_snapshots")))
        if not directory.is_absolute():
            directory = pytestconfig.rootpath / directory
        return assert_compatible(
            source,
            directory,
            mode=mode or str(pytestconfig.getini("leveret_compat_mode")),
            transitive=(
                bool(pytestconfig.getini("leveret_compat_transitive"))
                if transitive is None
                else transitive
            ),
        )

    return compatible


class RoundTrip:
    """``round_trip(source, *examples)`` and ``round_trip.files(source, directory)``."""

    def __call__(self, source: Source, *examples: Message) -> list[Message]:
        __tracebackhide__ = True
        from framework.testing.contracts import round_trip

        return round_trip(source, *examples)

    def files(self, source: Source, directory: str | Path) -> dict[Path, Message]:
        __tracebackhide__ = True
        from framework.testing.contracts import decode_payload_files

        return decode_payload_files(source, directory)


@pytest.fixture
def leveret_round_trip() -> RoundTrip:
    """Round-trip example messages and old payload files through the contracts' codec."""
    return RoundTrip()


@pytest.fixture
def leveret_harness() -> Callable[..., Harness]:
    """Make a ``Harness`` for an app: ``async with leveret_harness(app) as harness: ...``."""
    from framework.testing.harness import Harness

    def make(app: App, **options: Any) -> Harness:
        return Harness(app, **options)

    return make
