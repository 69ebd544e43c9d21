"""Refused logins and vhosts told apart from outages, and the client libraries' loss lines
told apart from the rest, without a broker."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog
from aiormq.exceptions import (
    ConnectionClosed,
    ConnectionNotAllowed,
    InvalidFrameError,
    ProbableAuthenticationError,
)

from framework.errors import BrokerAccessDenied
from framework.logging import configure_logging
from framework.transport.amqp import _aiormq_handshake
from framework.transport.amqp._errors import BrokerErrors

URL = "amqp://app:s3cret@rabbit:5672/shop"


def errors(url: str = URL) -> BrokerErrors:
    return BrokerErrors(url, publish_timeout=1.0)


@pytest.mark.parametrize(
    ("exc", "cause"),
    [
        (ProbableAuthenticationError("ACCESS_REFUSED - Login was refused"), "credentials"),
        (ConnectionNotAllowed("NOT_ALLOWED - vhost shop not found"), "vhost_missing"),
        (
            ConnectionNotAllowed("NOT_ALLOWED - access to vhost 'shop' refused for user 'app'"),
            "vhost_permission",
        ),
        (
            InvalidFrameError(
                "Expected one of ['Connection.OpenOk'], got <Connection.Close object at 0x1>"
            ),
            "vhost_refused",
        ),
    ],
)
def test_refusals_are_named_with_user_and_vhost(exc: BaseException, cause: str) -> None:
    """Each refusal of the login or the vhost becomes a BrokerAccessDenied of its cause,
    naming the user and the vhost and never the password."""
    denied = errors().access_denied(exc)
    assert denied is not None
    assert (denied.cause, denied.user, denied.vhost) == (cause, "app", "shop")
    assert denied.url == "amqp://app:***@rabbit:5672/shop"
    assert "s3cret" not in str(denied) + repr(denied)
    assert errors().connect_failed(exc, 5.0) is not None
    assert isinstance(errors().connect_failed(exc, 5.0), BrokerAccessDenied)


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError(111, "Connection refused"),
        TimeoutError(),
        ConnectionClosed(320, "CONNECTION_FORCED - broker forced connection closure"),
        ConnectionNotAllowed(
            "NOT_ALLOWED - access to vhost 'shop' refused for user 'app': "
            "connection limit (5) is reached"
        ),
        ConnectionNotAllowed("NOT_ALLOWED - vhost shop is down"),
    ],
)
def test_outages_and_limits_are_not_refusals(exc: BaseException) -> None:
    """A refused port, a timeout, a forced close, a connection limit or a vhost that is down
    can pass: they stay BrokerUnreachable, retried."""
    assert errors().access_denied(exc) is None
    assert not isinstance(errors().connect_failed(exc, 5.0), BrokerAccessDenied)


def test_the_default_vhost_and_user_are_named_as_aiormq_uses_them() -> None:
    """A URL without a user or a vhost names guest and ``/``, as the client logs in."""
    denied = errors("amqp://rabbit").access_denied(ProbableAuthenticationError("ACCESS_REFUSED"))
    assert denied is not None
    assert (denied.user, denied.vhost) == ("guest", "/")
    assert "RabbitMQ lets guest log in from localhost only" in str(denied)


def test_the_installed_aiormq_has_the_handshake_step_the_patch_wraps() -> None:
    """``_aiormq_handshake`` can wrap the installed aiormq (else a missing vhost and a missing
    permission are reported together): review it when aiormq changes."""
    assert _aiormq_handshake.install()
    assert _aiormq_handshake.install()  # once only


@pytest.fixture
def worker_log() -> Iterator[io.StringIO]:
    """The standard library's records as a worker logs them (JSON), then undone."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    stream = io.StringIO()
    configure_logging(json=True, stream=stream)
    try:
        yield stream
    finally:
        structlog.reset_defaults()
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        root.setLevel(level)


def reader_exited(error: BaseException) -> None:
    try:
        raise error
    except BaseException as exc:
        logging.getLogger("aiormq.connection").warning(
            "Cancelling cause reader exited abnormally", exc_info=exc
        )


def test_aiormqs_lines_about_a_lost_connection_are_dropped(worker_log: io.StringIO) -> None:
    """aiormq's ERROR and traceback about a connection the broker closed or reset are left
    out (the transport logs the loss once); a reader that died of a malformed frame, and its
    other lines, pass."""
    aiormq = logging.getLogger("aiormq.connection")
    aiormq.error(
        'Unexpected connection close from remote "%s", Connection.Close(reply_code=%r, '
        "reply_text=%r)",
        "amqp://guest:******@h/",
        320,
        "CONNECTION_FORCED",
    )
    aiormq.error("error when creating transport: %r", ConnectionRefusedError(111, "refused"))
    reader_exited(ConnectionClosed(320, "CONNECTION_FORCED"))
    reader_exited(ConnectionResetError(104, "Connection reset by peer"))
    logging.getLogger("aiormq.channel").warning(
        "Closing channel %r because RPC call %s cancelled", "<Channel 1>", "<Channel.Open>"
    )
    reader_exited(ValueError("bad frame"))
    aiormq.warning("Connection %r was blocked by: %r", "c", "low on memory")
    logged = [json.loads(line) for line in worker_log.getvalue().splitlines()]
    assert [e["event"] for e in logged] == [
        "Cancelling cause reader exited abnormally",
        "Connection 'c' was blocked by: 'low on memory'",
    ]
    assert "ValueError: bad frame" in logged[0]["exception"]
