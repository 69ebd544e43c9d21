"""Declarations: which downstream a breaker guards, and what happens while it is open.

A ``Downstream`` names the messages it covers — a service (its commands and queries, by the
first segment of their wire names), AMQP topic patterns on the routing key, or contract classes —
and says what a send does while its breaker is open (``WhenOpen``) and which fallback answers its
queries (``CachedReply``, ``DefaultReply``).
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from framework.errors import ConfigurationError
from framework.messages import Message, MessageKind, Query, Reply, reply_type_of
from framework.resilience.config import BreakerConfig
from framework.transport.base import topic_match

__all__ = ["CachedReply", "DefaultReply", "Downstream", "Fallback", "WhenOpen"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_PATTERN_WORD = re.compile(r"^(\*|#|[A-Za-z0-9_-]+)$")


class WhenOpen(enum.StrEnum):
    """What a send or publish from outside a handler does while its breaker refuses it.

    Inside a handler a refused send always raises ``BreakerOpen`` at once, so the handler's
    message can be retried or deferred (``defer_when_open``) instead of holding a consumer slot.
    """

    RAISE = "raise"  # raise BreakerOpen at once
    WAIT = "wait"  # wait until the breaker lets it through (and retry nacks), up to max_wait


@dataclass(frozen=True, slots=True)
class CachedReply:
    """Answer with the last good reply to the same query (same type and same fields).

    Args:
        max_age: seconds a remembered reply may be served; older ones are not.
        max_entries: distinct queries remembered per downstream (least recently used go first).
    """

    max_age: float
    max_entries: int = 1024

    def __post_init__(self) -> None:
        check_cache_bounds(self)


@dataclass(frozen=True, slots=True)
class DefaultReply:
    """Answer with a fixed reply, or one computed from the query (no I/O, please).

    Args:
        value: the reply, or ``query -> reply``.
    """

    value: Reply | Callable[[Any], Reply]

    def reply_for(self, query: Message) -> Reply:
        """The reply for ``query``."""
        value = self.value
        return value if isinstance(value, Reply) else value(query)


Fallback = CachedReply | DefaultReply


@dataclass(frozen=True, slots=True)
class Downstream:
    """One guarded destination: the messages its breaker gates and what happens when it opens.

    Without ``routes`` or ``messages``, ``service`` defaults to ``name``: the commands and
    queries whose wire name starts with ``"<service>."`` (the wire-name convention of the
    contracts). Events are matched only by ``routes`` or ``messages``, since an event's wire name
    names its publisher, not its subscribers. The first matching downstream wins.

    Args:
        name: the breaker's name, in logs, errors, metrics and ``leveret breakers``.
        config: the breaker's thresholds, window and waits.
        service: the downstream service whose commands and queries are gated.
        routes: AMQP topic patterns on the routing key (``*`` one word, ``#`` any number).
        messages: contract classes whose routing keys are gated.
        when_open: what a send from outside a handler does while refused.
        max_wait: seconds a ``WhenOpen.WAIT`` send waits at most before raising BreakerOpen.
        retry_interval: pause before a ``WhenOpen.WAIT`` send retries a nacked or unconfirmed
            publish while the breaker is still closed.
        fallback: what answers this downstream's queries while refused (a fallback or several,
            tried in order).
        fallbacks: per query class, instead of ``fallback``.
        fallback_on_failure: also answer from the fallback when a query fails in a way the
            breaker counts (timeout, unroutable, error reply), not only when it is refused.

    Raises:
        ConfigurationError: a bad name, pattern, fallback, or wait.
    """

    name: str
    config: BreakerConfig = field(default_factory=BreakerConfig)
    service: str | None = None
    routes: tuple[str, ...] = ()
    messages: tuple[type[Message], ...] = ()
    when_open: WhenOpen = WhenOpen.RAISE
    max_wait: float = 30.0
    retry_interval: float = 0.2
    fallback: Fallback | tuple[Fallback, ...] | None = None
    fallbacks: Mapping[type[Query[Any]], Fallback | tuple[Fallback, ...]] = field(
        default_factory=dict
    )
    fallback_on_failure: bool = True

    def __post_init__(self) -> None:
        where = f"Downstream({self.name!r})"
        check_breaker_name(where, self.name)
        for name in ("routes", "messages"):
            if not isinstance(getattr(self, name), tuple):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.service is None and not self.routes and not self.messages:
            object.__setattr__(self, "service", self.name)
        for pattern in self.routes:
            words = pattern.split(".") if isinstance(pattern, str) else [""]
            if not all(_PATTERN_WORD.match(w) for w in words):
                raise ConfigurationError(
                    f"{where}: route {pattern!r} is not an AMQP topic pattern (dotted words, "
                    "'*' for one word, '#' for any number)"
                )
        for cls in self.messages:
            if not (isinstance(cls, type) and issubclass(cls, Message)):
                raise ConfigurationError(f"{where}: messages must be contract classes: {cls!r}")
        if not isinstance(self.when_open, WhenOpen):
            raise ConfigurationError(f"{where}: when_open must be WhenOpen.RAISE or WhenOpen.WAIT")
        if not (0 < self.max_wait < math.inf):
            raise ConfigurationError(f"{where}: max_wait={self.max_wait!r}: use finite seconds")
        if not self.retry_interval > 0:
            raise ConfigurationError(f"{where}: retry_interval must be > 0 seconds")
        _check_fallback(where, None, self.fallback)
        for query, fallback in self.fallbacks.items():
            if not (
                isinstance(query, type) and getattr(query, "__kind__", None) is MessageKind.QUERY
            ):
                raise ConfigurationError(
                    f"{where}: fallbacks are keyed by Query classes: {query!r}"
                )
            _check_fallback(where, query, fallback)

    def fallback_for(self, query: type[Message]) -> tuple[Fallback, ...]:
        """The fallbacks answering ``query`` while refused, in order (empty: none)."""
        chosen = self.fallback
        for cls, specific in self.fallbacks.items():
            if cls is query:
                chosen = specific
        if chosen is None:
            return ()
        return chosen if isinstance(chosen, tuple) else (chosen,)

    def matches(self, routing_key: str, *, is_event: bool) -> bool:
        """Whether this downstream gates messages published with ``routing_key``."""
        if any(cls.__wire_name__ == routing_key for cls in self.messages):
            return True
        if any(topic_match(p.split("."), routing_key.split(".")) for p in self.routes):
            return True
        return (
            self.service is not None
            and not is_event
            and routing_key.split(".", 1)[0] == self.service
        )


def check_cache_bounds(spec: Any) -> None:
    """Refuse a cache fallback (``CachedReply``, ``CachedResult``) that could never answer.

    Raises:
        ConfigurationError: ``max_age`` or ``max_entries`` is not positive.
    """
    what = type(spec).__name__
    if not spec.max_age > 0:
        raise ConfigurationError(f"{what}.max_age={spec.max_age!r}: use seconds > 0")
    if spec.max_entries < 1:
        raise ConfigurationError(f"{what}.max_entries={spec.max_entries!r}: use >= 1")


def check_breaker_name(where: str, name: object) -> None:
    """Refuse a breaker name that cannot travel in control messages and log lines.

    Raises:
        ConfigurationError: ``name`` is not letters, digits, ``.``, ``-`` and ``_``.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigurationError(
            f"{where}: use a name of letters, digits, '.', '-' and '_' (it is shown in "
            "logs and used in the control exchange)"
        )


def _check_fallback(
    where: str, query: type[Message] | None, fallback: Fallback | Sequence[Fallback] | None
) -> None:
    if fallback is None:
        return
    items = fallback if isinstance(fallback, tuple) else (fallback,)
    for item in items:
        if not isinstance(item, CachedReply | DefaultReply):
            raise ConfigurationError(
                f"{where}: a fallback is CachedReply(max_age=...) or DefaultReply(reply), "
                f"got {item!r}"
            )
        if not isinstance(item, DefaultReply):
            continue
        value: object = item.value
        if not isinstance(value, Message) and not callable(value):
            raise ConfigurationError(
                f"{where}: DefaultReply takes a reply or a function of the query, got {value!r}"
            )
        if query is not None and isinstance(value, Message):
            expected = reply_type_of(query)
            if not isinstance(value, expected):
                raise ConfigurationError(
                    f"{where}: the default reply for {query.__qualname__} must be a "
                    f"{expected.__qualname__}, got {type(item.value).__qualname__}"
                )
