"""A renamed public object still answers to its old name, with a DeprecationWarning."""

from __future__ import annotations

import importlib

import pytest

from framework.health.http import HealthResponse
from framework.schema.snapshot import ContractSnapshot


@pytest.mark.parametrize(
    ("module", "old", "new"),
    [
        ("framework.health.http", "Answer", HealthResponse),
        ("framework.schema.snapshot", "Snapshot", ContractSnapshot),
    ],
)
def test_an_old_name_warns_and_gives_the_new_object(module: str, old: str, new: object) -> None:
    """The old name is the new object, and using it says what to use instead."""
    with pytest.warns(DeprecationWarning, match=f"{module}.{old} is deprecated: use {module}."):
        value = getattr(importlib.import_module(module), old)
    assert value is new


def test_a_name_that_never_was_is_an_attribute_error() -> None:
    """The deprecation hook answers only for the old names it knows."""
    module = importlib.import_module("framework.health.http")
    with pytest.raises(AttributeError, match="no attribute 'Nothing'"):
        module.Nothing  # noqa: B018  # the lookup itself is the test
