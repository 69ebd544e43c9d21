"""Saga definitions: pure state machines over a frozen state Struct.

A saga reacts to messages: ``(instance, message) -> Transition`` — the new state, the messages to
emit, the status, and an optional deadline for the state it enters. Nothing here does I/O; the
runner (``framework.saga.runner``) loads, applies, saves and publishes.

Two ways to write one. The step form covers the linear case::

    saga = Saga("order", state=OrderState, start=PlaceOrder, key="order_id", init=new_order)
    saga.step("reserve", send=reserve, success=InventoryReserved, failure=InventoryRejected,
              compensate=release, compensated=InventoryReleased)
    saga.step("charge", ...)
    saga.step("ship", ..., kind=StepKind.PIVOT)

The general form adds arbitrary transitions (branches, parallel waits, timeouts)::

    @saga.on(PaymentCharged, in_states=("charging",), to=("shipping",))
    def charged(inst, msg): return inst.goto("shipping", emit=[...])

``saga.build()`` validates the whole definition and raises ``SagaDefinitionError`` naming the saga,
the step or state, and what to add.
"""

from __future__ import annotations

import enum
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import msgspec

from framework.backoff import Backoff
from framework.errors import RegistrationError
from framework.messages import Command, Event, Message, MessageKind, kind_of
from framework.store.base import SagaStatus

__all__ = [
    "Instance",
    "Saga",
    "SagaDefinitionError",
    "SagaTimeout",
    "StepKind",
    "Transition",
]

S = TypeVar("S", bound=msgspec.Struct)
M = TypeVar("M", bound=Message)

START = "start"

# The least wait for a compensation's confirmation (``Saga.compensation_timeout``). A burst's
# compensations wait behind the work queued before them: with 300 orders placed at once (queues
# full, then two workers) their round trips reached 1.1 s on SQLite and 5.8 s on PostgreSQL.
# Five sends must also end in ``compensation_failed`` soon enough to be seen (here 56 s).
DEFAULT_COMPENSATION_TIMEOUT = 10.0


class SagaDefinitionError(RegistrationError):
    """A saga definition is incomplete or inconsistent; the message says what to add."""


class StepKind(enum.StrEnum):
    """How a step fails.

    ``COMPENSATABLE`` steps are undone by their compensation when a later step fails.
    ``PIVOT`` is the point of no return: once it succeeds nothing before it is compensated, and
    every later step must be ``RETRIABLE`` (retried with a policy until it succeeds).
    """

    COMPENSATABLE = "compensatable"
    PIVOT = "pivot"
    RETRIABLE = "retriable"


class SagaTimeout(Command):
    """Delivered to a saga when the deadline of the state it waits in passes.

    Each saga gets its own subclass (wire name ``saga.<saga>.timeout``); ``armed_version`` is the
    instance version that set the deadline, so a timeout for a state left since is ignored.
    ``token`` proves the framework armed it (an HMAC of the saga, instance, state and version
    under the app's secret, ``framework.saga.signing``): the runner dead-letters a timeout whose
    token does not verify as ``forged_timeout``. It has a default only so that the contract stays
    readable by what was deployed before it; a timeout without one is refused all the same.
    """

    saga_id: str
    state: str
    armed_version: int
    token: str = ""


@dataclass(frozen=True, slots=True)
class Instance(Generic[S]):
    """What a transition sees: the user state plus the saga's own bookkeeping."""

    saga_id: str
    state: str
    data: S
    completed: tuple[str, ...] = ()
    attempt: int = 0
    reason: str | None = None

    def goto(
        self,
        state: str,
        *,
        data: S | None = None,
        emit: Sequence[Message] = (),
        timeout: float | None = None,
        completed: tuple[str, ...] | None = None,
        attempt: int = 0,
        reason: str | None = None,
        status: SagaStatus = SagaStatus.RUNNING,
    ) -> Transition[S]:
        """A transition to ``state`` (with a deadline in ``timeout`` seconds if given)."""
        return Transition(
            state=state,
            data=self.data if data is None else data,
            emit=tuple(emit),
            status=status,
            timeout=timeout,
            completed=self.completed if completed is None else completed,
            attempt=attempt,
            reason=reason if reason is not None else self.reason,
        )

    def finish(
        self,
        status: SagaStatus,
        *,
        data: S | None = None,
        emit: Sequence[Message] = (),
        reason: str | None = None,
    ) -> Transition[S]:
        """A transition into a terminal status (its state name is the status)."""
        return self.goto(str(status), data=data, emit=emit, reason=reason, status=status)


