"""The outgoing side: send commands, publish events, ask queries, with publish middleware.

Publish middleware is an onion like the consume side: ``async def __call__(out, call_next)``
where ``out`` is an ``Outbound``. Circuit breakers plug in here. Queries go through the same
onion (``out.timeout`` is set for them): there ``call_next`` returns the reply delivery, so a
middleware must return what ``call_next`` returned (or a reply of its own, as a fallback does).
As on the consume side, a middleware with ``bind_next(call_next)`` is bound once to the rest of
the onion instead of being wrapped per publish.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeVar, overload

from framework import envelope
from framework.codec import Codec
from framework.errors import ConfigurationError, QueryFailed, QueryTimeout, WrongBus
from framework.logging import redact_text
from framework.messages import Command, Event, Message, MessageKind, Query, Reply, reply_type_of
from framework.observe import Observer
from framework.routing import Naming
from framework.transport.base import Delivery, OutgoingMessage, Transport
from framework.transport.wire import check_encodable

__all__ = ["Answer", "Bus", "Outbound", "PublishMiddleware"]

R = TypeVar("R", bound=Reply)


@dataclass(slots=True)
class Outbound:
    """A message on its way out: the contract, its wire form and where it goes.

    ``timeout`` is set for a query: the seconds its caller waits for the reply;
    ``publish_timeout`` for a send or publish given a deadline of its own (``send(...,
    timeout=)``).
    """

    message: Message
    wire: OutgoingMessage
    exchange: str
    routing_key: str
    mandatory: bool
    timeout: float | None = None
    publish_timeout: float | None = None


# Returns None for a send or publish, the reply Delivery for a query.
PublishNext = Callable[[Outbound], Awaitable[Any]]


class PublishMiddleware(Protocol):
    async def __call__(self, out: Outbound, call_next: PublishNext) -> Any: ...


@dataclass(frozen=True, slots=True)
class Answer(Generic[R]):
    """A query's reply and where it came from (``request(..., with_meta=True)``).

    Args:
        reply: the reply.
        fallback: None when the handler answered; ``"cache"`` (the last good reply to the same
            query) or ``"default"`` when a circuit breaker's fallback did.
        age: for a cached reply, seconds since it arrived from the handler.
        breaker: the breaker whose fallback answered.
        cause: why the fallback answered: ``breaker_open``, or the failure's type name.
    """

    reply: R
    fallback: str | None = None
    age: float | None = None
    breaker: str | None = None
    cause: str | None = None

    @property
    def from_fallback(self) -> bool:
        """Whether a fallback answered instead of the query's handler."""
        return self.fallback is not None


class Requester:
    """``request``, typed once for ``Bus`` and ``App``; a subclass implements ``_request``."""

    __slots__ = ()

    @overload
    async def request(
        self,
        query: Query[R],
        *,
        timeout: float | None = ...,
        with_meta: Literal[False] = ...,
        **meta: Any,
    ) -> R: ...

    @overload
    async def request(
        self, query: Query[R], *, timeout: float | None = ..., with_meta: Literal[True], **meta: Any
    ) -> Answer[R]: ...

    @overload
    async def request(
        self, query: Query[R], *, timeout: float | None = ..., with_meta: bool, **meta: Any
    ) -> R | Answer[R]: ...

    async def request(
        self, query: Query[R], *, timeout: float | None = None, with_meta: bool = False, **meta: Any
    ) -> R | Answer[R]:
        """Ask a query and wait for its reply (or serve it from the bus's cache, see
        ``cache_ttl``).

        With ``with_meta=True`` the reply comes wrapped in an ``Answer`` that says whether a
        circuit breaker's fallback gave it (and how old a cached reply is).

        Raises:
            WrongBus: ``query`` is not a Query.
            QueryTimeout: no reply within ``timeout`` seconds.
            QueryFailed: the handler raised; the reply carries its error.
            Unroutable: no service answers this query.
            BreakerOpen: the query's circuit breaker is open and it has no fallback.
        """
        return await self._request(query, timeout, with_meta, meta)

    async def _request(
        self, query: Query[R], timeout: float | None, with_meta: bool, meta: dict[str, Any]
    ) -> R | Answer[R]:
        raise NotImplementedError


