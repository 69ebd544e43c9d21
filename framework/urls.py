"""URL helpers: never let a password reach a log line, repr or exception.

Redaction works on the raw string, not on ``urllib.parse``'s reading of it: a password with an
unescaped ``#``, ``?`` or ``/`` makes ``urlsplit`` end the user info early (the rest of the
password becomes a port, a path, a query or a fragment) and the password was printed in clear.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, unquote

import structlog

from framework.errors import ConfigurationError

__all__ = [
    "check_broker_url",
    "check_tls_options",
    "check_userinfo",
    "redact",
    "redact_query_passwords",
    "split_urls",
    "url_passwords",
]

log = structlog.get_logger(__name__)

# ``?password=...`` / ``&sslpassword=...`` in a URL's query (libpq and asyncpg read them).
_QUERY_PASSWORD = re.compile(r"(?P<key>[?&](?:ssl)?password=)[^&\s#'\"]*", re.IGNORECASE)
# In a whole URL (not a sentence) a query password runs to the next ``&`` or the end: an
# unescaped ``#`` in it is part of it, not a fragment.
_URL_QUERY_PASSWORD = re.compile(r"(?P<key>[?&](?:ssl)?password=)[^&]*", re.IGNORECASE)
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_PASSWORD_KEYS = ("password", "sslpassword")
# aiormq reads ``no_verify_ssl`` as "verify unless exactly 0": any other value turns it off.
_NO_VERIFY = "no_verify_ssl"


def redact_query_passwords(text: str) -> str:
    """Replace the value of every ``password=``/``sslpassword=`` query parameter in ``text``.

    >>> redact_query_passwords("postgresql://app@db/shop?sslmode=require&password=s3cret")
    'postgresql://app@db/shop?sslmode=require&password=***'
    """
    return _QUERY_PASSWORD.sub(r"\g<key>***", text)


def _split(url: str) -> tuple[str, str, str] | None:
    """``(scheme://, user info, rest after its @)`` of ``url``, or None without user info.

    The user info is everything between ``scheme://`` and the *last* ``@`` of the URL. An
    unescaped ``@``, ``#``, ``?``, ``/`` or ``:`` in a password is thereby part of it; an
    ``@`` in the path or the query of a URL with credentials makes the user info reach up to it,
    so more than the password is masked, never less (write such an ``@`` as ``%40``).
    """
    scheme = _SCHEME.match(url)
    if scheme is None:
        return None
    head = scheme.group()
    userinfo, at, rest = url[len(head) :].rpartition("@")
    if not at:
        return None
    return head, userinfo, rest


# Several URLs in one string, one per broker node: split where a comma starts a new URL, so a
# comma in a password (legal in user info) stays part of it.
_NEXT_URL = re.compile(r"\s*,\s*(?=[A-Za-z][A-Za-z0-9+.-]*://)")


def split_urls(text: str) -> list[str]:
    """The URLs of ``text``: one, or several separated by commas (one per broker node).

    >>> split_urls("amqp://a:p@n1/v, amqp://a:p@n2/v")
    ['amqp://a:p@n1/v', 'amqp://a:p@n2/v']
    """
    return [part for part in _NEXT_URL.split(text.strip()) if part]


def redact(url: str) -> str:
    """Return ``url`` with its password (and any ``password=`` in its query) as ``***``.

    Works on the raw string, for every scheme (``amqp``, ``amqps``, ``postgresql``, ``sqlite``,
    ``redis``...). The user info runs from ``scheme://`` to the last ``@`` of the URL, and the
    password is everything in it after the first ``:``: a password with an unescaped ``@``,
    ``#``, ``?``, ``/`` or ``:`` is masked whole, and the host after it stays visible. A URL
    whose path or query holds an unescaped ``@`` is masked up to that ``@`` (too much, not too
    little). A query password runs to the next ``&``.

    >>> redact("amqp://app:s3cret@rabbit:5672/shop")
    'amqp://app:***@rabbit:5672/shop'
    >>> redact("amqp://app:pa#ss?w/o@rd@rabbit/shop")
    'amqp://app:***@rabbit/shop'
    """
    urls = split_urls(url)
    if len(urls) > 1:
        return ",".join(redact(one) for one in urls)
    parts = _split(url)
    if parts is None:
        shown = url
    else:
        head, userinfo, rest = parts
        user, colon, _ = userinfo.partition(":")
        shown = f"{head}{user}:***@{rest}" if colon else url
    if "password=" in shown.lower():
        shown = _URL_QUERY_PASSWORD.sub(r"\g<key>***", shown)
    return shown


def url_passwords(url: str) -> list[str]:
    """The passwords in ``url`` (its user info's, and its query's), read as ``redact`` does.

    For scrubbing them from a library's error text, which may quote them: each as written and,
    where it differs, percent-decoded. Several URLs (``split_urls``): the passwords of all.
    """
    urls = split_urls(url)
    if len(urls) > 1:
        return list(dict.fromkeys(p for one in urls for p in url_passwords(one)))
    found: list[str] = []
    parts = _split(url)
    if parts is not None:
        _, userinfo, rest = parts
        _, colon, password = userinfo.partition(":")
        if colon and password:
            found.append(password)
        query = rest.partition("?")[2]
    else:
        query = url.partition("?")[2]
    for match in _URL_QUERY_PASSWORD.finditer("?" + query):
        value = match.group()[len(match.group("key")) :]
        if value:
            found.append(value)
    decoded = [unquote(value) for value in found]
    return list(dict.fromkeys(found + [value for value in decoded if value]))


def check_userinfo(url: str, *, what: str) -> None:
    """Refuse a password with an unescaped ``#``, ``?`` or ``/``.

    URL parsers (urllib, yarl, asyncpg) end the user info at the first of them: the rest of the
    password would be read as a port, a path or a query, the connection would fail with an
    error quoting that piece, or go to the wrong host.

    Raises:
        ConfigurationError: what to percent-encode.
    """
    parts = _split(url)
    if parts is None:
        return
    userinfo = parts[1]
    cut = min((i for i in map(userinfo.find, "#?/") if i >= 0), default=-1)
    if cut < 0:
        return
    # Up to the delimiter: "user:pass..." is a password cut short; "host:5671" (an "@" in the
    # query, after "/?") or no ":" at all is not, and the parsers read that URL right.
    _, colon, after = userinfo[:cut].partition(":")
    if not colon or after.isdigit():
        return
    char = userinfo[cut]
    escaped = {"#": "%23", "?": "%3F", "/": "%2F"}[char]
    raise ConfigurationError(
        f"the password in the {what} URL {redact(url)} holds an unescaped {char!r}: write it "
        f"percent-encoded, as {escaped}"
    )


def check_broker_url(url: str) -> bool:
    """``check_userinfo`` and ``check_tls_options`` of a RabbitMQ URL, before connecting.

    Returns whether the broker's certificate is verified.

    Raises:
        ConfigurationError: the URL needs changing; the message says how.
    """
    verified = True
    for one in split_urls(url):  # one per broker node
        check_userinfo(one, what="broker")
        verified = check_tls_options(one) and verified
    return verified


def check_tls_options(url: str) -> bool:
    """Check the TLS options of a broker URL; return whether the certificate is verified.

    aiormq turns certificate verification off for any ``no_verify_ssl`` other than ``0``
    (``false``, ``no``, an empty value...), so only ``0`` (verify, the default) and ``1`` (do not)
    are accepted. With verification off, a ``tls_verification_disabled`` warning is logged.

    Raises:
        ConfigurationError: ``no_verify_ssl`` is neither ``0`` nor ``1``, or given twice with
            different values.
    """
    # Read the query both as yarl (and so aiormq) does, from the first "?", and after the last
    # "@": a password holding "?" or "@" must not hide a value from this check.
    parts = _split(url)
    queries = {url.partition("?")[2], parts[2].partition("?")[2] if parts is not None else ""}
    values = [
        value
        for query in queries
        for key, value in parse_qsl(query.partition("#")[0], keep_blank_values=True)
        if key == _NO_VERIFY
    ]
    if any(value not in ("0", "1") for value in values):
        # The value is not quoted: read from the first "?", it may hold part of a password.
        raise ConfigurationError(
            f"{_NO_VERIFY} in the broker URL {redact(url)} is neither 0 nor 1: write "
            f"{_NO_VERIFY}=0 (or leave it out) to verify the broker's certificate, or "
            f"{_NO_VERIFY}=1 to turn verification off"
        )
    if len(set(values)) > 1:
        raise ConfigurationError(
            f"{_NO_VERIFY} is given twice with different values in the broker URL {redact(url)}: "
            f"write {_NO_VERIFY}=0 or {_NO_VERIFY}=1 once"
        )
    verified = not values or values[0] == "0"
    if not verified and url.lower().startswith("amqps://"):
        log.warning("tls_verification_disabled", url=redact(url))
    return verified
