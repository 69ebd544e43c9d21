"""What RabbitMQ and aiormq raise, as leveret's errors, with every password scrubbed."""

from __future__ import annotations

import re
import ssl
import struct
from urllib.parse import urlsplit

import structlog
from aiormq.exceptions import (
    AMQPError,
    ChannelAccessRefused,
    ChannelInvalidStateError,
    ChannelNotFoundEntity,
    ChannelPreconditionFailed,
    ConnectionNotAllowed,
    DeliveryError,
    InvalidFrameError,
    ProbableAuthenticationError,
    PublishError,
)

from framework.errors import (
    AccessRefused,
    BrokerAccessDenied,
    BrokerUnreachable,
    LeveretError,
    NotEncodable,
    PublishFailed,
    PublishNacked,
    PublishTimeout,
    TLSVerificationFailed,
    TransportClosed,
    Unroutable,
)
from framework.transport.amqp._config import user_of, vhost_of
from framework.urls import redact, url_passwords

__all__ = [
    "LOST",
    "UNENCODABLE",
    "BrokerErrors",
    "broker_text",
    "describe",
    "not_encodable",
]

log = structlog.get_logger("framework.transport.amqp")

# Errors of a channel or connection that went away under us; the broker requeues what we held.
LOST = (AMQPError, ChannelInvalidStateError, ConnectionError, RuntimeError)
# What encoding a message for the wire raises when AMQP cannot carry it: a header value of no
# AMQP type or out of range, a short string over 255 bytes. Never retried: see NotEncodable.
UNENCODABLE = (TypeError, ValueError, OverflowError, struct.error, RecursionError)

# RabbitMQ's text of a refused publish: "ACCESS_REFUSED - access to exchange 'x' in vhost ...".
_REFUSED_EXCHANGE = re.compile(r"access to exchange '([^']*)'")
# ... and of a user_id that is not the connection's user (it closes the channel, 406).
_REFUSED_USER_ID = re.compile(r"user_id property set to '([^']*)' but authenticated user was")
# RabbitMQ's answers (530 NOT_ALLOWED) to connection.open for a vhost that does not exist and
# for one the user has no permission on. Anchored at the end: "access to vhost 'v' refused for
# user 'u': connection limit (5) is reached" is a limit, which passes, not a missing permission.
_VHOST_MISSING = re.compile(r"vhost .* not found$")
_VHOST_REFUSED = re.compile(r"access to vhost '.*' refused for user '[^']*'$")


def broker_text(exc: BaseException) -> str:
    """The broker's own text of an error (``ACCESS_REFUSED - ...``), else its repr."""
    return str(exc.args[0]) if exc.args else repr(exc)


def describe(exc: BaseException) -> str:
    """``Type: text`` of an error, for a log line (scrub it before logging)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def not_encodable(exc: BaseException, exchange: str, routing_key: str) -> NotEncodable:
    """The error of a message that AMQP cannot carry (``exc`` from encoding it)."""
    return NotEncodable(
        f"the message cannot be put on the wire: {exc}",
        exchange=exchange,
        routing_key=routing_key,
    )


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the errors behind it (aiormq and aio-pika wrap them), outermost first."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not e for e in seen):
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _certificate_error(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification failure behind ``exc``, if any."""
    for error in _chain(exc):
        if isinstance(error, ssl.SSLCertVerificationError):
            return error
    return None


def _refusal(exc: BaseException) -> tuple[str, str] | None:
    """``(cause, broker's text)`` when ``exc`` is the broker refusing the login or the vhost
    (see ``BrokerAccessDenied``), else None: a refused port, a timeout, a limit are not."""
    for error in _chain(exc):
        text = broker_text(error)
        if isinstance(error, ProbableAuthenticationError):  # 403 in answer to start-ok
            return "credentials", text
        if isinstance(error, ConnectionNotAllowed):  # 530, told by _aiormq_handshake
            if _VHOST_MISSING.search(text):
                return "vhost_missing", text
            if _VHOST_REFUSED.search(text):
                return "vhost_permission", text
            return None
        if (
            isinstance(error, InvalidFrameError)  # an aiormq that _aiormq_handshake cannot patch
            and "Connection.OpenOk" in text
            and "Connection.Close" in text
        ):
            return "vhost_refused", "NOT_ALLOWED in answer to connection.open"
    return None


