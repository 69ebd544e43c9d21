"""A small loyalty app for the test kit's tests: a two-step saga with a deadline and
compensations, a handler that fails on demand, and a query."""

from __future__ import annotations

import asyncio

import msgspec

from framework import App, AppConfig, Command, Context, Event, Query, Reply, RetryPolicy, Service
from framework.saga import Saga


class Enroll(Command):
    __wire_name__ = "loyalty.enroll"

    member_id: str

    def __post_init__(self) -> None:
        if not self.member_id:
            raise ValueError("member_id must not be empty")


class IssueCard(Command):
    __wire_name__ = "cards.issue_card"

    member_id: str


class CardIssued(Event):
    __wire_name__ = "cards.card_issued"

    member_id: str


class RevokeCard(Command):
    __wire_name__ = "cards.revoke_card"

    member_id: str


class CardRevoked(Event):
    __wire_name__ = "cards.card_revoked"

    member_id: str


class CreditPoints(Command):
    __wire_name__ = "points.credit_points"

    member_id: str
    points: int


class PointsCredited(Event):
    __wire_name__ = "points.points_credited"

    member_id: str


class DebitPoints(Command):
    __wire_name__ = "points.debit_points"

    member_id: str
    points: int


class PointsDebited(Event):
    __wire_name__ = "points.points_debited"

    member_id: str


class Stamp(Command):
    """Fails ``failures`` times, then succeeds (retry tests)."""

    __wire_name__ = "points.stamp"

    card: str
    failures: int = 0


class Stamped(Event):
    __wire_name__ = "points.stamped"

    card: str


class Hold(Command):
    """Waits until the test releases it (settle tests)."""

    __wire_name__ = "points.hold"

    card: str


class Balance(Reply):
    __wire_name__ = "points.balance"

    points: int


class GetBalance(Query[Balance]):
    __wire_name__ = "points.get_balance"

    member_id: str


class Enrollment(msgspec.Struct, frozen=True, kw_only=True):
    member_id: str
    points: int = 0


def build_saga(*, points_timeout: float = 30.0) -> Saga[Enrollment]:
    saga = Saga(
        "enrollment",
        state=Enrollment,
        start=Enroll,
        key="member_id",
        init=lambda cmd: Enrollment(member_id=cmd.member_id),
    )
    saga.step(
        "card",
        send=lambda s: IssueCard(member_id=s.member_id),
        success=CardIssued,
        compensate=lambda s: RevokeCard(member_id=s.member_id),
        compensated=CardRevoked,
    )
    saga.step(
        "points",
        send=lambda s: CreditPoints(member_id=s.member_id, points=100),
        success=PointsCredited,
        on_success=lambda s, _: msgspec.structs.replace(s, points=100),
        compensate=lambda s: DebitPoints(member_id=s.member_id, points=100),
        compensated=PointsDebited,
        timeout=points_timeout,
    )
    return saga


class Loyalty:
    """The app and what its handlers saw."""

    def __init__(
        self, *, points_timeout: float = 30.0, delays: tuple[float, ...] = (5.0, 30.0)
    ) -> None:
        self.attempts: dict[str, int] = {}
        self.release = asyncio.Event()
        loyalty = Service("loyalty")
        loyalty.saga(build_saga(points_timeout=points_timeout))
        cards = Service("cards")
        points = Service("points", retry=RetryPolicy(immediate=0, delays=delays))

        @cards.command
        async def issue_card(cmd: IssueCard, ctx: Context) -> None:
            await ctx.publish(CardIssued(member_id=cmd.member_id))

        @cards.command
        async def revoke_card(cmd: RevokeCard, ctx: Context) -> None:
            await ctx.publish(CardRevoked(member_id=cmd.member_id))

        @points.command
        async def credit_points(cmd: CreditPoints, ctx: Context) -> None:
            if cmd.member_id.startswith("lost"):
                return  # the reply never comes: the saga's deadline passes
            await ctx.publish(PointsCredited(member_id=cmd.member_id))

        @points.command
        async def debit_points(cmd: DebitPoints, ctx: Context) -> None:
            await ctx.publish(PointsDebited(member_id=cmd.member_id))

        @points.command
        async def stamp(cmd: Stamp, ctx: Context) -> None:
            seen = self.attempts[cmd.card] = self.attempts.get(cmd.card, 0) + 1
            if seen <= cmd.failures:
                raise RuntimeError(f"stamp machine jammed ({seen})")
            await ctx.publish(Stamped(card=cmd.card))

        @points.command
        async def hold(cmd: Hold) -> None:
            await self.release.wait()

        @points.query
        async def get_balance(query: GetBalance) -> Balance:
            return Balance(points=100)

        self.app = App(
            [loyalty, cards, points], db_url="memory://", config=AppConfig(prefix="loyalty")
        )