@dataclass(frozen=True, slots=True)
class Transition(Generic[S]):
    """The outcome of one message: where the saga goes and what it emits."""

    state: str
    data: S
    emit: tuple[Message, ...]
    status: SagaStatus
    timeout: float | None
    completed: tuple[str, ...]
    attempt: int
    reason: str | None

    @property
    def finished(self) -> bool:
        return self.status.terminal


Handler = Callable[[Instance[Any], Any], Transition[Any]]


@dataclass(frozen=True, slots=True)
class _Rule:
    message_type: type[Message]
    in_states: frozenset[str]
    to: frozenset[str]
    fn: Handler
    origin: str


@dataclass(frozen=True, slots=True)
class RetryBackoff:
    """Resend policy for retriable steps and compensations.

    For a compensation the wait after each send is also at least the step's
    ``compensation_timeout`` (see ``Saga.step``).

    Args:
        attempts: sends in all before giving up.
        first: seconds before the first resend; each next one waits ``factor`` times longer,
            at most ``maximum`` (a ``framework.backoff.Backoff`` without jitter).

    Raises:
        ConfigurationError: a negative ``first``, a ``factor`` below 1 or a ``maximum`` below
            ``first``.
    """

    attempts: int = 5
    first: float = 1.0
    factor: float = 2.0
    maximum: float = 60.0
    _growth: Backoff = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        growth = Backoff(initial=self.first, multiplier=self.factor, maximum=self.maximum, jitter=0)
        object.__setattr__(self, "_growth", growth)

    def delay(self, attempt: int) -> float:
        """Seconds to wait after send number ``attempt`` (1: the first send)."""
        return self._growth.delay(attempt)


@dataclass(frozen=True, slots=True)
class Step:
    """One step of the step form. See ``Saga.step``."""

    name: str
    send: Callable[[Any], Command]
    success: tuple[type[Event], ...]
    failure: tuple[type[Event], ...]
    compensate: Callable[[Any], Command] | None
    compensated: tuple[type[Event], ...]
    kind: StepKind
    timeout: float | None
    on_success: Callable[[Any, Any], Any] | None
    retry: RetryBackoff
    compensation_timeout: float | None = None


