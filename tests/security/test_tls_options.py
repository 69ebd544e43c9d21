"""``no_verify_ssl`` in a broker URL: only ``0`` and ``1``, since aiormq verifies only on ``0``.

aiormq reads ``verify = query.get("no_verify_ssl", "0") == "0"``: ``false``, ``no`` or an empty
value turned verification off without a word. These run without a broker: the URL is checked
before any connection is tried.
"""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from framework import ConfigurationError
from framework.transport.amqp import AmqpTransport
from framework.urls import check_tls_options

BASE = "amqps://app:s3cret@rabbit:5671/shop"


@pytest.mark.parametrize(
    "query",
    [
        "?no_verify_ssl=false",
        "?no_verify_ssl=",
        "?no_verify_ssl",
        "?no_verify_ssl=yes",
        "?no_verify_ssl=true",
        "?no_verify_ssl=00",
        "?no_verify_ssl=0%20",
        "?cafile=/ca.pem&no_verify_ssl=False",
        "?no_verify_ssl=0&no_verify_ssl=1",
    ],
)
def test_anything_but_0_or_1_is_a_configuration_error(query: str) -> None:
    """A value aiormq would read as "do not verify" by accident is refused, saying what to write."""
    with pytest.raises(ConfigurationError) as refused:
        check_tls_options(BASE + query)
    message = str(refused.value)
    assert "no_verify_ssl" in message
    assert "no_verify_ssl=0" in message
    assert "no_verify_ssl=1" in message
    assert "s3cret" not in message


@pytest.mark.parametrize(
    ("query", "verified"),
    [
        ("", True),
        ("?no_verify_ssl=0", True),
        ("?cafile=/ca.pem", True),
        ("?no_verify_ssl=1", False),
    ],
)
def test_0_and_1_are_accepted(query: str, verified: bool) -> None:
    """``0`` (or no option) verifies the certificate, ``1`` does not."""
    assert check_tls_options(BASE + query) is verified


def test_verification_off_logs_a_warning_with_the_redacted_url() -> None:
    """``no_verify_ssl=1`` on ``amqps://`` logs ``tls_verification_disabled``, password masked."""
    with capture_logs() as logs:
        check_tls_options(BASE + "?no_verify_ssl=1")
        check_tls_options(BASE + "?no_verify_ssl=0")
    [warning] = [e for e in logs if e["event"] == "tls_verification_disabled"]
    assert warning["log_level"] == "warning"
    assert warning["url"] == "amqps://app:***@rabbit:5671/shop?no_verify_ssl=1"


def test_a_password_holding_a_question_mark_cannot_hide_the_option() -> None:
    """The query is read from the first ``?`` too (as yarl reads it), so a ``?`` in the
    password neither hides a bad value nor lets its text into the error."""
    with pytest.raises(ConfigurationError) as refused:
        check_tls_options("amqps://app:pa?no_verify_ssl=fal@rabbit/?no_verify_ssl=0")
    assert "fal" not in str(refused.value).replace("false", "")


async def test_connect_refuses_a_bad_value_before_any_connection() -> None:
    """``AmqpTransport.connect`` fails with the ConfigurationError, not after a TLS handshake."""
    transport = AmqpTransport("amqps://app:s3cret@127.0.0.1:1/?no_verify_ssl=false")
    with pytest.raises(ConfigurationError, match="no_verify_ssl"):
        await transport.connect()
    await transport.close()
