"""aio-pika's robust connection, reconnecting to the next broker node instead of the same one.

Patch of third-party internals, tested against aio-pika 10.2.x (``_compat.TESTED``). aio-pika's
``RobustConnection`` has one URL: after a loss it retries that node until it is back, so a
rebooting node stops every client connected to it. Its reconnect loop (the private
``__connection_factory``) starts every attempt by setting ``self.transport = None`` and then
connects to ``self.url``. ``FailoverConnection`` makes both of these properties: each attempt
after the first moves ``url`` on to the next node of its list, round robin, so a lost node is
skipped at once and the client is back on another node within a reconnect interval or two. All
that aio-pika restores on a reconnect (channels, QoS, exchanges, queues, bindings, consumers)
is restored on whichever node answers: on a cluster they are the same everywhere.

With a single node nothing changes. Every node must take the same credentials, vhost and
options: aio-pika reads the connection's options from the first URL.

aio-pika logs a failed reconnect attempt and goes on; ``on_attempt_failed`` hears it (a wrap of
the private ``__connect_transport``), so that the transport can say why the connection is not
coming back (a password changed meanwhile) instead of looping silently. Should aio-pika rename
it, attempts go unheard and only the watchdog's bound reports the outage.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from aio_pika import RobustConnection
from yarl import URL

__all__ = ["FailoverConnection"]


class FailoverConnection(RobustConnection):
    """A robust connection over ``nodes``, starting at ``nodes[first]``.

    Args:
        nodes: one URL per broker node (as ``robust_url`` builds them).
        first: the node of the first attempt.
    """

    def __init__(self, nodes: Sequence[URL], *, first: int = 0, **kwargs: Any) -> None:
        if not nodes:
            raise ValueError("a connection needs at least one node")
        self._nodes = list(nodes)
        self._node = first % len(nodes)
        self._attempts = 0
        self._transport: Any = None
        super().__init__(self._nodes[self._node], **kwargs)
        self._attempts = 0  # Connection.__init__ set transport = None: not an attempt
        #: Called with the error of each failed connection attempt, the first one included.
        self.on_attempt_failed: Callable[[BaseException], None] | None = None

    @property  # aio-pika declares a plain attribute; every assignment goes through here
    def url(self) -> URL:
        """The node of the current (or last) connection attempt."""
        return self._nodes[self._node]

    @url.setter
    def url(self, value: URL) -> None:
        # Connection.__init__ sets the first node; update_secret sets a new password: every
        # node logs in with the same credentials.
        if value.password != self._nodes[self._node].password:
            self._nodes = [node.with_password(value.password) for node in self._nodes]

    @property  # aio-pika declares a plain attribute; every assignment goes through here
    def transport(self) -> Any:
        return self._transport

    @transport.setter
    def transport(self, value: Any) -> None:
        if value is None:
            # aio-pika's reconnect loop starts each connection attempt here.
            self._attempts += 1
            if self._attempts > 1:
                self._node = (self._node + 1) % len(self._nodes)
        self._transport = value

    @property
    def node(self) -> int:
        """The index in ``nodes`` of the current node."""
        return self._node

    @property
    def open_channels(self) -> int:
        """How many of the channels aio-pika restores are open now."""
        channels = getattr(self, "_RobustConnection__channels", ())
        return sum(1 for channel in tuple(channels) if not channel.is_closed)

    # aio-pika's reconnect loop calls this name-mangled private method for every attempt; mypy
    # does not mangle names, hence its ignore below.
    async def _RobustConnection__connect_transport(self) -> None:
        try:
            await super()._RobustConnection__connect_transport()  # type: ignore[misc]
        except Exception as exc:  # not CancelledError: a close, not a failed attempt
            if self.on_attempt_failed is not None:
                self.on_attempt_failed(exc)
            raise
