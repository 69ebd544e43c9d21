"""Event-sourced aggregates: state rebuilt from a stream, changes recorded as events.

An aggregate is a plain class with one ``@applies`` method per event type; the method changes the
state and does nothing else, so replaying the stream gives the state back::

    class Stock(Aggregate):
        category = "inventory.stock"  # its stream is "inventory.stock-<id>"
        snapshot_every = 100

        def __init__(self, id: str) -> None:
            super().__init__(id)
            self.on_hand = 0

        def reserve(self, order_id: str, qty: int) -> None:  # a decision: check, then record
            if qty > self.on_hand:
                raise OutOfStock(self.id)
            self.record(StockReserved(sku=self.id, order_id=order_id, qty=qty))

        @applies
        def _reserved(self, event: StockReserved) -> None:  # a fact: apply, never refuse
            self.on_hand -= event.qty

In a ``transactional=True`` handler, ``await Stock.load(ctx, "apple")`` reads the stream (from
its latest snapshot on), and ``await save(ctx, stock, ...)`` appends what was recorded with a
version check, then queues the same events in the handler's outbox and writes a snapshot when one
is due, all in the handler's transaction: the events are stored and published, or neither.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, Self, TypeVar

import msgspec

from framework.codec import Codec
from framework.context import Context
from framework.errors import ConfigurationError, DecodeFailure, RegistrationError
from framework.eventsourcing.store import (
    EventStoreError,
    NewEvent,
    Snapshot,
    StoredEvent,
    StreamAppend,
    event_store,
)
from framework.messages import Event, MessageKind, kind_of
from framework.store.base import StoreTx
from framework.upcasting import Upcaster

__all__ = ["Aggregate", "EventDecoder", "applies", "save"]

F = TypeVar("F", bound=Callable[..., None])

_APPLIES = "__leveret_applies__"
# Stored events were accepted once; a lower body limit added later must not hide history.
_STORED_BODY_LIMIT = 1 << 30
_encode = msgspec.json.Encoder().encode


def applies(method: F) -> F:
    """Mark ``method(self, event: SomeEvent) -> None`` as the way the aggregate applies
    ``SomeEvent``; the type comes from the annotation."""
    setattr(method, _APPLIES, True)
    return method


class EventDecoder:
    """Reads stored events back into their current classes, upcasting older versions.

    Args:
        types: the event classes to read into (the newest version of each wire name).
        upcasters: conversions from older versions, as given to ``App(upcasters=...)``.

    Raises:
        ContractError: a class is not a valid contract, or two upcasters join the same versions.
    """

    def __init__(
        self, types: Iterable[type[Event]], *, upcasters: Iterable[Upcaster[Any, Any]] = ()
    ) -> None:
        self._current: dict[str, type[Event]] = {}
        for cls in types:
            known = self._current.get(cls.__wire_name__)
            if known is None or known.__wire_version__ < cls.__wire_version__:
                self._current[cls.__wire_name__] = cls
        self._codec = Codec(
            self._current.values(), upcasters=upcasters, max_body_size=_STORED_BODY_LIMIT
        )

    def decode(self, stored: StoredEvent) -> Event:
        """The event in its current class.

        Raises:
            EventStoreError: no class here reads its wire name, no upcaster path leads from its
                version to the current one, or its body does not validate; the message names
                the stream, the version and the reason.
        """
        into = self._current.get(stored.wire_name)
        where = f"stream {stored.stream!r} version {stored.version}"
        if into is None:
            raise EventStoreError(
                f"{where}: no event class for {stored.wire_name!r} here (known: "
                f"{', '.join(sorted(self._current)) or 'none'}); add an @applies method for it"
            )
        try:
            event = self._codec.decode(
                stored.body,
                wire_name=stored.wire_name,
                version=stored.wire_version,
                content_type=None,
                into=into,
            )
        except DecodeFailure as exc:
            raise EventStoreError(f"{where}: {exc.reason}") from None
        return typing.cast(Event, event)


class Aggregate:
    """Base of event-sourced aggregates: state from events, new events recorded for ``save``.

    Class settings:
        category: names the streams: ``f"{category}-{id}"`` (required).
        upcasters: conversions from older versions of its events (the app's upcasters).
        snapshot_every: write a snapshot each time the version passes a multiple of it
            (``None``: never); needs ``snapshot_type``, ``snapshot()`` and ``restore()``.
        snapshot_type: the msgspec type ``snapshot()`` returns.
        snapshot_version: bump it when ``snapshot_type`` changes: older snapshots are then
            ignored and the stream replayed.

    Attributes:
        id: the aggregate's id.
        version: the stream version its state reflects, not counting recorded events.
    """

    category: ClassVar[str] = ""
    upcasters: ClassVar[tuple[Upcaster[Any, Any], ...]] = ()
    snapshot_every: ClassVar[int | None] = None
    snapshot_type: ClassVar[Any] = None
    snapshot_version: ClassVar[int] = 1
    _appliers: ClassVar[dict[type[Event], Callable[[Any, Any], None]]] = {}
    _decoder: ClassVar[EventDecoder]
    _snapshot_decoder: ClassVar[msgspec.json.Decoder[Any] | None] = None

    def __init__(self, id: str) -> None:
        self.id = id
        self.version = 0
        self._recorded: list[Event] = []

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Collect the ``@applies`` methods and build the decoder, once per class."""
        super().__init_subclass__(**kwargs)
        appliers: dict[type[Event], Callable[[Any, Any], None]] = {}
        for klass in reversed(cls.__mro__):
            for name, member in vars(klass).items():
                if getattr(member, _APPLIES, False):
                    appliers[_applied_type(klass, name, member)] = member
        cls._appliers = appliers
        cls._decoder = EventDecoder(appliers, upcasters=cls.upcasters)
        if cls.snapshot_every is not None:
            if cls.snapshot_every < 1 or cls.snapshot_type is None:
                raise RegistrationError(
                    f"{cls.__qualname__}: snapshot_every must be >= 1 and needs snapshot_type "
                    "(the msgspec type snapshot() returns)"
                )
            cls._snapshot_decoder = msgspec.json.Decoder(cls.snapshot_type)

    @property
    def stream(self) -> str:
        """The aggregate's stream name."""
        return f"{type(self).category}-{self.id}"

    @property
    def recorded(self) -> tuple[Event, ...]:
        """Events recorded since the last load or save."""
        return tuple(self._recorded)

    def record(self, event: Event) -> None:
        """Apply ``event`` now and keep it for ``save``.

        Raises:
            ConfigurationError: the aggregate has no ``@applies`` method for its type.
        """
        self.apply(event)
        self._recorded.append(event)

    def apply(self, event: Event) -> None:
        """Change the state by one event (loading replays the stream through this)."""
        method = self._appliers.get(type(event))
        if method is None:
            raise ConfigurationError(
                f"{type(self).__qualname__} has no @applies method for "
                f"{type(event).__qualname__}: add one"
            )
        method(self, event)

    def snapshot(self) -> Any:
        """The state as a ``snapshot_type`` value (for aggregates with snapshots)."""
        raise ConfigurationError(f"{type(self).__qualname__} must define snapshot()")

    def restore(self, snapshot: Any) -> None:
        """Set the state from a ``snapshot_type`` value (for aggregates with snapshots)."""
        raise ConfigurationError(f"{type(self).__qualname__} must define restore()")

    @classmethod
    def stream_of(cls, id: str) -> str:
        """The stream name of the aggregate with ``id``."""
        return f"{cls.category}-{id}"

    @classmethod
    async def load(cls, source: Context | StoreTx, id: str, *, lock: bool = True) -> Self:
        """The aggregate as its stream has it, in the transaction of ``source``.

        Starts from the latest snapshot when there is a usable one, then applies the events
        after it. ``lock`` (default) holds the stream until the transaction ends, so that on
        PostgreSQL concurrent writers of one aggregate queue up instead of conflicting; load
        every aggregate a handler changes before saving any.

        Raises:
            ConfigurationError: ``source`` is a context without a transaction, or the class has
                no ``category``.
            EventStoreError: a stored event cannot be decoded.
        """
        tx = _tx_of(source, "load")
        if not cls.category:
            raise ConfigurationError(f"{cls.__qualname__} needs a category (its stream prefix)")
        store = event_store(tx)
        aggregate = cls(id)
        stream = aggregate.stream
        if lock:
            await store.stream_version(tx, stream, lock=True)
        if cls._snapshot_decoder is not None:
            snapshot = await store.load_snapshot(tx, stream)
            if snapshot is not None and _usable(cls, snapshot):
                aggregate.restore(cls._snapshot_decoder.decode(snapshot.state))
                aggregate.version = snapshot.version
        for stored in await store.read_stream(tx, stream, from_version=aggregate.version + 1):
            aggregate.apply(cls._decoder.decode(stored))
            aggregate.version = stored.version
        return aggregate


async def save(ctx: Context, *aggregates: Aggregate) -> list[StoredEvent]:
    """Append what each aggregate recorded, then publish it, in the handler's transaction.

    Each aggregate's events go to its stream with the version it was loaded at as the expected
    one. Once every append has succeeded, each event is queued in the handler's outbox as it is
    (published after the commit) under the stored event's id,
    ``<message id>/<handler>/<stream>@<version>/<tag>`` (the tag keyed with the app's secret,
    see ``Context.event_id``); snapshots that fall due are written too. One
    call for all the aggregates a handler changed: their streams are locked in one order.

    Raises:
        StreamConflict: another writer appended to one of the streams since it was loaded;
            nothing was queued. Let it leave the handler: the transaction rolls back and the
            handler runs again in a fresh one (five times, then its retry policy).
        ConfigurationError: ``ctx`` is not the context of a ``transactional=True`` handler.
    """
    tx = _tx_of(ctx, "save")
    changed = [aggregate for aggregate in aggregates if aggregate._recorded]
    appends = [
        StreamAppend(
            stream=aggregate.stream,
            expected_version=aggregate.version,
            events=[
                NewEvent(
                    event_id=ctx.event_id(f"{aggregate.stream}@{version}"),
                    wire_name=event.__wire_name__,
                    wire_version=event.__wire_version__,
                    body=_encode(event),
                    correlation_id=ctx.correlation_id,
                    causation_id=ctx.message_id,
                )
                for version, event in enumerate(aggregate._recorded, start=aggregate.version + 1)
            ],
        )
        for aggregate in changed
    ]
    store = event_store(tx)
    stored = await store.append_many(tx, appends)
    ids = iter(stored)
    for aggregate in changed:
        for event in aggregate._recorded:
            await ctx.publish(event, message_id=next(ids).event_id)
        before = aggregate.version
        aggregate.version += len(aggregate._recorded)
        aggregate._recorded.clear()
        every = type(aggregate).snapshot_every
        if every is not None and aggregate.version // every > before // every:
            await store.save_snapshot(
                tx,
                Snapshot(
                    stream=aggregate.stream,
                    version=aggregate.version,
                    kind=_kind(type(aggregate)),
                    schema_version=type(aggregate).snapshot_version,
                    state=_encode(aggregate.snapshot()),
                ),
            )
    return stored


def _tx_of(source: Context | StoreTx, what: str) -> StoreTx:
    if isinstance(source, StoreTx):
        if what == "save":
            raise ConfigurationError("save() takes the handler's Context, whose outbox it fills")
        return source
    tx = getattr(source, "tx", None)  # a query handler's context has none at all
    if not isinstance(tx, StoreTx):
        raise ConfigurationError(
            f"{what}() needs the transaction of a transactional handler: declare it with "
            "@svc.command(transactional=True) or @svc.event(transactional=True)"
        )
    return tx


def _kind(cls: type[Aggregate]) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _usable(cls: type[Aggregate], snapshot: Snapshot) -> bool:
    return snapshot.kind == _kind(cls) and snapshot.schema_version == cls.snapshot_version


def _applied_type(owner: type, name: str, method: Any) -> type[Event]:
    where = f"{owner.__module__}:{owner.__qualname__}.{name}"
    try:
        hints = typing.get_type_hints(method)
    except NameError as exc:
        raise RegistrationError(
            f"{where}: cannot resolve its annotations ({exc}); import the event at module level"
        ) from None
    params = [p for p in hints if p != "return"]
    event_type = hints.get(params[0]) if params else None
    if not isinstance(event_type, type) or not _is_event(event_type):
        raise RegistrationError(
            f"{where}: annotate its event parameter with the Event class it applies: "
            f"`def {name}(self, event: MyEvent) -> None`"
        )
    return typing.cast(type[Event], event_type)


def _is_event(cls: type) -> bool:
    try:
        return kind_of(cls) is MessageKind.EVENT
    except RegistrationError:
        return False
