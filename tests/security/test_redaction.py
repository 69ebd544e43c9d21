"""The redaction helpers on URLs that are odd but real: no part of a password survives.

Redaction works on the raw string: the user info runs from ``scheme://`` to the last ``@``, so
a password with an unescaped ``#``, ``?``, ``/``, ``@`` or ``:`` is masked whole. The CLI tests
run ``leveret dlq`` and ``leveret sagas`` with such URLs and search their output for the secret.
"""

from __future__ import annotations

import os
import re
import string
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from framework import ConfigurationError
from framework.cli import main
from framework.logging import redact_text
from framework.store.postgres import PostgresStore
from framework.transport.amqp import AmqpTransport
from framework.urls import redact, split_urls, url_passwords

PROJECT = Path(__file__).resolve().parents[2]
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


# Unescaped characters that end the user info for urlsplit (and yarl): each leaked the rest.
ODD = {
    "hash": "Kx7q#Zr4w",
    "question": "Kx7q?Zr4w",
    "slash": "Kx7q/Zr4w",
    "at": "Kx7q@Zr4w",
    "colon": "Kx7q:Zr4w",
    "percent": "Kx7q%2FZr4w%",
    "all": "Kx7q#Zr4w?Mp2j/Vt9e@Lc3n:Qh8s%Wy5d",
}


def leaked(password: str, printed: str) -> list[str]:
    """The pieces of ``password`` (between its delimiters) that appear in ``printed``."""
    pieces = [p for p in re.split(r"[#?/@:%]", password) if len(p) >= 4]
    return [piece for piece in pieces if piece in printed]


SCHEMES = ("amqp", "amqps", "postgresql", "postgres", "sqlite", "redis")


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("password", ODD.values(), ids=ODD.keys())
def test_redact_masks_passwords_with_unescaped_delimiters(scheme: str, password: str) -> None:
    """A password with ``#``, ``?``, ``/``, ``@``, ``:`` or ``%`` is masked whole, and the host,
    port, path and query after it stay as they were, for every scheme."""
    url = f"{scheme}://app:{password}@db.example:5672/shop?sslmode=require"
    assert redact(url) == f"{scheme}://app:***@db.example:5672/shop?sslmode=require"
    assert url_passwords(url)[0] == password


_PRINTABLE = st.text(
    alphabet=st.characters(codec="utf-8", categories=("L", "N", "P", "S", "Zs"))
    | st.sampled_from("#?@/:%&=[] "),
    min_size=1,
    max_size=40,
)
_NAME = st.text(alphabet=string.ascii_letters + string.digits + "._-", min_size=1, max_size=12)
_PATH = st.text(alphabet=string.ascii_letters + string.digits + "/._-%", max_size=20)
_QUERY = st.sampled_from(["", "?sslmode=require", "?cafile=/etc/ca.pem&heartbeat=10", "#frag"])


@given(user=_NAME, password=_PRINTABLE, nodes=st.integers(min_value=2, max_value=4))
def test_several_node_urls_are_split_and_redacted_each(
    user: str, password: str, nodes: int
) -> None:
    """A comma-separated list of node URLs (a password may hold commas) is split into its URLs,
    and each shows its host with the password masked."""
    assume("://" not in password)
    urls = [f"amqp://{user}:{password}@node{i}:5672/shop" for i in range(nodes)]
    joined = ",".join(urls)
    assert split_urls(joined) == urls
    assert split_urls(" , ".join(urls)) == urls
    assert redact(joined) == ",".join(f"amqp://{user}:***@node{i}:5672/shop" for i in range(nodes))
    assert password in url_passwords(joined)