@dataclass
class Saga(Generic[S]):
    """A saga definition. Declare steps and rules, then ``build()`` (the App does it).

    Args:
        name: lowercase name; part of saga ids, queue names and the timeout's wire name.
        state: the frozen Struct holding the saga's data.
        start: the message that creates an instance.
        key: the field of the start message (and of replies lacking the saga header) that
            identifies the instance; the saga id is ``<name>-<value>``.
        init: builds the initial state from the start message.
        on_started: messages to emit when an instance starts (with the first step's command).
        on_completed: messages to emit when the last step succeeded.
        on_compensated: messages to emit once every compensation is done, given the state and
            the reason.
        compensation_retry: how compensations are resent when their confirmation is late.
        compensation_timeout: the least seconds to wait for a compensation's confirmation
            before resending it, for the steps that do not set their own (``Saga.step``). The
            default, 10 s, outlasts the queues of a burst: with 300 orders placed at once every
            confirmation came within 6 s, where the former 1 s sent a quarter of the
            compensations twice.
    """

    name: str
    state: type[S]
    start: type[Message]
    key: str
    init: Callable[[Any], S]
    on_started: Callable[[S], Sequence[Message]] | None = None
    on_completed: Callable[[S], Sequence[Message]] | None = None
    on_compensated: Callable[[S, str], Sequence[Message]] | None = None
    compensation_retry: RetryBackoff = field(default_factory=RetryBackoff)
    compensation_timeout: float = DEFAULT_COMPENSATION_TIMEOUT
    steps: list[Step] = field(default_factory=list)
    rules: list[_Rule] = field(default_factory=list)
    timeout_type: type[SagaTimeout] = field(init=False)
    _built: bool = field(default=False, init=False)
    _index: dict[tuple[type[Message], str], _Rule] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        if not self.name.replace("_", "").isalnum() or not self.name[:1].isalpha():
            raise SagaDefinitionError(
                f"saga name {self.name!r} must be lowercase letters, digits and '_'"
            )
        if not self.compensation_timeout > 0:
            raise SagaDefinitionError(
                f"saga {self.name!r}: compensation_timeout={self.compensation_timeout!r} must be "
                "a number of seconds above 0"
            )
        if self.key not in self.start.__struct_fields__:
            raise SagaDefinitionError(
                f"saga {self.name!r}: its start message {self.start.__qualname__} has no field "
                f"{self.key!r} to use as the key; pass key= one of "
                f"{list(self.start.__struct_fields__)}"
            )
        name = f"{self.name.title().replace('_', '')}Timeout"
        meta: Any = type(SagaTimeout)
        self.timeout_type = meta(
            name,
            (SagaTimeout,),
            {"__wire_name__": f"saga.{self.name}.timeout", "__module__": __name__},
        )

    # -- declaring ---------------------------------------------------------------------------

    def step(
        self,
        name: str,
        *,
        send: Callable[[S], Command],
        success: type[Event] | Sequence[type[Event]],
        failure: type[Event] | Sequence[type[Event]] = (),
        compensate: Callable[[S], Command] | None = None,
        compensated: type[Event] | Sequence[type[Event]] = (),
        kind: StepKind = StepKind.COMPENSATABLE,
        timeout: float | None = None,
        on_success: Callable[[S, Any], S] | None = None,
        retry: RetryBackoff | None = None,
        compensation_timeout: float | None = None,
    ) -> None:
        """Add the next step of the linear flow.

        Args:
            send: builds the step's command from the state.
            success: reply event(s) meaning the step succeeded.
            failure: reply event(s) meaning it failed (then earlier steps are compensated, or a
                retriable step is resent).
            compensate: builds the command that undoes this step (compensatable steps).
            compensated: reply event(s) confirming the compensation; without one the
                compensation is sent once and trusted to its handler's retries.
            kind: compensatable, pivot or retriable.
            timeout: seconds to wait for a reply; past it the step counts as failed and, since
                its command may still be on its way rather than lost, is compensated too (with
                the earlier steps). So a compensation must confirm when there is nothing to undo,
                and must leave a mark that turns the late command into a failure reply. A step
                without a compensation (a pivot) is not undone: give it a deadline only where
                its late arrival cannot happen, or is handled downstream.
            on_success: folds the success reply into the state.
            retry: resend policy of a retriable step.
            compensation_timeout: the least seconds to wait for the ``compensated`` reply
                before resending the compensation (default: the saga's). Each resend waits
                this long or the saga's ``compensation_retry`` backoff, whichever is longer,
                and after ``compensation_retry.attempts`` sends the saga ends
                ``compensation_failed``. Make it longer than the compensation's round trip
                when the queues are full: a reply later than this is not lost, but its
                compensation is sent again.
        """
        self._check_open()
        if any(s.name == name for s in self.steps):
            raise SagaDefinitionError(f"saga {self.name!r} has two steps named {name!r}")
        self.steps.append(
            Step(
                name=name,
                send=send,
                success=_tuple(success),
                failure=_tuple(failure),
                compensate=compensate,
                compensated=_tuple(compensated),
                kind=kind,
                timeout=timeout,
                on_success=on_success,
                retry=retry or RetryBackoff(),
                compensation_timeout=compensation_timeout,
            )
        )

    def on(
        self,
        message_type: type[M],
        *,
        in_states: Iterable[str],
        to: Iterable[str],
    ) -> Callable[
        [Callable[[Instance[S], M], Transition[S]]], Callable[[Instance[S], M], Transition[S]]
    ]:
        """Register a general-form transition for ``message_type`` while in ``in_states``.

        ``to`` lists every state the function may return (terminal statuses included, by their
        value, e.g. ``"completed"``); it is what lets ``build()`` find unreachable states.
        Use ``saga.timeout_type`` as the message type to react to deadlines.
        """
        self._check_open()

        def register(
            fn: Callable[[Instance[S], M], Transition[S]],
        ) -> Callable[[Instance[S], M], Transition[S]]:
            self.rules.append(
                _Rule(
                    message_type=message_type,
                    in_states=frozenset(in_states),
                    to=frozenset(to),
                    fn=fn,
                    origin=getattr(fn, "__qualname__", repr(fn)),
                )
            )
            return fn

        return register

    # -- building ----------------------------------------------------------------------------

    def build(self) -> Saga[S]:
        """Compile the steps, validate everything, and freeze the definition.

        Raises:
            SagaDefinitionError: naming the saga, the step or state, and what to add.
        """
        if self._built:
            return self
        _validate_contract_kind(self.name, self.start, (MessageKind.COMMAND, MessageKind.EVENT))
        self._compile_steps()
        for rule in self.rules:
            for state in rule.in_states:
                key = (rule.message_type, state)
                if key in self._index:
                    raise SagaDefinitionError(
                        f"saga {self.name!r}: two rules handle {rule.message_type.__qualname__} "
                        f"in state {state!r} ({self._index[key].origin} and {rule.origin})"
                    )
                self._index[key] = rule
        self._validate_graph()
        self._built = True
        return self

    @property
    def message_types(self) -> list[type[Message]]:
        """Every message type the saga consumes (start, replies, its timeout)."""
        types: dict[type[Message], None] = {self.start: None, self.timeout_type: None}
        for rule in self.rules:
            types[rule.message_type] = None
        return list(types)

    # -- applying ----------------------------------------------------------------------------

    def begin(self, saga_id: str, message: Message) -> Transition[S]:
        """The first transition of a new instance, from its start message."""
        instance: Instance[S] = Instance(saga_id=saga_id, state=START, data=self.init(message))
        transition = self.apply(instance, message)
        if transition is None:  # build() guarantees a start rule
            raise SagaDefinitionError(f"saga {self.name!r} has no start transition")
        return transition

    def apply(self, instance: Instance[S], message: Message) -> Transition[S] | None:
        """The transition for ``message`` in the instance's state, or None if it has none.

        Raises:
            SagaDefinitionError: the rule returned a state it did not declare in ``to``.
        """
        rule = self._index.get((type(message), instance.state))
        if rule is None:
            return None
        result = rule.fn(instance, message)
        if result.state not in rule.to:
            raise SagaDefinitionError(
                f"saga {self.name!r}: {rule.origin} went to {result.state!r}, which is not in "
                f"its to={sorted(rule.to)}: add it there"
            )
        return result

    def resume(self, instance: Instance[S]) -> Transition[S]:
        """What an operator's ``leveret sagas resume`` does: resend where the saga stopped.

        A step's waiting or resend state resends the step's command; a compensating state
        resends that compensation (its attempts start again).

        Raises:
            SagaDefinitionError: the state is not one of the step form's (general-form sagas
                resume by a rule for ``timeout_type`` in that state).
        """
        for step in self.steps:
            if instance.state in (_waiting(step), _resending(step)):
                return instance.goto(
                    _waiting(step),
                    emit=[step.send(instance.data)],
                    timeout=step.timeout,
                    attempt=1,
                )
            if instance.state == _compensating(step) and step.compensate is not None:
                return instance.goto(
                    _compensating(step),
                    emit=[step.compensate(instance.data)],
                    timeout=self._compensation_wait(step, 1),
                    attempt=1,
                    status=SagaStatus.COMPENSATING,
                )
        rule = self._index.get((self.timeout_type, instance.state))
        if rule is None:
            raise SagaDefinitionError(
                f"saga {self.name!r} cannot resume from state {instance.state!r}: add a rule for "
                "saga.timeout_type in that state"
            )
        timeout = self.timeout_type(saga_id=instance.saga_id, state=instance.state, armed_version=0)
        return rule.fn(instance, timeout)

    def _compensation_wait(self, step: Step, attempt: int) -> float:
        """Seconds to wait for the confirmation of ``step``'s compensation after send ``attempt``.

        The step's ``compensation_timeout`` (else the saga's), or the ``compensation_retry``
        backoff once it grows longer.
        """
        least = (
            self.compensation_timeout
            if step.compensation_timeout is None
            else step.compensation_timeout
        )
        return max(least, self.compensation_retry.delay(attempt))

    def key_of(self, message: Message) -> str | None:
        """The instance key carried in a message's fields, if it has the key field."""
        value = getattr(message, self.key, None)
        return None if value is None else str(value)

    # -- internals ---------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._built:
            raise SagaDefinitionError(f"saga {self.name!r} is built already; declare before")

    def _compile_steps(self) -> None:
        if not self.steps:
            return
        seen_pivot = False
        for step in self.steps:
            where = f"saga {self.name!r}, step {step.name!r}"
            for cls in (*step.success, *step.failure, *step.compensated):
                _validate_contract_kind(where, cls, (MessageKind.EVENT,))
            if not step.success:
                raise SagaDefinitionError(f"{where}: name the reply that means success: success=")
            if step.kind is StepKind.COMPENSATABLE and step.compensate is None:
                raise SagaDefinitionError(
                    f"{where} is compensatable but has no compensation: add compensate=<command "
                    "builder>, or make it kind=StepKind.PIVOT or RETRIABLE"
                )
            if seen_pivot and step.kind is not StepKind.RETRIABLE:
                raise SagaDefinitionError(
                    f"{where} comes after the pivot, so it cannot be compensated: make it "
                    "kind=StepKind.RETRIABLE"
                )
            if step.kind is StepKind.RETRIABLE and not seen_pivot and step.compensate is None:
                pass  # a retriable step before the pivot simply never fails
            if step.compensated and step.compensate is None:
                raise SagaDefinitionError(f"{where}: compensated= given without compensate=")
            if step.compensation_timeout is not None:
                if not step.compensated:
                    raise SagaDefinitionError(
                        f"{where}: compensation_timeout= given without compensated=: name the "
                        "reply that confirms the compensation, or drop the timeout"
                    )
                if not step.compensation_timeout > 0:
                    raise SagaDefinitionError(
                        f"{where}: compensation_timeout={step.compensation_timeout!r} must be a "
                        "number of seconds above 0"
                    )
            seen_pivot = seen_pivot or step.kind is StepKind.PIVOT
            _check_replies(where, step)
        _StepCompiler(self).compile()

    def _validate_graph(self) -> None:
        starts = [r for r in self.rules if START in r.in_states]
        if not any(r.message_type is self.start for r in starts):
            raise SagaDefinitionError(
                f"saga {self.name!r} has no transition for its start message "
                f"{self.start.__qualname__}: add steps, or "
                f"@saga.on({self.start.__name__}, in_states=('start',), to=(...))"
            )
        terminal = {str(s) for s in SagaStatus if s.terminal}
        edges: dict[str, set[str]] = {}
        for rule in self.rules:
            for state in rule.in_states:
                edges.setdefault(state, set()).update(rule.to)
        reachable = {START}
        frontier = [START]
        while frontier:
            for nxt in edges.get(frontier.pop(), ()):
                if nxt not in reachable:
                    reachable.add(nxt)
                    frontier.append(nxt)
        handled = set(edges)
        for state in sorted(handled - reachable):
            raise SagaDefinitionError(
                f"saga {self.name!r}: state {state!r} is unreachable — no transition leads to it: "
                "add it to some rule's to=, or remove its rules"
            )
        for state in sorted(reachable - handled - terminal):
            raise SagaDefinitionError(
                f"saga {self.name!r}: state {state!r} waits with no way out: add "
                f"@saga.on(<reply>, in_states=({state!r},), to=(...)) or a timeout rule "
                f"(@saga.on(saga.timeout_type, in_states=({state!r},), ...))"
            )
        if not reachable & terminal:
            raise SagaDefinitionError(
                f"saga {self.name!r} never finishes: no transition reaches a terminal status"
            )


