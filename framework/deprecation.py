"""Old names kept working for a while: they warn (``DeprecationWarning``) and give the new one."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping

__all__ = ["renamed"]


def renamed(module: str, names: Mapping[str, tuple[str, object]]) -> Callable[[str], object]:
    """A module ``__getattr__`` serving each old name of ``names`` (old name -> new name, object).

    Use it as ``__getattr__ = renamed(__name__, {"Old": ("New", New)})``; any other missing name
    raises ``AttributeError`` as usual.
    """

    def __getattr__(name: str) -> object:
        try:
            new, value = names[name]
        except KeyError:
            raise AttributeError(f"module {module!r} has no attribute {name!r}") from None
        warnings.warn(
            f"{module}.{name} is deprecated: use {module}.{new}", DeprecationWarning, stacklevel=2
        )
        return value

    return __getattr__
