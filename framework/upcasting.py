"""Upcasters: pure functions that turn an older version of a contract into a newer one.

Two versions of a contract live side by side as two classes with the same wire name::

    class PlaceOrderV1(Command):
        __wire_name__ = "orders.place_order"
        __wire_version__ = 1

        order_id: str
        address: str


    class PlaceOrder(Command):
        __wire_name__ = "orders.place_order"
        __wire_version__ = 2

        order_id: str
        address: Address


    @upcaster
    def place_order_v1_to_v2(old: PlaceOrderV1) -> PlaceOrder:
        street, _, city = old.address.rpartition(", ")
        return PlaceOrder(order_id=old.order_id, address=Address(street=street, city=city))

A handler typed with ``PlaceOrder`` then also receives version-1 messages, decoded strictly with
``PlaceOrderV1`` and passed through the upcaster. Chains compose (v1 -> v2 -> v3). The upcaster
works on typed structs, not raw JSON, so the old class keeps validating old payloads and mypy
checks the conversion. It is registered on the app (``App(..., upcasters=[...])``); the codec
plans every path once at start-up.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from framework.errors import ContractError
from framework.messages import Message, kind_of, validate_contract

__all__ = ["Upcaster", "upcaster"]

S = TypeVar("S", bound=Message)
T = TypeVar("T", bound=Message)


@dataclass(frozen=True, slots=True)
class Upcaster(Generic[S, T]):
    """A declared conversion from ``source`` (an older version) to ``target`` (a newer one)."""

    source: type[S]
    target: type[T]
    func: Callable[[S], T]

    def __call__(self, old: S) -> T:
        return self.func(old)

    @property
    def wire_name(self) -> str:
        return self.source.__wire_name__

    @property
    def from_version(self) -> int:
        return self.source.__wire_version__

    @property
    def to_version(self) -> int:
        return self.target.__wire_version__

    @property
    def where(self) -> str:
        """``module:qualname`` of the function, to find it in the code."""
        return f"{self.func.__module__}:{self.func.__qualname__}"


def upcaster(func: Callable[[S], T]) -> Upcaster[S, T]:
    """Declare ``func(old: OldVersion) -> NewVersion`` as the upcaster between two versions.

    The versions come from the annotations. The function must be pure: no I/O, no clock, the
    same output for the same input (it may run again when a message is redelivered).

    Raises:
        ContractError: ``func`` is async, does not take exactly one annotated parameter, or its
            types are not two versions (older to newer) of one contract.
    """
    where = f"{getattr(func, '__module__', '?')}:{getattr(func, '__qualname__', func)!s}"
    if inspect.iscoroutinefunction(func):
        raise ContractError(f"{where} is async: an upcaster is a plain, pure function")
    params = [
        p
        for p in inspect.signature(func).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if len(params) != 1:
        raise ContractError(
            f"{where} must take exactly one parameter, the old message: "
            f"`def {getattr(func, '__name__', 'upcast')}(old: MyMessageV1) -> MyMessage`"
        )
    try:
        hints = typing.get_type_hints(func)
    except NameError as exc:
        raise ContractError(
            f"{where}: cannot resolve its annotations ({exc}); import the types at module level"
        ) from None
    source, target = hints.get(params[0].name), hints.get("return")
    if source is None or target is None:
        raise ContractError(
            f"{where} must annotate its parameter and its return with the old and the new "
            "version of the contract"
        )
    for cls in (source, target):
        if not (isinstance(cls, type) and issubclass(cls, Message)):
            raise ContractError(f"{where}: {cls!r} is not a message contract")
        validate_contract(cls)
    if source.__wire_name__ != target.__wire_name__:
        raise ContractError(
            f"{where} converts {source.__qualname__} ({source.__wire_name__!r}) into "
            f"{target.__qualname__} ({target.__wire_name__!r}): an upcaster joins two versions "
            "of one wire name"
        )
    if kind_of(source) is not kind_of(target):
        raise ContractError(
            f"{where}: {source.__qualname__} is a {kind_of(source).value} but "
            f"{target.__qualname__} is a {kind_of(target).value}; versions keep their kind"
        )
    if source.__wire_version__ >= target.__wire_version__:
        raise ContractError(
            f"{where} goes from version {source.__wire_version__} to "
            f"{target.__wire_version__}: upcasters go from an older version to a newer one"
        )
    return Upcaster(source, target, func)
