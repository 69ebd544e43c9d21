"""Notifications: tells customers how their orders ended (here: records each notification)."""

from __future__ import annotations

from contracts.notifications import CustomerNotified, NotifyCustomer
from framework import Context, Service

__all__ = ["build_notifications"]

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS notifications_sent (
        message_id TEXT PRIMARY KEY,
        customer_id TEXT NOT NULL,
        order_id TEXT NOT NULL,
        template TEXT NOT NULL
    )""",
)


def build_notifications() -> Service:
    """The notifications service."""
    notifications = Service("notifications", schema=SCHEMA, sends=[CustomerNotified])

    @notifications.command(transactional=True)
    async def notify(cmd: NotifyCustomer, ctx: Context) -> None:
        # The inbox already drops redeliveries; the key makes a second copy impossible anyway.
        await ctx.tx.execute(
            "INSERT INTO notifications_sent (message_id, customer_id, order_id, template) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (message_id) DO NOTHING",
            ctx.message_id,
            cmd.customer_id,
            cmd.order_id,
            cmd.template,
        )
        await ctx.publish(
            CustomerNotified(
                customer_id=cmd.customer_id, order_id=cmd.order_id, template=cmd.template
            )
        )

    return notifications
