"""The breakers' control plane, without a broker: clamped waits, seals, refusals, their logs."""

from __future__ import annotations

import math
from typing import Any

import pytest
from structlog.testing import capture_logs

from framework.resilience import Backoff, BreakerConfig, CircuitBreaker, State, TransitionReason
from framework.resilience.control import (
    MAX_AGE,
    SIGNATURE,
    ControlSeal,
    StatusRequest,
    TransitionNote,
    _RefusalLog,
    encode,
    follow,
    remote_wait,
    status_inbox,
)
from framework.transport.base import Delivery
from tests.support.clock import FakeClock

EXCHANGE = "shop.breakers.orders"
SECRET = "a-secret-of-the-workers-0123456789"


class Received(Delivery):
    """A delivery as a control queue hands it over (settling is beside the point here)."""

    def __init__(self, body: bytes, *, user_id: str | None, headers: dict[str, Any]) -> None:
        super().__init__(
            body=body,
            message_id="m-1",
            type="leveret.breakers.control",
            correlation_id=None,
            content_type=None,
            headers=headers,
            reply_to=None,
            redelivered=False,
            exchange=EXCHANGE,
            routing_key="",
            timestamp=None,
            user_id=user_id,
        )

    async def ack(self) -> None:
        return None

    async def nack(self, *, requeue: bool) -> None:
        return None


def received(seal: ControlSeal, body: bytes) -> Received:
    """What a receiver gets when ``seal`` sends ``body``."""
    message = seal.seal(body)
    return Received(body, user_id=message.user_id, headers=dict(message.headers))


def note(state: str = "open", wait: float | None = None, **fields: Any) -> TransitionNote:
    return TransitionNote(
        worker="host:sibling",
        breaker="inventory",
        state=state,
        reason="failure",
        wait=wait,
        **fields,
    )


@pytest.mark.parametrize(
    ("wait_in_open", "longest"),
    [(60.0, 60.0), (0.0, 0.0), (Backoff(initial=5, maximum=100, jitter=0.2), 120.0)],
)
def test_the_longest_open_wait_is_what_the_config_can_produce(
    wait_in_open: Any, longest: float
) -> None:
    """A fixed wait bounds itself; a Backoff is bounded by its maximum stretched by its jitter."""
    assert BreakerConfig(wait_in_open=wait_in_open).longest_open_wait == pytest.approx(longest)


@pytest.mark.parametrize(
    ("wait", "clamped"),
    [(30.0, 30.0), (60.0, 60.0), (1e300, 60.0), (math.inf, 60.0), (-5.0, 0.0), (None, None)],
)
def test_a_remote_wait_is_clamped_to_the_receivers_bounds(
    wait: float | None, clamped: float | None
) -> None:
    """Waits above the config's longest become it, negative ones 0; None stays the own wait."""
    assert remote_wait(BreakerConfig(wait_in_open=60), wait) == clamped


def test_a_remote_wait_that_is_not_a_number_or_unbounded_is_the_receivers_own() -> None:
    """NaN, or a wait function of unknown bound, leaves the wait to the receiving breaker."""
    assert remote_wait(BreakerConfig(wait_in_open=60), math.nan) is None
    assert remote_wait(BreakerConfig(wait_in_open=lambda n: 10.0 * n), 1e300) is None


def test_an_open_note_with_a_huge_wait_opens_only_for_the_configured_wait() -> None:
    """A sibling's wait of 1e300 opens the breaker for 60 s; then probes go through again."""
    clock = FakeClock()
    breaker = CircuitBreaker("inventory", BreakerConfig(wait_in_open=60), clock=clock)
    follow(breaker, note(wait=1e300))
    assert breaker.state is State.OPEN
    assert breaker.open_reason is TransitionReason.REMOTE
    assert breaker.retry_after() == 60.0
    clock.advance(60.0)
    assert breaker.try_acquire() is not None
    assert breaker.state is State.HALF_OPEN


def test_an_open_note_within_bounds_keeps_the_senders_wait() -> None:
    """A sibling's own wait (here 12 s of a Backoff's up to 36 s) is followed as sent."""
    clock = FakeClock()
    config = BreakerConfig(wait_in_open=Backoff(initial=10, maximum=30, jitter=0.2))
    breaker = CircuitBreaker("inventory", config, clock=clock)
    follow(breaker, note(wait=12.0))
    assert breaker.retry_after() == 12.0
    clock.advance(11.9)
    assert breaker.try_acquire() is None


def test_an_open_note_without_a_wait_uses_the_receivers_own() -> None:
    """A note with no wait opens for the receiver's configured wait."""
    breaker = CircuitBreaker("inventory", BreakerConfig(wait_in_open=45), clock=FakeClock())
    follow(breaker, note(wait=None))
    assert breaker.retry_after() == 45.0


