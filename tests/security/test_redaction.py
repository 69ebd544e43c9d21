"""The redaction helpers on URLs that are odd but real: no part of a password survives."""

from __future__ import annotations

import pytest

from framework import ConfigurationError
from framework.logging import redact_text
from framework.transport.amqp import AmqpTransport
from framework.urls import redact

SECRET = "s3cr3t"

URLS = {
    # An unescaped "@" in the password: the host follows the last "@".
    f"amqp://app:{SECRET}@x@rabbit:5672/shop": "amqp://app:***@rabbit:5672/shop",
    # A port that is no number: urlsplit(...).port raises, redaction must not.
    f"amqp://app:{SECRET}@rabbit:five/shop": "amqp://app:***@rabbit:five/shop",
    # libpq and asyncpg read passwords from the query too.
    f"postgresql://app@db/shop?sslmode=require&password={SECRET}&sslpassword={SECRET}": (
        "postgresql://app@db/shop?sslmode=require&password=***&sslpassword=***"
    ),
    f"amqps://app:{SECRET}@[::1]:5671/?cafile=/etc/ca.pem": "amqps://app:***@[::1]:5671/?cafile=/etc/ca.pem",
}


@pytest.mark.parametrize(
    ("url", "shown"), URLS.items(), ids=["at-sign", "bad-port", "query", "ipv6"]
)
def test_redact_masks_the_whole_password(url: str, shown: str) -> None:
    """``redact`` masks the password wherever it is, and leaves the rest of the URL as it was."""
    assert redact(url) == shown


@pytest.mark.parametrize("url", URLS, ids=["at-sign", "bad-port", "query", "ipv6"])
def test_redact_text_leaves_nothing_of_the_password(url: str) -> None:
    """The log processor's text redaction, inside a sentence, leaves no part of the secret."""
    text = redact_text(f"connecting to {url} failed")
    assert SECRET not in text
    assert SECRET[1:] not in text
    assert text.startswith("connecting to ")


def test_redaction_leaves_urls_without_secrets_alone() -> None:
    """A URL with no password, and text with no URL, come back unchanged."""
    for text in ("amqp://rabbit:5672/shop", "amqps://app@rabbit/?cafile=/x.pem", "no url"):
        assert redact(text) == text
        assert redact_text(text) == text


async def test_an_unparseable_broker_url_is_a_configuration_error() -> None:
    """A URL yarl cannot parse fails connect() with a ConfigurationError, password masked."""
    transport = AmqpTransport(f"amqp://app:{SECRET}@rabbit:five/shop")
    assert SECRET not in repr(transport)
    with pytest.raises(ConfigurationError) as failed:
        await transport.connect()
    assert str(failed.value).startswith("the broker URL amqp://app:***@rabbit:five/shop is not")
    assert SECRET not in str(failed.value)
