"""The payment gateway: the fake's ledger and outages, its breaker in the shop, and the shop
running through an outage with every order still ending as it should."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from contracts.payment import ChargePayment
from examples.shop import main
from framework import AppConfig, cli
from framework.errors import ConfigurationError
from framework.middleware import Incoming, Next
from framework.resilience import DEFERRALS, Breakers, Downstream
from handlers.app import build_app
from handlers.gateway import GATEWAY, FakeGateway, GatewayUnavailable, Outage
from handlers.payment import build_payment
from tests.saga.conftest import eventually


class FakeClock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_the_fake_gateway_charges_and_refunds_each_order_once() -> None:
    """A charge sent again answers with the same payment id and takes nothing more; a refund
    sent again gives nothing more back."""
    gateway = FakeGateway()
    assert await gateway.charge("o-1", 700) == "pay-o-1"
    assert await gateway.charge("o-1", 700) == "pay-o-1"
    assert gateway.charged == {"o-1": ("pay-o-1", 700)}
    await gateway.refund("pay-o-1", 700)
    await gateway.refund("pay-o-1", 700)
    assert gateway.refunded == {"pay-o-1": 700}
    assert gateway.net_cents("o-1") == 0
    assert gateway.calls == {"charge": 2, "refund": 2}


async def test_the_fake_gateway_fails_during_an_outage_and_takes_nothing() -> None:
    """An outage planned after the first charge starts with it; calls inside it fail with
    GatewayUnavailable and change no ledger; once it is over they go through again."""
    clock = FakeClock()
    gateway = FakeGateway(clock=clock)
    gateway.fail_for(5.0, after_charges=1)
    assert gateway.outages == []
    assert await gateway.charge("o-1", 700) == "pay-o-1"
    assert gateway.outages == [Outage(100.0, 105.0)]
    clock.now = 104.9
    with pytest.raises(GatewayUnavailable):
        await gateway.charge("o-2", 700)
    with pytest.raises(GatewayUnavailable):
        await gateway.refund("pay-o-1", 700)
    assert (gateway.charged, gateway.refunded) == ({"o-1": ("pay-o-1", 700)}, {})
    clock.now = 105.0
    assert gateway.outage() is None
    assert await gateway.charge("o-2", 700) == "pay-o-2"
    assert gateway.calls == {"failed": 2, "charge": 2}


async def test_a_hung_gateway_is_cut_off_by_the_call_timeout() -> None:
    """During a hanging outage a call does not return; the caller's timeout cancels it and
    it takes nothing."""
    gateway = FakeGateway()
    gateway.fail_for(60.0, hang=True)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await gateway.charge("o-1", 700)
    assert gateway.charged == {}
    assert gateway.calls == {"hung": 1}


def test_payment_needs_the_gateway_call_breaker_among_the_breakers() -> None:
    """Breakers without ExternalCall('payment-gateway') (none, or a downstream of that name)
    are refused when the service is built, with what to declare."""
    for breakers in (Breakers([]), Breakers([Downstream(GATEWAY)])):
        with pytest.raises(ConfigurationError, match=r"declare ExternalCall\('payment-gateway'"):
            build_payment(breakers=breakers)


async def test_a_refused_charge_comes_back_without_using_an_attempt(
    prefix: str, tmp_path: Path
) -> None:
    """While the shop's gateway breaker refuses, a ChargePayment is deferred and comes back,
    never counted as a failed attempt; once the breaker closes the order is charged once."""
    gateway = FakeGateway()
    runs: list[tuple[int, int]] = []

    async def watch(msg: Incoming, call_next: Next) -> Any:
        if msg.handler.name == "payment.charge":
            runs.append((msg.context.attempt, msg.context.headers.get(DEFERRALS, 0)))
        return await call_next(msg)

    app = build_app(
        db_url=f"sqlite:///{tmp_path / 'shop.db'}",
        config=AppConfig(prefix=prefix),
        gateway=gateway,
        middleware=[watch],
    )
    assert app.breakers is not None
    breaker = app.breakers[GATEWAY]
    async with app:
        breaker.transition_to_forced_open()
        await app.send(ChargePayment(order_id="o-1", customer_id="c-1", amount_cents=700))
        await eventually(lambda: len(runs) >= 2, what="the charge deferred and back again")
        assert gateway.calls == {}
        breaker.transition_to_closed()
        await eventually(lambda: gateway.charged, what="the charge at the gateway")
    assert gateway.charged == {"o-1": ("pay-o-1", 700)}
    assert runs[:2] == [(0, 0), (0, 1)]
    assert all(attempt == 0 for attempt, _ in runs)


def test_leveret_breakers_lists_the_shop_gateway_breaker(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`leveret breakers handlers.app:app` (on memory://) lists the payment gateway's breaker
    and its timeout."""
    assert cli.main(["breakers", "handlers.app:app"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith("  ")]
    assert [row[0] for row in rows[1:]] == [GATEWAY]
    assert "external calls, timeout 2s" in out


async def test_the_shop_rides_out_a_gateway_outage(capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m examples.shop --gateway-outage 1`: the gateway fails mid-run, its breaker
    opens and closes again, charges are deferred meanwhile, and every order still ends as its
    contents say with the invariants and the gateway's ledger checked."""
    assert await main(["--orders", "40", "--seed", "3", "--gateway-outage", "1"]) == 0
    out = capsys.readouterr().out
    assert "invariants hold" in out
    assert "every order ended as its contents say" in out
    section = out.split("payment gateway down 1s (calls failing)")[1]
    transitions = [line.split()[1:4] for line in section.splitlines() if "->" in line]
    assert transitions[0] == ["closed", "->", "open"]
    assert transitions[-1] == ["half_open", "->", "closed"]
    table = {
        line[:30].strip(): [int(n) for n in line[30:].split()]
        for line in section.split("payment commands")[1].splitlines()[1:5]
    }
    assert table["deferred (breaker open)"][0] > 0
    assert table["times refused, each 1 s"][0] >= table["deferred (breaker open)"][0]
    assert table["done at the gateway"][0] > 0
