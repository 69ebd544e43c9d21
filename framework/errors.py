"""One rooted hierarchy for everything leveret raises.

Each error carries structured fields next to its message, so logs and callers can act on them
without parsing text.
"""

from __future__ import annotations

__all__ = [
    "AccessRefused",
    "BreakerOpen",
    "BrokerAccessDenied",
    "BrokerUnreachable",
    "ConfigurationError",
    "ContractError",
    "DecodeFailure",
    "HandlerTimeout",
    "LeveretError",
    "NotEncodable",
    "PublishFailed",
    "PublishNacked",
    "PublishTimeout",
    "QueryFailed",
    "QueryTimeout",
    "RegistrationError",
    "ReplyLost",
    "TLSVerificationFailed",
    "TransportClosed",
    "Unroutable",
    "WrongBus",
]


class LeveretError(Exception):
    """Base of every error leveret raises on purpose."""


class ConfigurationError(LeveretError):
    """The app, a URL or an option is set up wrongly; the message says what to change."""


class RegistrationError(ConfigurationError):
    """A handler or contract cannot be registered as written."""


class ContractError(RegistrationError):
    """A message class does not follow the contract rules (wire name, version, base class)."""


class WrongBus(LeveretError, TypeError):
    """A message was sent on a bus that does not carry its kind (a query via ``send``...)."""


