"""Notifications: tells customers what happened to their orders (here: records it)."""

from __future__ import annotations

from dataclasses import dataclass, field

from contracts.notifications import CustomerNotified, NotifyCustomer
from framework import Context, Service

__all__ = ["Outbox", "build_notifications"]


@dataclass
class Outbox:
    """Notifications sent, keyed by the command's message id so a redelivery sends nothing."""

    sent: dict[str, tuple[str, str, str]] = field(default_factory=dict)


def build_notifications(outbox: Outbox) -> Service:
    """The notifications service over ``outbox``."""
    notifications = Service("notifications")

    @notifications.command
    async def notify(cmd: NotifyCustomer, ctx: Context) -> None:
        if ctx.message_id in outbox.sent:
            return
        outbox.sent[ctx.message_id] = (cmd.customer_id, cmd.order_id, cmd.template)
        ctx.log.info("customer_notified", order_id=cmd.order_id, template=cmd.template)
        await ctx.publish(
            CustomerNotified(
                customer_id=cmd.customer_id, order_id=cmd.order_id, template=cmd.template
            )
        )

    return notifications
