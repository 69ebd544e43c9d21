"""Notifications: tells customers how their orders ended (here: records each notification).

A customer gets each template once per order. A notification's id is that key,
``<order id>/<template>``, not the id of the command that asked for it, and it is inserted with
``ON CONFLICT DO NOTHING``: a ``NotifyCustomer`` sent again (a new message id, the same order and
template) records nothing more, and answers ``CustomerNotified`` from the stored row, as the first
did; two copies handled at once never fail on the key.
"""

from __future__ import annotations

from contracts.notifications import CustomerNotified, NotifyCustomer
from framework import Context, Service

__all__ = ["build_notifications"]

SCHEMA = (
    # message_id: the notification's id, ``<order id>/<template>`` (rows from before that rule
    # hold the id of the command that asked for them).
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
        notification_id = f"{cmd.order_id}/{cmd.template}"
        await ctx.tx.execute(
            "INSERT INTO notifications_sent (message_id, customer_id, order_id, template) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (message_id) DO NOTHING",
            notification_id,
            cmd.customer_id,
            cmd.order_id,
            cmd.template,
        )
        row = await ctx.tx.fetchone(
            "SELECT customer_id FROM notifications_sent WHERE message_id = ?", notification_id
        )
        assert row is not None  # inserted above, or by the copy that came first
        await ctx.publish(
            CustomerNotified(customer_id=row[0], order_id=cmd.order_id, template=cmd.template)
        )

    return notifications
