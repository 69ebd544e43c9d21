"""Topic patterns match routing keys as RabbitMQ's topic exchange does."""

from __future__ import annotations

import pytest

from framework.transport.base import topic_match


@pytest.mark.parametrize(
    ("pattern", "key", "matches"),
    [
        ("orders.placed", "orders.placed", True),
        ("orders.*", "orders.placed", True),
        ("orders.*", "orders.placed.eu", False),
        ("orders.#", "orders", True),
        ("orders.#", "orders.placed.eu", True),
        ("#", "anything.at.all", True),
        ("*.placed", "orders.placed", True),
        ("*.placed", "placed", False),
        ("orders.#.eu", "orders.placed.eu", True),
        ("orders.placed", "orders.shipped", False),
    ],
)
def test_topic_match(pattern: str, key: str, matches: bool) -> None:
    """``*`` stands for one word, ``#`` for zero or more, any other word for itself."""
    assert topic_match(pattern.split("."), key.split(".")) is matches
