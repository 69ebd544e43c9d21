"""Message contracts: the base classes every command, event, query and reply derives from.

A contract is a frozen, keyword-only msgspec Struct with an explicit wire name and a version::

    class PlaceOrder(Command):
        __wire_name__ = "orders.place_order"
        __wire_version__ = 1

        order_id: str
        items: list[LineItem]

The wire name is what travels in the AMQP ``type`` property and is the routing key. It is never
derived from the Python class or module name, so classes can be renamed and moved freely.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any, ClassVar, Generic, TypeVar, dataclass_transform

import msgspec

from framework.errors import ContractError

__all__ = [
    "Command",
    "Event",
    "Message",
    "MessageKind",
    "Query",
    "Reply",
    "kind_of",
    "reply_type_of",
    "validate_contract",
]

R = TypeVar("R", bound="Reply")

_WIRE_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")


class MessageKind(StrEnum):
    """Which bus a message travels on."""

    COMMAND = "command"
    EVENT = "event"
    QUERY = "query"
    REPLY = "reply"


@dataclass_transform(kw_only_default=True, frozen_default=True, field_specifiers=(msgspec.field,))
class _ContractMeta(msgspec.StructMeta):
    """Makes every contract frozen and keyword-only without repeating it on each class.

    msgspec applies ``kw_only`` to the fields of the class that declares it, not to subclasses, so
    a plain base class could not guarantee it.
    """

    def __new__(
        mcls, name: str, bases: tuple[type, ...], namespace: dict[str, Any], **kwargs: Any
    ) -> Any:
        kwargs.setdefault("kw_only", True)
        kwargs.setdefault("frozen", True)
        return super().__new__(mcls, name, bases, namespace, **kwargs)


class Message(msgspec.Struct, metaclass=_ContractMeta):
    """Base of all contracts. Subclass one of Command, Event, Query or Reply instead."""

    __wire_name__: ClassVar[str]
    __wire_version__: ClassVar[int] = 1
    __kind__: ClassVar[MessageKind]


class Command(Message):
    """Asks exactly one service to change something. Its handler returns nothing.

    ``__replies__`` may list the events that answer it; saga steps are then checked against it.
    """

    __kind__ = MessageKind.COMMAND
    __replies__: ClassVar[tuple[type[Message], ...] | None] = None


class Event(Message):
    """States a fact that happened; any number of services may subscribe."""

    __kind__ = MessageKind.EVENT


class Reply(Message):
    """The answer to a query."""

    __kind__ = MessageKind.REPLY


class Query(Message, Generic[R]):
    """Asks exactly one service for data; parametrise with the reply type: ``Query[OrderView]``."""

    __kind__ = MessageKind.QUERY


def kind_of(cls: type[Any]) -> MessageKind:
    """Return the bus of a contract class.

    Raises:
        ContractError: ``cls`` is not a subclass of Command, Event, Query or Reply.
    """
    if isinstance(cls, type) and issubclass(cls, Message) and cls is not Message:
        kind = getattr(cls, "__kind__", None)
        if isinstance(kind, MessageKind):
            return kind
    raise ContractError(
        f"{getattr(cls, '__qualname__', cls)!r} is not a message contract: derive it from "
        "framework.Command, Event, Query or Reply"
    )


def validate_contract(cls: type[Message]) -> None:
    """Check the contract rules a class must follow before it can be registered.

    Raises:
        ContractError: the wire name is missing, inherited or malformed, or the version is not a
            positive int.
    """
    kind_of(cls)
    name = cls.__dict__.get("__wire_name__")
    if name is None:
        raise ContractError(
            f"{cls.__qualname__} has no wire name of its own: add "
            f'`__wire_name__ = "<service>.<message>"` to the class body'
        )
    if not isinstance(name, str) or not _WIRE_NAME.match(name):
        raise ContractError(
            f"{cls.__qualname__}.__wire_name__ = {name!r} is not a valid wire name: use dotted "
            'lowercase words, e.g. "orders.place_order"'
        )
    version = cls.__wire_version__
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ContractError(
            f"{cls.__qualname__}.__wire_version__ = {version!r}: versions are ints from 1 up"
        )
    if not cls.__struct_config__.frozen:
        raise ContractError(f"{cls.__qualname__} must be frozen: declare it with `frozen=True`")


def reply_type_of(cls: type[Message]) -> type[Reply]:
    """Return ``R`` of a ``Query[R]`` subclass.

    Raises:
        ContractError: the class is not a query that names its reply type.
    """
    for klass in cls.__mro__:
        for base in getattr(klass, "__orig_bases__", ()):
            origin = getattr(base, "__origin__", None)
            if origin is Query:
                (arg,) = base.__args__
                if isinstance(arg, type) and issubclass(arg, Reply):
                    return arg
    raise ContractError(
        f"{cls.__qualname__} does not name its reply type: declare it as "
        f"`class {cls.__name__}(Query[MyReply])` with MyReply a framework.Reply"
    )
