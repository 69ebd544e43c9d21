"""Which contracts a command looks at: those of an app, or those defined in a module.

``MODULE:APP`` (as for ``leveret run``) takes every contract the app's codec knows — handled,
replied, declared in ``Service(sends=...)`` or ``App(contracts=...)`` — and the app's upcasters.
``MODULE`` (no colon) takes every contract class defined in that module and, for a package, in
its submodules, and every ``Upcaster`` at their top level.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from framework.app import App
from framework.codec import Codec
from framework.errors import ConfigurationError
from framework.messages import Message
from framework.upcasting import Upcaster

__all__ = ["ContractSet", "load_contracts"]


@dataclass(frozen=True, slots=True)
class ContractSet:
    """Contract classes and upcasters to export, check or document.

    Args:
        types: contract classes, each with its own wire name and version.
        upcasters: conversions between their versions.
        origin: where they came from, for messages (``handlers.app:app``, ``contracts``).
    """

    types: tuple[type[Message], ...]
    upcasters: tuple[Upcaster[Any, Any], ...] = ()
    origin: str = ""

    @classmethod
    def of(
        cls,
        types: Iterable[type[Message]],
        upcasters: Iterable[Upcaster[Any, Any]] = (),
        *,
        origin: str = "",
    ) -> ContractSet:
        """A set of ``types`` plus the classes of ``upcasters``, ordered by wire name and version.

        Raises:
            ContractError: a class breaks the contract rules, or two claim one wire name and
                version.
        """
        ups = tuple(upcasters)
        codec = Codec(types, upcasters=ups)  # validates, as the app would at start-up
        ordered = sorted(codec.types(), key=lambda c: (c.__wire_name__, c.__wire_version__))
        return cls(tuple(ordered), tuple(codec.upcasters()), origin)

    @classmethod
    def from_app(cls, app: App, *, origin: str = "") -> ContractSet:
        """Every contract and upcaster the app's codec knows."""
        return cls.of(app.codec.types(), app.codec.upcasters(), origin=origin)

    @classmethod
    def from_module(cls, module: ModuleType) -> ContractSet:
        """Contracts defined in ``module`` (and its submodules) and its top-level upcasters."""
        root = module.__name__
        types: list[type[Message]] = []
        upcasters: list[Upcaster[Any, Any]] = []
        for mod in _module_tree(module):
            for value in vars(mod).values():
                if isinstance(value, Upcaster):
                    upcasters.append(value)
                elif (
                    isinstance(value, type)
                    and issubclass(value, Message)
                    and "__wire_name__" in vars(value)
                    and (value.__module__ == root or value.__module__.startswith(root + "."))
                ):
                    types.append(value)
        return cls.of(dict.fromkeys(types), dict.fromkeys(upcasters), origin=root)


def load_contracts(spec: str) -> ContractSet:
    """The contracts named by ``MODULE:APP`` or ``MODULE``, imported from the current directory.

    Raises:
        ConfigurationError: the module or app cannot be loaded, or it holds no contracts.
    """
    if ":" in spec:
        from framework.worker import load_app

        contracts = ContractSet.from_app(load_app(spec), origin=spec)
    else:
        contracts = ContractSet.from_module(_import(spec))
    if not contracts.types:
        raise ConfigurationError(
            f"{spec} holds no message contracts: name an App (MODULE:APP) or the module that "
            "defines the contract classes"
        )
    return contracts


def _import(name: str) -> ModuleType:
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            raise ConfigurationError(
                f"cannot import module {name!r} (run leveret from the project's directory or add "
                "it to PYTHONPATH); for an app write MODULE:APP"
            ) from None
        raise ConfigurationError(f"importing module {name!r} failed: {exc}") from exc
    except Exception as exc:
        raise ConfigurationError(
            f"importing module {name!r} failed: {type(exc).__name__}: {exc}"
        ) from exc


def _module_tree(module: ModuleType) -> list[ModuleType]:
    modules = [module]
    path = getattr(module, "__path__", None)
    if path is not None:
        found = pkgutil.walk_packages(path, module.__name__ + ".")
        for info in sorted(found, key=lambda i: i.name):
            modules.append(_import(info.name))
    return modules
