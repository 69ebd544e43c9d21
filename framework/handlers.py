"""Services and their decorated handlers.

A ``Service`` owns its handlers; nothing is registered globally. The message type of a handler
comes from the annotation of its first parameter and is checked when the decorator runs::

    orders = Service("orders")

    @orders.command
    async def place_order(cmd: PlaceOrder, ctx: Context) -> None: ...
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from framework.errors import RegistrationError
from framework.messages import Message, MessageKind, kind_of, reply_type_of, validate_contract
from framework.retry import RetryPolicy
from framework.store.migrations import Migrations, Step

__all__ = ["HandlerSpec", "Service", "check_unique_handlers"]

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
_SERVICE_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    """One registered handler and its options (validated when the decorator ran)."""

    service: str
    kind: MessageKind
    message_type: type[Message]
    func: Callable[..., Awaitable[Any]]
    takes_context: bool
    retry: RetryPolicy | None
    timeout: float | None
    prefetch: int | None
    transactional: bool = False
    saga: Any = None  # the Saga definition when the handler is a saga runner's entry point
    cache_ttl: float | None = None  # queries: seconds a requester may serve the reply cached

    @property
    def name(self) -> str:
        """``service.function`` (or ``service.saga:<name>``) as it appears in logs and errors."""
        if self.saga is not None:
            return f"{self.service}.saga:{self.saga.name}"
        return f"{self.service}.{self.func.__name__}"

    @property
    def where(self) -> str:
        """``module:qualname`` of the function, to find it in the code."""
        return f"{self.func.__module__}:{self.func.__qualname__}"


class Service:
    """A named group of handlers that share queues' naming and consumer settings.

    Args:
        name: lowercase service name; part of every queue name.
        retry: default retry policy for this service's command and event handlers.
        timeout: default handler deadline in seconds.
        prefetch: default unacked deliveries per handler queue.
        schema: the service's own tables, a component of the app's versioned schema named after
            the service (``framework.store.migrations``): SQL strings are its step 1
            (``CREATE TABLE IF NOT EXISTS ...``), or a list of ``Step(...)``, oldest first; a
            later change is a new step. ``leveret db upgrade`` applies them.
        max_length: cap each of the service's queues at this many ready messages; a full queue
            nacks publishes (``reject-publish``), which trips the senders' circuit breakers.
        sends: the commands and events its handlers send or publish; they become the
            service's send operations in ``leveret asyncapi``, and the test harness checks
            that the service emits nothing else.

    Raises:
        RegistrationError: the name is malformed, or ``sends`` holds something that is not a
            command or event contract.
    """

    def __init__(
        self,
        name: str,
        *,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        prefetch: int | None = None,
        schema: Sequence[str] | Sequence[Step] = (),
        sends: Sequence[type[Message]] = (),
        max_length: int | None = None,
    ) -> None:
        if not _SERVICE_NAME.match(name):
            raise RegistrationError(
                f"service name {name!r} is not valid: use lowercase letters, digits, '_' and '-', "
                "starting with a letter"
            )
        self.name = name
        self.retry = retry
        self.timeout = timeout
        self.prefetch = prefetch
        self.migrations: tuple[Migrations, ...] = ()
        if schema:
            self.add_schema(Migrations.of(name, schema))
        if max_length is not None and (isinstance(max_length, bool) or max_length < 1):
            raise RegistrationError(f"max_length={max_length!r} must be a positive int or None")
        self.max_length = max_length
        self.sends = tuple(dict.fromkeys(sends))
        for cls in self.sends:
            if kind_of(cls) not in (MessageKind.COMMAND, MessageKind.EVENT):
                raise RegistrationError(
                    f"Service({name!r}, sends=...) lists {cls.__qualname__}, a "
                    f"{kind_of(cls).value}: list the commands and events the service emits"
                )
            validate_contract(cls)
        self._handlers: dict[type[Message], HandlerSpec] = {}
        self.sagas: list[Any] = []
        self.projections: list[Any] = []  # framework.cqrs.Projection, added by its constructor

    def __repr__(self) -> str:
        return f"Service({self.name!r}, handlers={len(self._handlers)})"

    def add_schema(self, migrations: Migrations) -> None:
        """Add a component to the tables the service needs (a projection adds its own).

        Raises:
            RegistrationError: the service has a different component of that name already.
        """
        for known in self.migrations:
            if known.name == migrations.name:
                if known != migrations:
                    raise RegistrationError(
                        f"service {self.name!r} has two different schemas named {migrations.name!r}"
                    )
                return
        self.migrations = (*self.migrations, migrations)

    @property
    def handlers(self) -> list[HandlerSpec]:
        return list(self._handlers.values())

    @overload
    def command(self, func: F, /) -> F: ...
    @overload
    def command(
        self,
        *,
        retry: RetryPolicy | None = ...,
        timeout: float | None = ...,
        prefetch: int | None = ...,
        transactional: bool = ...,
    ) -> Callable[[F], F]: ...
    def command(  # type: ignore[misc]  # options are checked in _decorate
        self, func: F | None = None, /, **options: Any
    ) -> F | Callable[[F], F]:
        """Register the handler of a Command (exactly one per command across the app).

        ``transactional=True`` runs it in a store transaction with inbox dedupe: its SQL on
        ``ctx.tx`` and the messages it sends commit together (see ``App(db_url=)``).
        """
        return self._decorate(MessageKind.COMMAND, "command", func, options)

    @overload
    def event(self, func: F, /) -> F: ...
    @overload
    def event(
        self,
        *,
        retry: RetryPolicy | None = ...,
        timeout: float | None = ...,
        prefetch: int | None = ...,
        transactional: bool = ...,
    ) -> Callable[[F], F]: ...
    def event(  # type: ignore[misc]  # options are checked in _decorate
        self, func: F | None = None, /, **options: Any
    ) -> F | Callable[[F], F]:
        """Subscribe this service to an Event (its own queue; its workers compete)."""
        return self._decorate(MessageKind.EVENT, "event", func, options)

    @overload
    def query(self, func: F, /) -> F: ...
    @overload
    def query(
        self,
        *,
        timeout: float | None = ...,
        prefetch: int | None = ...,
        cache_ttl: float | None = ...,
    ) -> Callable[[F], F]: ...
    def query(  # type: ignore[misc]  # options are checked in _decorate
        self, func: F | None = None, /, **options: Any
    ) -> F | Callable[[F], F]:
        """Register the read-only handler of a Query; it returns the query's reply.

        ``cache_ttl=S`` lets the requesting side serve a reply from its cache for ``S`` seconds
        to requests with the same fields (the reply carries the TTL; each ``Bus`` caches).
        """
        if "retry" in options:
            raise RegistrationError(
                "queries are not retried (the caller is waiting): drop `retry=` from @query"
            )
        return self._decorate(MessageKind.QUERY, "query", func, options)

    def saga(self, saga: Any, *, retry: RetryPolicy | None = None) -> Any:
        """Run a saga definition in this service: it handles its start message and replies.

        The saga becomes the handler of every message type it consumes (its start command counts
        as that command's one handler). Returns the built definition.
        """
        from framework.saga.definition import Saga

        if not isinstance(saga, Saga):
            raise RegistrationError(f"{saga!r} is not a framework.saga.Saga")
        built = saga.build()

        async def run_saga(msg: Message, ctx: Any) -> None:  # replaced by the app's runner
            raise RegistrationError(f"saga {built.name!r} runs only inside an App")

        for message_type in built.message_types:
            validate_contract(message_type)
            existing = self._handlers.get(message_type)
            if existing is not None:
                raise RegistrationError(
                    f"saga {built.name!r} consumes {message_type.__qualname__}, which "
                    f"{existing.where} already handles in service {self.name!r}"
                )
            spec = HandlerSpec(
                service=self.name,
                kind=kind_of(message_type),
                message_type=message_type,
                func=run_saga,
                takes_context=True,
                retry=retry,
                timeout=None,
                prefetch=None,
                saga=built,
            )
            self._check_one_version(spec)
            self._handlers[message_type] = spec
        self.sagas.append(built)
        return built

    def _check_one_version(self, spec: HandlerSpec) -> None:
        """One queue per wire name per service, so one handled version of each."""
        wire_name = spec.message_type.__wire_name__
        for other in self._handlers.values():
            if other.message_type.__wire_name__ == wire_name:
                raise RegistrationError(
                    f"{spec.where} handles {wire_name!r} version "
                    f"{spec.message_type.__wire_version__} and {other.where} version "
                    f"{other.message_type.__wire_version__}, in one service (one queue per "
                    "wire name): handle the newest version and declare an upcaster from "
                    "the older one"
                )

    def _decorate(
        self, kind: MessageKind, decorator: str, func: F | None, options: dict[str, Any]
    ) -> F | Callable[[F], F]:
        unknown = set(options) - {"retry", "timeout", "prefetch", "transactional", "cache_ttl"}
        if unknown:
            raise RegistrationError(
                f"@{self.name}.{decorator} got unknown options {sorted(unknown)}: "
                "accepted are retry, timeout, prefetch, transactional, cache_ttl (queries)"
            )
        if options.get("cache_ttl") is not None and kind is not MessageKind.QUERY:
            raise RegistrationError(
                f"@{self.name}.{decorator}(cache_ttl=...): only query replies can be cached; "
                "commands and events always reach their handlers"
            )
        _check_option(options.get("timeout"), "timeout", float)
        _check_option(options.get("cache_ttl"), "cache_ttl", float)
        _check_option(options.get("prefetch"), "prefetch", int)

        def register(f: F) -> F:
            spec = self._spec(kind, decorator, f, options)
            existing = self._handlers.get(spec.message_type)
            if existing is not None:
                raise RegistrationError(
                    f"{spec.where} and {existing.where} both handle "
                    f"{spec.message_type.__qualname__} in service {self.name!r}: keep one"
                )
            self._check_one_version(spec)
            self._handlers[spec.message_type] = spec
            return f

        return register(func) if func is not None else register

    def _spec(
        self, kind: MessageKind, decorator: str, func: F, options: dict[str, Any]
    ) -> HandlerSpec:
        where = f"{getattr(func, '__module__', '?')}:{getattr(func, '__qualname__', func)!s}"
        if not inspect.iscoroutinefunction(func):
            raise RegistrationError(
                f"{where} is registered with @{self.name}.{decorator} but is not an "
                "`async def` function"
            )
        params = list(inspect.signature(func).parameters.values())
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if not positional or len(positional) > 2:
            raise RegistrationError(
                f"{where} must take the message and optionally the context: "
                f"`async def {func.__name__}(msg: MyMessage, ctx: Context)`"
            )
        try:
            hints = typing.get_type_hints(func)
        except NameError as exc:
            raise RegistrationError(
                f"{where}: cannot resolve its annotations ({exc}); import the types at module level"
            ) from None
        message_type = hints.get(positional[0].name)
        if message_type is None:
            raise RegistrationError(
                f"{where} has no annotation on its first parameter {positional[0].name!r}: "
                f"annotate it with the {decorator} class it handles"
            )
        try:
            actual = kind_of(message_type)
        except RegistrationError:
            raise RegistrationError(
                f"{where}: the first parameter is annotated {message_type!r}, which is not a "
                f"message contract: annotate it with a framework.{kind.name.title()} subclass"
            ) from None
        if actual is not kind:
            hint = (
                f"use @{self.name}.{actual.value}"
                if actual is not MessageKind.REPLY
                else "replies are received by `request`, not by handlers"
            )
            raise RegistrationError(
                f"{where} is registered with @{self.name}.{decorator} but "
                f"{message_type.__qualname__} is a {actual.value.title()}: {hint}"
            )
        validate_contract(message_type)
        _check_return(where, kind, message_type, hints.get("return", inspect.Signature.empty))
        if options.get("transactional") and (kind is MessageKind.QUERY or len(positional) != 2):
            raise RegistrationError(
                f"{where}: transactional=True needs a command or event handler that takes the "
                "context (`ctx.tx` is its transaction)"
            )
        return HandlerSpec(
            service=self.name,
            kind=kind,
            message_type=message_type,
            func=func,
            takes_context=len(positional) == 2,
            retry=options.get("retry"),
            timeout=options.get("timeout"),
            prefetch=options.get("prefetch"),
            transactional=bool(options.get("transactional", False)),
            cache_ttl=options.get("cache_ttl"),
        )


def _check_option(value: Any, name: str, typ: type) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise RegistrationError(f"handler option {name}={value!r} must be a positive number")
    if typ is int and not isinstance(value, int):
        raise RegistrationError(f"handler option {name}={value!r} must be a positive int")


def _check_return(where: str, kind: MessageKind, message_type: type[Message], ret: Any) -> None:
    if ret is inspect.Signature.empty:
        return
    if kind is MessageKind.QUERY:
        reply = reply_type_of(message_type)
        if ret is not reply:
            raise RegistrationError(
                f"{where} handles {message_type.__qualname__}, whose reply is "
                f"{reply.__qualname__}, but is annotated to return {ret!r}"
            )
    elif ret is not type(None):
        raise RegistrationError(
            f"{where} handles the {kind.value} {message_type.__qualname__} and must return "
            f"None (annotated {ret!r}): {kind.value} handlers return nothing; use a Query "
            "to read data"
        )


def check_unique_handlers(services: Iterable[Service]) -> list[HandlerSpec]:
    """All handlers of an app, checking each command and query has exactly one.

    Raises:
        RegistrationError: two services handle the same command or query, or two services
            share a name.
    """
    by_name: dict[str, Service] = {}
    # By wire name: two versions of one command are still one routing key.
    owners: dict[str, HandlerSpec] = {}
    specs: list[HandlerSpec] = []
    for service in services:
        if service.name in by_name and by_name[service.name] is not service:
            raise RegistrationError(f"two services are named {service.name!r}: rename one")
        by_name[service.name] = service
        for spec in service.handlers:
            if spec.kind in (MessageKind.COMMAND, MessageKind.QUERY):
                wire_name = spec.message_type.__wire_name__
                other = owners.get(wire_name)
                if other is not None:
                    raise RegistrationError(
                        f"{spec.message_type.__qualname__} is a {spec.kind.value} and must have "
                        f"exactly one handler, but {other.where} (service {other.service!r}) and "
                        f"{spec.where} (service {spec.service!r}) both handle it: remove one"
                    )
                owners[wire_name] = spec
            specs.append(spec)
    return specs
