"""The client library versions the RabbitMQ transport's patches rely on, stated and checked."""

from __future__ import annotations

import types

import pytest

from framework.transport.amqp import _compat


def test_installed_versions_are_the_tested_series() -> None:
    """The installed aio-pika, aiormq and pamqp are the series the patches are tested against.

    Upgrading one past it fails here: re-run the transport suites, review ``_pamqp``,
    ``_frames`` and ``_aiormq_flow`` against the new release, then update ``_compat.TESTED``.
    """
    installed = _compat.installed()
    assert _compat.tested_series(installed) == dict.fromkeys(_compat.TESTED, True), installed


def test_installed_libraries_have_what_the_patches_need() -> None:
    """Nothing the patches rely on is missing from the installed pamqp and aiormq."""
    assert _compat.missing() == []
    _compat.require()


def test_tested_series_compares_major_and_minor() -> None:
    """A patch release of the tested series counts as tested; another minor does not."""
    versions = {"aio-pika": "10.2.9", "aiormq": "7.3.0", "pamqp": "4.0"}
    assert _compat.tested_series(versions) == {"aio-pika": True, "aiormq": False, "pamqp": True}


def test_missing_internals_fail_with_an_import_error_naming_the_versions() -> None:
    """A pamqp without the decoder table or header-frame function is refused by name."""
    renamed = {name: _module_of(name) for name in _REQUIRED_MODULES}
    decode = types.ModuleType("pamqp.decode")
    decode.METHODS = {"table": None}  # type: ignore[attr-defined]  # a stand-in: no shortstr
    renamed["pamqp.decode"] = decode
    renamed["pamqp.frame"] = types.ModuleType("pamqp.frame")
    with pytest.raises(ImportError) as raised:
        _compat.require(renamed)
    text = str(raised.value)
    assert "pamqp.decode.METHODS['shortstr']" in text
    assert "pamqp.frame._unmarshal_header_frame" in text
    assert "pamqp.decode.METHODS['table']" not in text
    for name, version in _compat.installed().items():
        assert f"{name} {version}" in text
    for name, series in _compat.TESTED.items():
        assert f"{name} {series}.x" in text


def test_a_library_that_cannot_be_imported_is_named() -> None:
    """A module that cannot be imported at all is reported as missing, not raised from."""
    modules = {name: _module_of(name) for name in _REQUIRED_MODULES}
    modules["aiormq.abc"] = None
    assert _compat.missing(modules) == ["module aiormq.abc"]
    assert _compat.missing(modules, libraries=("pamqp",)) == []


_REQUIRED_MODULES = (
    "pamqp.decode",
    "pamqp.encode",
    "pamqp.frame",
    "pamqp.header",
    "pamqp.commands",
    "aiormq.abc",
)


def _module_of(name: str) -> types.ModuleType:
    return __import__(name, fromlist=["_"])