class Bus(Requester):
    """Sends, publishes and requests on behalf of an app and its handlers.

    Args:
        transport: the connected broker port.
        codec: encodes contracts; reply types are added on first request.
        naming: exchange names.
        middleware: publish middleware, outermost first.
        query_timeout: default seconds to wait for a reply.
        query_transport: where queries and their replies go when the query side connects with
            its own credentials; None means ``transport``.
        clock: seconds for the reply cache (monotonic by default; inject a fake in tests).
        cache_size: most cached replies kept; the oldest entry goes first.
    """

    def __init__(
        self,
        transport: Transport,
        codec: Codec,
        naming: Naming,
        *,
        middleware: Sequence[PublishMiddleware] = (),
        query_timeout: float = 5.0,
        query_transport: Transport | None = None,
        clock: Callable[[], float] = time.monotonic,
        cache_size: int = 1024,
    ) -> None:
        self.transport = transport
        self.query_transport = query_transport
        self.clock = clock
        self._cache_size = cache_size
        # (query wire name, encoded query) -> (expires at, reply); only replies with a TTL.
        self._cache: dict[tuple[str, bytes], tuple[float, Reply]] = {}
        self._codec = codec
        self._naming = naming
        self._query_timeout = query_timeout
        self._exchanges = {
            MessageKind.COMMAND: naming.commands,
            MessageKind.EVENT: naming.events,
            MessageKind.QUERY: naming.queries,
        }
        self._publish: PublishNext = self._publish_raw
        for mw in reversed(middleware):
            self._publish = _wrap(mw, self._publish)
        # Told about every send, publish and request (``framework.observe``); None is free.
        self.observer: Observer | None = None

    async def _publish_raw(self, out: Outbound) -> Delivery | None:
        if out.timeout is not None:
            return await (self.query_transport or self.transport).request(
                out.wire, exchange=out.exchange, routing_key=out.routing_key, timeout=out.timeout
            )
        await self.transport.publish(
            out.wire,
            exchange=out.exchange,
            routing_key=out.routing_key,
            mandatory=out.mandatory,
            timeout=out.publish_timeout,
        )
        return None

    async def send(self, command: Command, *, timeout: float | None = None, **meta: Any) -> str:
        """Send a command to the one service that handles it; returns its message id.

        Returns once the broker confirmed it. If the connection is lost before the confirm (or
        is down when called), the send waits for it to come back and sends the message again
        with the same message id, until ``timeout`` seconds have passed (the transport's
        ``publish_timeout`` by default, 10 s); a consumer's inbox drops a copy that arrives
        twice.

        Raises:
            WrongBus: ``command`` is not a Command.
            NotEncodable: AMQP cannot carry it (a ``message_id`` or ``correlation_id`` over 255
                bytes, a header value such as a UUID or a set); nothing was sent.
            Unroutable: no service handles it (nothing is bound to its name).
            PublishTimeout: not confirmed within ``timeout``; its ``may_be_delivered`` is False
                when nothing went out, else send it again with the same ``message_id``.
        """
        return await self._emit(command, MessageKind.COMMAND, "send", meta, timeout)

    async def publish(self, event: Event, *, timeout: float | None = None, **meta: Any) -> str:
        """Publish an event to every subscribed service; returns its message id.

        ``timeout`` bounds the wait for the broker's confirm, re-sends after a lost connection
        included, as for ``send``.

        Raises:
            WrongBus: ``event`` is not an Event.
            PublishTimeout: not confirmed within ``timeout`` (see ``send``).
        """
        return await self._emit(event, MessageKind.EVENT, "publish", meta, timeout)

    def check_bus(self, message: Message, verb: str) -> None:
        """Raise WrongBus unless ``verb`` (send/publish) carries ``message``'s kind."""
        expected = MessageKind.COMMAND if verb == "send" else MessageKind.EVENT
        if getattr(type(message), "__kind__", None) is not expected:
            raise WrongBus(_wrong_bus(message, verb))

    async def _emit(
        self,
        message: Message,
        kind: MessageKind,
        verb: str,
        meta: dict[str, Any],
        timeout: float | None = None,
    ) -> str:
        cls = type(message)
        if getattr(cls, "__kind__", None) is not kind:
            raise WrongBus(_wrong_bus(message, verb))
        wire = envelope.build(message, self._codec.encode(message), **meta)
        # A command nobody handles is an error; an event nobody subscribes to is not.
        mandatory = kind is MessageKind.COMMAND
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
        exchange = self._exchanges[kind]
        # A caller's mistake (a message id over 255 bytes, a header AMQP cannot carry), refused
        # before publish middleware: a circuit breaker must not count it against the receiver.
        check_encodable(wire, exchange=exchange, routing_key=cls.__wire_name__)
        out = Outbound(
            message,
            wire,
            exchange,
            cls.__wire_name__,
            mandatory,
            publish_timeout=timeout,
        )
        if self.observer is None:
            await self._publish(out)
        else:
            await self._observed(out, self.observer)
        return wire.message_id

    async def _observed(self, out: Outbound, observer: Observer) -> Any:
        """Publish (or ask) through the middleware, telling ``observer`` before and after."""
        state = observer.publish_started(out.routing_key, out.wire.headers)
        try:
            result = await self._publish(out)
        except BaseException as exc:
            observer.publish_finished(state, out.routing_key, exc)
            raise
        observer.publish_finished(state, out.routing_key, None)
        return result

    async def _request(
        self, query: Query[R], timeout: float | None, with_meta: bool, meta: dict[str, Any]
    ) -> R | Answer[R]:
        cls = type(query)
        if getattr(cls, "__kind__", None) is not MessageKind.QUERY:
            raise WrongBus(_wrong_bus(query, "request"))
        reply_type = reply_type_of(cls)
        self._codec.add(reply_type)
        body = self._codec.encode(query)
        key = (cls.__wire_name__, body)
        cached = self._cache.get(key)
        if cached is not None:
            if cached[0] > self.clock():
                hit: Any = cached[1]  # stored under its query's key: an R
                return Answer(hit) if with_meta else hit
            del self._cache[key]
        wire = envelope.build(query, body, **meta)
        wait = self._query_timeout if timeout is None else timeout
        # A caller's mistake, refused before publish middleware (a breaker must not count it).
        check_encodable(wire, exchange=self._naming.queries, routing_key=cls.__wire_name__)
        out = Outbound(query, wire, self._naming.queries, cls.__wire_name__, True, timeout=wait)
        try:
            reply: Delivery | None = await (
                self._publish(out) if self.observer is None else self._observed(out, self.observer)
            )
        except TimeoutError:
            raise QueryTimeout(cls.__wire_name__, wait) from None
        if reply is None:
            raise ConfigurationError(
                f"a publish middleware returned None for the query {cls.__wire_name__!r}: "
                "queries go through publish middleware too, so write "
                "`return await call_next(out)`"
            )
        error = reply.headers.get(envelope.ERROR)
        if error is not None:
            raise QueryFailed(
                cls.__wire_name__, _text(reply.headers.get(envelope.ERROR_TYPE)), _text(error)
            )
        decoded: Any = self._codec.decode(
            reply.body,
            wire_name=reply.type,
            version=reply.headers.get(envelope.VERSION),
            content_type=reply.content_type,
            into=reply_type,  # an older reply version is upcast, as for handlers
        )  # the codec decoded (and upcast) into the reply type: an R
        ttl_ms = reply.headers.get(envelope.CACHE_TTL_MS)
        if isinstance(ttl_ms, int) and ttl_ms > 0 and isinstance(decoded, Reply):
            self._remember(key, ttl_ms / 1000, decoded)
        if not with_meta:
            return decoded  # type: ignore[no-any-return]  # an R, see above
        fallback = reply.headers.get(envelope.FALLBACK)
        if fallback is None:
            return Answer(decoded)
        return Answer(
            decoded,
            fallback=str(fallback),
            age=reply.headers.get(envelope.FALLBACK_AGE),
            breaker=reply.headers.get(envelope.FALLBACK_BREAKER),
            cause=reply.headers.get(envelope.FALLBACK_CAUSE),
        )

    def _remember(self, key: tuple[str, bytes], ttl: float, reply: Reply) -> None:
        now = self.clock()
        if len(self._cache) >= self._cache_size:
            for stale in [k for k, (expires, _) in self._cache.items() if expires <= now]:
                del self._cache[stale]
            while len(self._cache) >= self._cache_size:
                del self._cache[next(iter(self._cache))]
        self._cache[key] = (now + ttl, reply)

    async def reply(
        self,
        to: str,
        correlation_id: str | None,
        reply: Reply,
        *,
        cache_ttl: float | None = None,
    ) -> None:
        """Publish a query's reply to the caller's reply address.

        ``cache_ttl`` (seconds) tells the caller's Bus how long it may serve the reply cached.
        """
        headers = None if cache_ttl is None else {envelope.CACHE_TTL_MS: round(cache_ttl * 1000)}
        wire = envelope.build(
            reply, self._codec.encode(reply), correlation_id=correlation_id, headers=headers
        )
        wire.persistent = False
        await (self.query_transport or self.transport).publish(
            wire, exchange="", routing_key=to, mandatory=False
        )

    async def reply_error(self, to: str, correlation_id: str | None, exc: BaseException) -> None:
        """Tell the caller its query failed, so it fails at once instead of timing out."""
        wire = OutgoingMessage(
            body=b"",
            message_id=envelope.new_message_id(),
            correlation_id=correlation_id,
            headers={
                envelope.ERROR: redact_text(str(exc))[:1000],  # the caller may log or show it
                envelope.ERROR_TYPE: type(exc).__name__,
            },
            persistent=False,
        )
        await (self.query_transport or self.transport).publish(
            wire, exchange="", routing_key=to, mandatory=False
        )


def _wrap(mw: PublishMiddleware, call_next: PublishNext) -> PublishNext:
    # A middleware may bind itself to the rest of the onion (``bind_next(call_next)``, as the
    # circuit breakers' does): then no wrapper coroutine runs per publish.
    bind_next = getattr(mw, "bind_next", None)
    if bind_next is not None:
        linked: PublishNext = bind_next(call_next)
        return linked

    async def call(out: Outbound) -> Any:
        return await mw(out, call_next)  # a query's reply comes back through the onion

    return call


def _wrong_bus(message: object, verb: str) -> str:
    kind = getattr(type(message), "__kind__", None)
    right = (
        {
            MessageKind.COMMAND: "send",
            MessageKind.EVENT: "publish",
            MessageKind.QUERY: "request",
        }.get(kind)
        if isinstance(kind, MessageKind)
        else None
    )
    name = type(message).__qualname__
    if right is None:
        return f"{name} cannot be passed to {verb}(): it is not a Command, Event or Query"
    return f"{name} is a {kind.value.title()}: use {right}(), not {verb}()"  # type: ignore[union-attr]


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