class _StepCompiler(Generic[S]):
    """Turns the step list into general-form rules with declared targets."""

    def __init__(self, saga: Saga[S]) -> None:
        self.saga = saga
        self.steps = saga.steps

    def compile(self) -> None:
        saga, steps = self.saga, self.steps
        first = steps[0]
        saga.rules.append(
            _Rule(
                saga.start,
                frozenset({START}),
                frozenset({_waiting(first)}),
                self._enter(0),
                f"{saga.name}.start",
            )
        )
        for i, step in enumerate(steps):
            waiting = _waiting(step)
            after = _waiting(steps[i + 1]) if i + 1 < len(steps) else str(SagaStatus.COMPLETED)
            for reply in step.success:
                saga.rules.append(
                    _Rule(
                        reply,
                        frozenset({waiting}),
                        frozenset({after}),
                        self._succeeded(i),
                        f"{step.name}.success",
                    )
                )
            failing = self._failure_targets(i)
            for reply in step.failure:
                saga.rules.append(
                    _Rule(
                        reply,
                        frozenset({waiting}),
                        failing,
                        self._failed(i),
                        f"{step.name}.failure",
                    )
                )
            if step.timeout is not None or step.kind is StepKind.RETRIABLE:
                saga.rules.append(
                    _Rule(
                        saga.timeout_type,
                        frozenset({waiting}),
                        self._timeout_targets(i),
                        self._timed_out(i),
                        f"{step.name}.timeout",
                    )
                )
            if step.kind is StepKind.RETRIABLE:
                saga.rules.append(
                    _Rule(
                        saga.timeout_type,
                        frozenset({_resending(step)}),
                        frozenset({waiting}),
                        self._resend(i),
                        f"{step.name}.resend",
                    )
                )
            if step.compensate is not None and step.compensated:
                comp = _compensating(step)
                for reply in step.compensated:
                    saga.rules.append(
                        _Rule(
                            reply,
                            frozenset({comp}),
                            self._compensation_targets(i),
                            self._compensation_done(i),
                            f"{step.name}.compensated",
                        )
                    )
                saga.rules.append(
                    _Rule(
                        saga.timeout_type,
                        frozenset({comp}),
                        frozenset({comp}),
                        self._compensation_late(i),
                        f"{step.name}.compensation_late",
                    )
                )

    # Targets -----------------------------------------------------------------------------

    def _failure_targets(self, i: int) -> frozenset[str]:
        step = self.steps[i]
        if step.kind is StepKind.RETRIABLE:
            return frozenset({_resending(step)})
        return self._compensation_targets(i)

    def _timeout_targets(self, i: int) -> frozenset[str]:
        """A step past its deadline may still take effect: its own compensation comes first."""
        step = self.steps[i]
        if step.kind is StepKind.RETRIABLE:
            return frozenset({_resending(step)})
        return self._compensation_targets(i + 1 if step.compensate is not None else i)

    def _compensation_targets(self, i: int) -> frozenset[str]:
        """Where compensation goes next when the steps before ``i`` must be undone.

        The flow is linear, so those steps have all completed: compensation waits at the nearest
        one whose undoing is confirmed, or, when none is, ends at once (``_compensate_from``).
        """
        for step in reversed(self.steps[:i]):
            if step.compensate is not None and step.compensated:
                return frozenset({_compensating(step)})
        return frozenset({str(SagaStatus.COMPENSATED)})

    # Transition functions ----------------------------------------------------------------

    def _enter(self, i: int) -> Handler:
        step = self.steps[i]

        def enter(inst: Instance[Any], msg: Any) -> Transition[Any]:
            started = self.saga.on_started(inst.data) if self.saga.on_started else ()
            return inst.goto(
                _waiting(step),
                emit=[*started, step.send(inst.data)],
                timeout=step.timeout,
                attempt=1,
            )

        return enter

    def _succeeded(self, i: int) -> Handler:
        step = self.steps[i]
        saga = self.saga
        last = i + 1 == len(self.steps)

        def succeeded(inst: Instance[Any], msg: Any) -> Transition[Any]:
            data = step.on_success(inst.data, msg) if step.on_success else inst.data
            done = (*inst.completed, step.name)
            if last:
                emit = saga.on_completed(data) if saga.on_completed else ()
                return inst.goto(
                    str(SagaStatus.COMPLETED),
                    data=data,
                    emit=emit,
                    completed=done,
                    status=SagaStatus.COMPLETED,
                )
            nxt = self.steps[i + 1]
            return inst.goto(
                _waiting(nxt),
                data=data,
                emit=[nxt.send(data)],
                timeout=nxt.timeout,
                completed=done,
                attempt=1,
            )

        return succeeded

    def _failed(self, i: int) -> Handler:
        step = self.steps[i]

        def failed(inst: Instance[Any], msg: Any) -> Transition[Any]:
            reason = f"{step.name} failed: {getattr(msg, 'reason', type(msg).__name__)}"
            if step.kind is StepKind.RETRIABLE:
                return self._retry_or_fail(inst, step, reason)
            return self._start_compensation(inst, reason)

        return failed

    def _timed_out(self, i: int) -> Handler:
        step = self.steps[i]

        def timed_out(inst: Instance[Any], msg: Any) -> Transition[Any]:
            reason = f"{step.name} timed out after {step.timeout}s"
            if step.kind is StepKind.RETRIABLE:
                return self._retry_or_fail(inst, step, reason)
            # No reply is not "did not happen": the command may be late, not lost. Undo this
            # step too; its compensation must be safe when there is nothing to undo, and must
            # make the late command a no-op (see ``Saga.step``).
            undo = [*inst.completed, step.name] if step.compensate is not None else inst.completed
            return self._compensate_from(inst, list(undo), reason, emitted=())

        return timed_out

    def _retry_or_fail(self, inst: Instance[Any], step: Step, reason: str) -> Transition[Any]:
        if inst.attempt >= step.retry.attempts:
            # Stays in the step's resend state so that an operator's resume knows where it was.
            return inst.goto(
                _resending(step),
                attempt=inst.attempt,
                status=SagaStatus.FAILED,
                reason=f"{reason}; gave up after {inst.attempt} attempts",
            )
        return inst.goto(
            _resending(step),
            timeout=step.retry.delay(inst.attempt),
            attempt=inst.attempt,
            reason=reason,
        )

    def _resend(self, i: int) -> Handler:
        step = self.steps[i]

        def resend(inst: Instance[Any], msg: Any) -> Transition[Any]:
            return inst.goto(
                _waiting(step),
                emit=[step.send(inst.data)],
                timeout=step.timeout,
                attempt=inst.attempt + 1,
            )

        return resend

    def _start_compensation(self, inst: Instance[Any], reason: str) -> Transition[Any]:
        return self._compensate_from(inst, list(inst.completed), reason, emitted=())

    def _compensate_from(
        self, inst: Instance[Any], remaining: list[str], reason: str, emitted: tuple[Message, ...]
    ) -> Transition[Any]:
        """Compensate the completed steps in reverse; wait where a confirmation is expected."""
        by_name = {s.name: s for s in self.steps}
        emit = list(emitted)
        while remaining:
            step = by_name[remaining.pop()]
            if step.compensate is None:
                continue  # a pivot or retriable step: nothing to undo
            emit.append(step.compensate(inst.data))
            if step.compensated:
                return inst.goto(
                    _compensating(step),
                    emit=emit,
                    completed=tuple(remaining),
                    timeout=self.saga._compensation_wait(step, 1),
                    attempt=1,
                    reason=reason,
                    status=SagaStatus.COMPENSATING,
                )
        saga = self.saga
        emit.extend(saga.on_compensated(inst.data, reason) if saga.on_compensated else ())
        return inst.goto(
            str(SagaStatus.COMPENSATED),
            emit=emit,
            completed=(),
            reason=reason,
            status=SagaStatus.COMPENSATED,
        )

    def _compensation_done(self, i: int) -> Handler:
        def done(inst: Instance[Any], msg: Any) -> Transition[Any]:
            return self._compensate_from(inst, list(inst.completed), inst.reason or "", ())

        return done

    def _compensation_late(self, i: int) -> Handler:
        step = self.steps[i]
        saga = self.saga

        def late(inst: Instance[Any], msg: Any) -> Transition[Any]:
            assert step.compensate is not None
            if inst.attempt >= saga.compensation_retry.attempts:
                # Stays in this compensating state so that a resume resends this compensation.
                return inst.goto(
                    _compensating(step),
                    attempt=inst.attempt,
                    status=SagaStatus.COMPENSATION_FAILED,
                    reason=f"compensation of {step.name} unconfirmed after {inst.attempt} "
                    f"attempts (while compensating: {inst.reason})",
                )
            return inst.goto(
                _compensating(step),
                emit=[step.compensate(inst.data)],
                timeout=saga._compensation_wait(step, inst.attempt + 1),
                attempt=inst.attempt + 1,
                status=SagaStatus.COMPENSATING,
            )

        return late