@given(
    scheme=st.sampled_from(SCHEMES),
    user=_NAME,
    password=_PRINTABLE,
    host=st.sampled_from(["rabbit", "10.0.0.7", "[::1]", "db.example.com"]),
    port=st.sampled_from(["", ":5672", ":5432"]),
    path=_PATH,
    query=_QUERY,
)
def test_no_printable_password_survives_redaction(
    scheme: str, user: str, password: str, host: str, port: str, path: str, query: str
) -> None:
    """Any password of printable characters (``#?@/:%`` included) is replaced by ``***`` whole;
    user, host, port, path and query stay visible."""
    url = f"{scheme}://{user}:{password}@{host}{port}/{path}{query}"
    expected = f"{scheme}://{user}:***@{host}{port}/{path}{query}"
    shown = redact(url)
    assert shown == expected
    assert host in shown
    assume(password not in expected)
    assert password not in shown


@given(
    user=_NAME,
    password=_PRINTABLE.filter(lambda p: not any(c.isspace() for c in p)),
    host=st.sampled_from(["rabbit", "db.example.com"]),
)
def test_no_password_survives_redaction_in_a_log_line(user: str, password: str, host: str) -> None:
    """The log processor's redaction masks any password without whitespace inside a sentence."""
    text = redact_text(f"connecting to amqp://{user}:{password}@{host}:5672/shop failed")
    assert text == f"connecting to amqp://{user}:***@{host}:5672/shop failed"


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


@pytest.mark.parametrize("password", ODD.values(), ids=ODD.keys())
def test_a_postgres_store_shows_its_url_without_the_password(password: str) -> None:
    """A PostgreSQL store's url, repr and scrubbed secrets hide a password of any shape."""
    store = f"postgresql://app:{password}@127.0.0.1:1/test?connect_timeout=1"
    try:
        shown = repr(PostgresStore(store))
    except ConfigurationError as exc:  # an unescaped # ? / is refused, saying so
        shown = str(exc)
        assert "percent-encoded" in shown
    else:
        assert "postgresql://app:***@127.0.0.1:1/test" in shown
    assert not leaked(password, shown)


def _leveret(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """Run ``leveret ARGV`` in this process; its exit code and everything it printed."""
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out + err


@pytest.mark.parametrize("password", ODD.values(), ids=ODD.keys())
def test_leveret_dlq_never_prints_the_password(
    capsys: pytest.CaptureFixture[str], password: str
) -> None:
    """``leveret dlq list/show/replay`` with such a broker URL fail without the password."""
    url = f"amqp://app:{password}@127.0.0.1:1/shop"
    for action in (("list", "q"), ("show", "q"), ("replay", "q", "--all")):
        code, printed = _leveret(capsys, "dlq", *action, "--amqp-url", url, "--timeout", "1")
        assert code in (2, 3), printed
        assert not leaked(password, printed), printed
        assert "app:***@" in printed


def _subprocess(*argv: str) -> tuple[int, str]:
    """Run ``python -m framework ARGV`` (``sagas`` configures the process's logging); its exit
    code and everything it printed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEVERET_")}
    done = subprocess.run(
        [sys.executable, "-m", "framework", *argv],
        cwd=PROJECT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr


@pytest.mark.parametrize("password", ODD.values(), ids=ODD.keys())
def test_leveret_sagas_never_prints_the_password(password: str, tmp_path: Path) -> None:
    """``leveret sagas list`` with such a store URL, and ``sagas resume`` with such a broker
    URL, fail without the password."""
    store = f"postgresql://app:{password}@127.0.0.1:1/test?connect_timeout=1"
    code, printed = _subprocess("sagas", "list", "handlers.app:app", "--db-url", store)
    assert code in (2, 3), printed
    assert not leaked(password, printed), printed
    broker = f"amqp://app:{password}@127.0.0.1:1/shop"
    code, printed = _subprocess(
        "sagas",
        "resume",
        "handlers.app:app",
        "order-1",
        "--db-url",
        f"sqlite:///{tmp_path / 'shop.db'}",
        "--amqp-url",
        broker,
        "--connect-timeout",
        "1",
    )
    assert code in (2, 3), printed
    assert not leaked(password, printed), printed
    assert "app:***@" in printed