class BrokerErrors:
    """Maps the errors of one broker URL to leveret's; no message carries its password.

    Args:
        url: the broker URL, as given (read for its user and passwords only).
        publish_timeout: the confirm deadline that a ``PublishTimeout`` names.
    """

    def __init__(self, url: str, *, publish_timeout: float) -> None:
        self._url = url
        self.safe_url = redact(url)
        self._publish_timeout = publish_timeout

    def scrub(self, text: str) -> str:
        """``text`` without the password, in case a library error quoted the URL."""
        for password in url_passwords(self._url):  # read from the raw string, as redact does
            text = text.replace(password, "***")
        return text

    def unreachable(self, reason: str) -> BrokerUnreachable:
        return BrokerUnreachable(self.safe_url, self.scrub(reason))

    def access_denied(self, exc: BaseException) -> BrokerAccessDenied | None:
        """The error of a login or vhost the broker refused (``exc`` from connecting), else
        None."""
        refusal = _refusal(exc)
        if refusal is None:
            return None
        cause, detail = refusal
        return BrokerAccessDenied(
            self.safe_url,
            user=user_of(self._url),
            vhost=vhost_of(self._url),
            cause=cause,
            detail=self.scrub(detail),
        )

    def connect_failed(self, exc: BaseException, timeout: float) -> BrokerUnreachable:
        """Why connecting failed: a refused login or vhost, an untrusted certificate, a timeout,
        or what was raised."""
        denied = self.access_denied(exc)
        if denied is not None:
            return denied
        untrusted = _certificate_error(exc)
        if untrusted is not None:
            host = urlsplit(self._url).hostname or ""
            detail = untrusted.verify_message or str(untrusted)
            return TLSVerificationFailed(self.safe_url, host, self.scrub(detail))
        reason = f"no connection within {timeout:g}s"
        if not isinstance(exc, TimeoutError):
            reason = f"{type(exc).__name__}: {exc}"
        return self.unreachable(reason)

    def publish_error(
        self,
        exc: BaseException,
        exchange: str,
        routing_key: str,
        user_id: str | None = None,
        *,
        connected: bool,
    ) -> LeveretError:
        """The error of a publish to ``exchange`` that failed with ``exc``."""
        where = {"exchange": exchange, "routing_key": routing_key}
        if isinstance(exc, ChannelPreconditionFailed):
            refused = _REFUSED_USER_ID.search(broker_text(exc))
            if refused is not None and user_id and refused.group(1) == user_id:
                return self._user_id_refused(exc, exchange, routing_key)
        if isinstance(exc, ChannelAccessRefused):
            refused = _REFUSED_EXCHANGE.search(broker_text(exc))
            if refused is None or refused.group(1) == exchange:
                return self._access_refused(exc, exchange, routing_key)
            # Another publish on the shared channel was refused and the broker closed it
            # before confirming this one: its outcome is unknown, as with a lost connection.
            return PublishTimeout(
                f"the publish channel closed before the confirm ({broker_text(exc)}); "
                "retry with the same message id",
                exchange=exchange,
                routing_key=routing_key,
            )
        if isinstance(exc, PublishError):
            return Unroutable(f"no queue is bound to {exchange!r} for {routing_key!r}", **where)
        if isinstance(exc, DeliveryError):
            return PublishNacked(f"the broker refused the message (not delivered): {exc}", **where)
        if isinstance(exc, TimeoutError):
            return PublishTimeout(
                f"no confirm within {self._publish_timeout:g}s: the message may have been "
                "delivered; send it again with the same message id",
                exchange=exchange,
                routing_key=routing_key,
            )
        if isinstance(exc, ChannelNotFoundEntity):
            return PublishFailed(f"exchange {exchange!r} does not exist: {exc}", **where)
        if not connected:
            return TransportClosed("the transport is not connected (or already closed)")
        return PublishTimeout(
            f"connection lost before the confirm ({exc!r}): the message may have been "
            "delivered; send it again with the same message id",
            exchange=exchange,
            routing_key=routing_key,
        )

    def _access_refused(self, exc: BaseException, exchange: str, routing_key: str) -> AccessRefused:
        # Not retried: the channel is gone and the same publish would be refused again.
        user = urlsplit(self._url).username or "guest"
        log.error("publish_access_refused", exchange=exchange, routing_key=routing_key, user=user)
        return AccessRefused(
            f"RabbitMQ user {user!r} may not publish to exchange {exchange!r} "
            f"({broker_text(exc)}): grant it write permission on that exchange "
            "(rabbitmqctl set_permissions) or publish with the credentials meant for it",
            exchange=exchange,
            routing_key=routing_key,
            user=user,
        )

    def _user_id_refused(
        self, exc: BaseException, exchange: str, routing_key: str
    ) -> AccessRefused:
        # Final like ACCESS_REFUSED: the same user_id would be refused again.
        user = user_of(self._url)
        log.error("publish_user_id_refused", exchange=exchange, user=user)
        return AccessRefused(
            f"RabbitMQ refused the publish to exchange {exchange!r}: {broker_text(exc)}; "
            "publish with the connection's own user as user_id, or without one",
            exchange=exchange,
            routing_key=routing_key,
            user=user,
        )