def _waiting(step: Step) -> str:
    return step.name


def _resending(step: Step) -> str:
    return f"{step.name}:resend"


def _compensating(step: Step) -> str:
    return f"{step.name}:compensating"


def _tuple(value: type[Event] | Sequence[type[Event]]) -> tuple[type[Event], ...]:
    return (value,) if isinstance(value, type) else tuple(value)


def _validate_contract_kind(where: str, cls: type[Message], kinds: tuple[MessageKind, ...]) -> None:
    try:
        kind = kind_of(cls)
    except RegistrationError:
        raise SagaDefinitionError(f"{where}: {cls!r} is not a message contract") from None
    if kind not in kinds:
        raise SagaDefinitionError(
            f"{where}: {cls.__qualname__} is a {kind.value}, expected "
            f"{' or '.join(k.value for k in kinds)}"
        )


def _check_replies(where: str, step: Step) -> None:
    """If a command declares ``__replies__``, a step's replies must be among them."""
    try:
        probe = typing.get_type_hints(step.send).get("return")
    except Exception:  # lambdas and unresolvable hints: nothing to check against
        probe = None
    command = probe if isinstance(probe, type) else None
    declared = getattr(command, "__replies__", None) if command is not None else None
    if declared is None or command is None:
        return
    for reply in (*step.success, *step.failure):
        if reply not in declared:
            raise SagaDefinitionError(
                f"{where}: {reply.__qualname__} is never sent in answer to "
                f"{command.__qualname__} (its __replies__ are "
                f"{[r.__qualname__ for r in declared]}): fix the step or add it to __replies__"
            )