def test_forced_states_are_followed_and_unknown_states_ignored() -> None:
    """forced_open and disabled are followed (an operator's act); a newer state is ignored."""
    breaker = CircuitBreaker("inventory", clock=FakeClock())
    follow(breaker, note(state="someday"))
    assert breaker.state is State.CLOSED
    follow(breaker, note(state="forced_open"))
    assert breaker.state is State.FORCED_OPEN
    follow(breaker, note(state="disabled"))
    assert breaker.state is State.DISABLED
    follow(breaker, note(state="closed"))
    assert breaker.state is State.CLOSED


def test_a_message_of_the_workers_own_user_passes_without_a_secret() -> None:
    """Without a secret, the broker-checked user_id alone decides."""
    seal = ControlSeal(EXCHANGE, user="orders")
    body = encode(note())
    assert seal.refusal(received(seal, body)) is None
    assert seal.refusal(Received(body, user_id=None, headers={})) == "foreign_user"
    assert seal.refusal(Received(body, user_id="mallory", headers={})) == "foreign_user"


def test_a_transport_that_cannot_tell_its_user_accepts_nothing() -> None:
    """With no own user known, not even a message without user_id passes."""
    seal = ControlSeal(EXCHANGE, user=None)
    assert seal.refusal(Received(encode(note()), user_id=None, headers={})) == "foreign_user"


def test_with_a_secret_only_a_good_signature_passes() -> None:
    """Missing, wrong, non-ASCII, other-group and other-secret signatures are all refused."""
    seal = ControlSeal(EXCHANGE, user="orders", secret=SECRET)
    body = encode(note())
    good = received(seal, body)
    assert seal.refusal(good) is None
    signature = good.headers[SIGNATURE]
    assert isinstance(signature, str)
    assert len(signature) == 64
    other_group = ControlSeal("shop.breakers.other", user="orders", secret=SECRET)
    other_secret = ControlSeal(EXCHANGE, user="orders", secret=SECRET + "x")
    forged = [
        {},
        {SIGNATURE: "0" * 64},
        {SIGNATURE: signature.encode()},
        {SIGNATURE: "é" * 64},
        {SIGNATURE: received(other_group, body).headers[SIGNATURE]},
        {SIGNATURE: received(other_secret, body).headers[SIGNATURE]},
    ]
    for headers in forged:
        assert seal.refusal(Received(body, user_id="orders", headers=headers)) == "bad_signature"
    assert seal.refusal(Received(body + b" ", user_id="orders", headers=good.headers)) == (
        "bad_signature"
    )


def test_a_body_past_the_bound_is_refused_before_it_is_read() -> None:
    """A huge body from the workers' user is refused without computing its signature."""
    seal = ControlSeal(EXCHANGE, user="orders", secret=SECRET)
    assert seal.refusal(Received(b" " * 70_000, user_id="orders", headers={})) == "too_large"


def test_signed_messages_must_be_fresh() -> None:
    """With a secret, a note sent more than MAX_AGE away from now (or with no time) is stale."""
    wall = FakeClock(1_700_000_000.0)
    seal = ControlSeal(EXCHANGE, user="orders", secret=SECRET, wall_clock=wall)
    assert not seal.stale(wall.now - MAX_AGE)
    assert not seal.stale(wall.now + 5)
    assert seal.stale(wall.now - MAX_AGE - 1)
    assert seal.stale(wall.now + MAX_AGE + 1)
    assert seal.stale(None)
    assert not ControlSeal(EXCHANGE, user="orders").stale(None)


def test_status_answers_go_only_to_direct_reply_to_or_a_status_inbox() -> None:
    """A reply_to naming any other queue (a DLQ, a business queue) is not answered."""
    seal = ControlSeal(EXCHANGE, user="orders")
    assert seal.replyable("amq.rabbitmq.reply-to.g1h2AA==.abc")
    assert seal.replyable(status_inbox(EXCHANGE, "0123456789abcdef0123"))
    for queue in (
        "shop.orders.place_order.dlq",
        f"{EXCHANGE}.status.0123456789ab.dlq",
        f"{EXCHANGE}.status.0123456789AB",
        f"{EXCHANGE}.status.",
        "shop.breakers.other.status.0123456789ab",
        "amq.rabbitmq.reply-to",
    ):
        assert not seal.replyable(queue), queue
    request = StatusRequest(reply_to="shop.payment.dlq", request_id="r")
    assert not seal.replyable(request.reply_to)


def test_refusals_are_logged_once_per_reason_and_interval() -> None:
    """A flood of refusals logs one line per reason per 10 s, then says how many it left out."""
    clock = FakeClock()
    refusals = _RefusalLog(clock)
    delivery = Received(b"{}", user_id="mallory", headers={})
    with capture_logs() as logs:
        for _ in range(500):
            refusals.refused("foreign_user", delivery)
        refusals.refused("stale", delivery)
        clock.advance(10.0)
        refusals.refused("foreign_user", delivery)
    lines = [(e["event"], e["reason"], e["left_out"]) for e in logs]
    assert lines == [
        ("breaker_note_refused", "foreign_user", 0),
        ("breaker_note_refused", "stale", 0),
        ("breaker_note_refused", "foreign_user", 499),
    ]
    assert all(e["log_level"] == "warning" and e["user_id"] == "mallory" for e in logs)
    assert refusals.count == 502
