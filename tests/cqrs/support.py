"""Helpers of the CQRS tests: order events, a middleware that counts handled messages, and the
read model as plain rows."""

from __future__ import annotations

import asyncio
from typing import Any

from contracts.orders import LineItem, OrderCancelled, OrderCompleted, OrderPlaced
from framework.middleware import Incoming, Next
from framework.store import Store


class Handled:
    """Consume middleware that counts handler calls that returned, so a test can await them."""

    def __init__(self) -> None:
        self.count = 0
        self._changed = asyncio.Condition()

    async def __call__(self, msg: Incoming, call_next: Next) -> Any:
        result = await call_next(msg)
        async with self._changed:
            self.count += 1
            self._changed.notify_all()
        return result

    async def wait_for(self, count: int, timeout: float = 20.0) -> None:
        """Wait until ``count`` handler calls have returned in total."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: self.count >= count)


def placed(order_id: str, customer_id: str, qty: int = 1) -> OrderPlaced:
    return OrderPlaced(
        order_id=order_id,
        customer_id=customer_id,
        items=[LineItem(sku="apple", qty=qty, unit_price_cents=100)],
        total_cents=qty * 100,
        address="1 Main St",
    )


def completed(order_id: str) -> OrderCompleted:
    return OrderCompleted(order_id=order_id)


def cancelled(order_id: str, reason: str) -> OrderCancelled:
    return OrderCancelled(order_id=order_id, reason=reason)


async def read_model(store: Store) -> list[tuple[Any, ...]]:
    """Every row of ``orders_view``, ordered by order id."""
    async with store.transaction() as tx:
        return [
            tuple(row)
            for row in await tx.fetchall(
                "SELECT order_id, customer_id, status, total_cents, reason FROM orders_view "
                "ORDER BY order_id"
            )
        ]
