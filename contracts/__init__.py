"""Message contracts of the reference shop. Imports nothing but msgspec, the stdlib and the
contract base classes."""

from contracts import inventory, notifications, orders, payment, shipping, trail
from framework.messages import Message

__all__ = ["ALL", "inventory", "notifications", "orders", "payment", "shipping", "trail"]


def _collect() -> tuple[type[Message], ...]:
    found: list[type[Message]] = []
    for module in (orders, inventory, payment, shipping, notifications, trail):
        for name in module.__all__:
            obj = getattr(module, name)
            if isinstance(obj, type) and issubclass(obj, Message) and "__wire_name__" in vars(obj):
                found.append(obj)
    return tuple(found)


ALL: tuple[type[Message], ...] = _collect()
"""Every contract class of the shop."""