class BrokerUnreachable(LeveretError):
    """The broker could not be reached in time. ``url`` has its password redacted."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach the broker at {url}: {reason}")
        self.url = url
        self.reason = reason


class TLSVerificationFailed(BrokerUnreachable, ConfigurationError):
    """The broker's TLS certificate was not trusted (unknown CA, wrong host name, expired).

    Also a ``ConfigurationError``: trying again fails the same way until the URL's CA (or the
    broker's certificate) is changed, so ``leveret run`` exits 2 at once.

    Args:
        url: the broker URL, password redacted.
        host: the host the certificate was checked against.
        detail: what the TLS library said was wrong.
    """

    def __init__(self, url: str, host: str, detail: str) -> None:
        super().__init__(
            url,
            f"TLS certificate verification failed for host {host!r}: {detail}; trust the CA "
            "that signed the broker's certificate with ?cafile=/path/to/ca.pem in the URL",
        )
        self.host = host
        self.detail = detail


class BrokerAccessDenied(BrokerUnreachable, ConfigurationError):
    """The broker answered but refused the connection: wrong credentials, no permission on the
    vhost, or no such vhost. Retrying cannot help until the URL or the broker's users change.

    A ``BrokerUnreachable`` too (``str()`` is the explanation, not "cannot reach"), so code that
    handles a failed connect still does; a ``ConfigurationError`` first of all.

    Args:
        url: the broker URL, password redacted.
        user: the user that tried to log in.
        vhost: the vhost it asked for.
        cause: ``credentials``, ``vhost_permission``, ``vhost_missing``, or ``vhost_refused``
            (one of the last two, when the broker's text did not say which).
        detail: what the broker said (``ACCESS_REFUSED - Login was refused ...``).
    """

    def __init__(self, url: str, *, user: str, vhost: str, cause: str, detail: str) -> None:
        if cause == "credentials":
            what = (
                f"wrong credentials: the broker at {url} refused the login of user {user!r} "
                f"({detail}); check the user name and password in the broker URL"
            )
            if user == "guest":
                what += " (RabbitMQ lets guest log in from localhost only)"
        elif cause == "vhost_permission":
            what = (
                f"no permission on vhost {vhost!r}: user {user!r} may not use it on the broker "
                f"at {url} ({detail}); grant it (rabbitmqctl set_permissions -p {vhost} {user} "
                "...) or name a vhost it may use in the broker URL"
            )
        elif cause == "vhost_missing":
            what = (
                f"vhost {vhost!r} does not exist on the broker at {url} ({detail}); create it "
                f"(rabbitmqctl add_vhost {vhost}) or fix the vhost in the broker URL"
            )
        else:
            what = (
                f"vhost {vhost!r} does not exist on the broker at {url}, or user {user!r} has "
                f"no permission on it ({detail}); fix the vhost in the broker URL or the "
                "user's permissions"
            )
        # Not BrokerUnreachable.__init__: its message begins "cannot reach the broker".
        ConfigurationError.__init__(self, what)
        self.url = url
        self.reason = what
        self.user = user
        self.vhost = vhost
        self.cause = cause
        self.detail = detail


class TransportClosed(LeveretError):
    """The transport was used after ``close()`` or before ``connect()``."""


class PublishFailed(LeveretError):
    """A publish was not accepted by the broker.

    Args:
        exchange: where the message was published.
        routing_key: the routing key used.
    """

    def __init__(self, message: str, *, exchange: str, routing_key: str) -> None:
        super().__init__(message)
        self.exchange = exchange
        self.routing_key = routing_key


class AccessRefused(PublishFailed, ConfigurationError):
    """The broker refused a publish: the connection's user may not write to that exchange.

    RabbitMQ answers ``403 ACCESS_REFUSED`` and closes the channel; retrying cannot help until
    the user's permissions or the app's credentials change, so it is a configuration error.

    Args:
        user: the RabbitMQ user the transport connected as.
    """

    def __init__(self, message: str, *, exchange: str, routing_key: str, user: str) -> None:
        super().__init__(message, exchange=exchange, routing_key=routing_key)
        self.user = user


class Unroutable(PublishFailed):
    """The broker returned a mandatory message: no queue is bound for its routing key."""


class PublishNacked(PublishFailed):
    """The broker nacked the publish (queue full with ``reject-publish``, internal error)."""


class NotEncodable(PublishFailed, ValueError):
    """The message cannot be put on the wire as it is: a header value of a type or range AMQP
    has no encoding for, a string property over 255 bytes. Publishing it again fails the same
    way, so it is never retried."""


class PublishTimeout(PublishFailed):
    """No confirm arrived within the deadline: send the message again with the same message id.

    Args:
        may_be_delivered: False when the message never reached a channel (no connection came
            back in time), so nothing was delivered; True when the outcome is unknown.
    """

    def __init__(
        self, message: str, *, exchange: str, routing_key: str, may_be_delivered: bool = True
    ) -> None:
        super().__init__(message, exchange=exchange, routing_key=routing_key)
        self.may_be_delivered = may_be_delivered


class BreakerOpen(PublishFailed):
    """A circuit breaker refused the call: its downstream is failing, so nothing was published.

    A future outbox relay catches this to keep the row (and the rows after it for the same
    destination) parked until ``retry_after``; a query without a fallback fails fast with it.

    Args:
        breaker: the name of the breaker (the downstream it guards).
        state: the breaker's state (``open``, ``half_open``, ``forced_open``).
        retry_after: seconds until the breaker lets a probe through; None when that depends on
            an operator or on the broker lifting a resource alarm.
        reason: why the breaker is open (``failure_rate``, ``connection_blocked``...).
    """

    def __init__(
        self,
        breaker: str,
        *,
        state: str,
        retry_after: float | None,
        exchange: str = "",
        routing_key: str = "",
        reason: str | None = None,
    ) -> None:
        target = f" for {routing_key!r}" if routing_key else ""
        if retry_after is not None:
            when = f"a probe may go in {retry_after:.3g}s"
        elif state == "forced_open":
            when = "until an operator closes it"
        else:
            when = "until the cause is lifted"
        why = f" ({reason})" if reason else ""
        super().__init__(
            f"circuit breaker {breaker!r} is {state}{why}{target}: nothing was sent, {when}",
            exchange=exchange,
            routing_key=routing_key,
        )
        self.breaker = breaker
        self.state = state
        self.retry_after = retry_after
        self.reason = reason

    @property
    def destination(self) -> str:
        """The routing key refused, or the breaker's name when the call had none."""
        return self.routing_key or self.breaker


class DecodeFailure(LeveretError):
    """An incoming message cannot be turned into a registered contract.

    ``reason`` is the short machine-readable text put into the DLQ header, e.g.
    ``validation_error: Expected `int`, got `str` - at `$.items[0].qty```.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class HandlerTimeout(LeveretError):
    """A handler ran past its deadline."""


class QueryTimeout(LeveretError, TimeoutError):
    """No reply to a query arrived in time."""

    def __init__(self, query: str, timeout: float) -> None:
        super().__init__(f"query {query!r} got no reply within {timeout:g}s")
        self.query = query
        self.timeout = timeout


class ReplyLost(LeveretError):
    """The connection a query went out on was lost before its reply came (a broker node went
    down): no reply can come any more. The query may or may not have been handled; asking again
    is safe, as queries change nothing.

    Args:
        query: the query's wire name.
        node: the broker node (redacted) whose connection was lost.
    """

    def __init__(self, query: str, node: str) -> None:
        super().__init__(
            f"query {query!r}: the connection to {node} was lost before the reply; ask again"
        )
        self.query = query
        self.node = node


class QueryFailed(LeveretError):
    """The query handler raised; ``error_type`` and ``error`` come from its reply."""

    def __init__(self, query: str, error_type: str, error: str) -> None:
        super().__init__(f"query {query!r} failed in its handler: {error_type}: {error}")
        self.query = query
        self.error_type = error_type
        self.error = error
