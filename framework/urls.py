"""URL helpers: never let a password reach a log line, repr or exception."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

__all__ = ["redact", "redact_query_passwords"]

# ``?password=...`` / ``&sslpassword=...`` in a URL's query (libpq and asyncpg read them).
_QUERY_PASSWORD = re.compile(r"(?P<key>[?&](?:ssl)?password=)[^&\s#'\"]*", re.IGNORECASE)


def redact_query_passwords(text: str) -> str:
    """Replace the value of every ``password=``/``sslpassword=`` query parameter in ``text``.

    >>> redact_query_passwords("postgresql://app@db/shop?sslmode=require&password=s3cret")
    'postgresql://app@db/shop?sslmode=require&password=***'
    """
    return _QUERY_PASSWORD.sub(r"\g<key>***", text)


def redact(url: str) -> str:
    """Return ``url`` with its password (and any ``password=`` in its query) as ``***``.

    >>> redact("amqp://app:s3cret@rabbit:5672/shop")
    'amqp://app:***@rabbit:5672/shop'
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    masked = parts
    if "password=" in parts.query.lower():
        masked = masked._replace(query=redact_query_passwords("?" + parts.query)[1:])
    # Split the user info off by hand: ``parts.port`` raises on a bad port, and a password with
    # an unescaped ``@`` must be masked whole (the host follows the last ``@``).
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if at and ":" in userinfo:
        masked = masked._replace(netloc=f"{userinfo.split(':', 1)[0]}:***@{hostport}")
    return url if masked is parts else urlunsplit(masked)
