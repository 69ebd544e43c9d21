"""FakeContext and FakeQueryContext: a handler called alone, its sends, publishes and logs."""

from __future__ import annotations

import pytest

from framework import Context, QueryContext, WrongBus
from framework.testing import FakeContext, FakeQueryContext, LogLine
from tests.testing.loyalty import Balance, CardIssued, GetBalance, IssueCard, RevokeCard


async def issue_card(cmd: IssueCard, ctx: Context) -> None:
    ctx.log.info("card_issuing", member=cmd.member_id)
    await ctx.send(RevokeCard(member_id="old-" + cmd.member_id))
    await ctx.publish(CardIssued(member_id=cmd.member_id))
    ctx.log.bind(step="done").warning("card_issued")


async def test_sends_publishes_and_logs_are_recorded() -> None:
    """What the handler sent, published and logged is on the context, in order."""
    ctx = FakeContext(message_id="m-7", handler="cards.issue_card")
    await issue_card(IssueCard(member_id="ann"), ctx)
    assert ctx.sent == [RevokeCard(member_id="old-ann")]
    assert ctx.published == [CardIssued(member_id="ann")]
    assert ctx.logs == [
        LogLine(level="info", event="card_issuing", fields={"member": "ann"}),
        LogLine(level="warning", event="card_issued", fields={"step": "done"}),
    ]


async def test_ids_are_deterministic_and_a_chosen_id_is_kept() -> None:
    """send/publish return <message id>/<handler>/<n>, or the message_id the handler chose."""
    ctx = FakeContext(message_id="m-1", handler="cards.h")
    assert await ctx.send(RevokeCard(member_id="a")) == "m-1/cards.h/0"
    assert await ctx.publish(CardIssued(member_id="a")) == "m-1/cards.h/1"
    assert await ctx.publish(CardIssued(member_id="a"), message_id="mine") == "mine"


async def test_the_wrong_bus_is_refused_as_in_production() -> None:
    """Publishing a command or sending an event raises WrongBus, and nothing is recorded."""
    ctx = FakeContext()
    with pytest.raises(WrongBus, match="use send"):
        await ctx.publish(RevokeCard(member_id="a"))  # type: ignore[arg-type]  # the mistake
    with pytest.raises(WrongBus, match="use publish"):
        await ctx.send(CardIssued(member_id="a"))  # type: ignore[arg-type]  # the mistake
    assert not ctx.sent
    assert not ctx.published


def test_metadata_is_what_the_handler_reads() -> None:
    """The ids, attempt, redelivery flag and saga id a handler reads come from the arguments."""
    ctx = FakeContext(
        message_id="m-2", attempt=3, redelivered=True, saga_id="order-o-1", headers={"x": 1}
    )
    assert isinstance(ctx, Context)
    assert (ctx.correlation_id, ctx.attempt, ctx.redelivered) == ("m-2", 3, True)
    assert (ctx.saga_id, ctx.headers["x"]) == ("order-o-1", 1)


async def test_a_query_context_records_logs_and_cannot_publish() -> None:
    """FakeQueryContext is a QueryContext: read-only, its log lines recorded."""

    async def get_balance(query: GetBalance, ctx: QueryContext) -> Balance:
        ctx.log.debug("balance_read", member=query.member_id)
        return Balance(points=5)

    ctx = FakeQueryContext()
    assert await get_balance(GetBalance(member_id="ann"), ctx) == Balance(points=5)
    assert ctx.logs == [LogLine(level="debug", event="balance_read", fields={"member": "ann"})]
    assert not hasattr(ctx, "send")
    assert not hasattr(ctx, "publish")
