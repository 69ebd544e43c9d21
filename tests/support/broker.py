"""Control of the RabbitMQ broker the tests run against: reachability and ``rabbitmqctl``.

``rabbitmqctl`` needs root (or the rabbitmq user) on the broker's machine; callers check
``rabbitmqctl_available()`` and degrade (skip, or share the default vhost) when it is not. When
the session's broker runs in a container (``tests.support.containers``), ``rabbitmqctl`` runs
inside it instead (``use_rabbitmqctl``); ``node=`` always means a local node.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Callable, Sequence
from urllib.parse import quote, unquote, urlsplit, urlunsplit

__all__ = [
    "DEFAULT_AMQP_URL",
    "Rabbitmqctl",
    "RabbitmqctlError",
    "broker_reachable",
    "close_all_connections",
    "list_queues",
    "rabbitmqctl",
    "rabbitmqctl_available",
    "use_rabbitmqctl",
    "vhost_of",
    "with_vhost",
]

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"


class RabbitmqctlError(RuntimeError):
    """``rabbitmqctl`` is missing, not permitted, or the command failed."""


# Runs ``rabbitmqctl ARGS`` for the session's broker somewhere else: ``(args, timeout) -> stdout``.
Rabbitmqctl = Callable[[Sequence[str], float], str]
_session_broker: Rabbitmqctl | None = None


def use_rabbitmqctl(runner: Rabbitmqctl | None) -> Rabbitmqctl | None:
    """Run the session broker's ``rabbitmqctl`` with ``runner`` (None: the local tool); the
    previous runner is returned."""
    global _session_broker
    previous, _session_broker = _session_broker, runner
    return previous


def rabbitmqctl(*args: str, node: str | None = None, timeout: float = 60.0) -> str:
    """Run ``rabbitmqctl ARGS`` and return its stdout.

    Raises:
        RabbitmqctlError: the tool is missing, timed out or exited non-zero.
    """
    if node is None and _session_broker is not None:
        return _session_broker(args, timeout)
    exe = shutil.which("rabbitmqctl")
    if exe is None:
        raise RabbitmqctlError("rabbitmqctl is not installed")
    command = [exe, *(("-n", node) if node else ()), *args]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RabbitmqctlError(f"rabbitmqctl {' '.join(args)}: {exc}") from exc
    if done.returncode != 0:
        detail = done.stderr.strip() or done.stdout.strip()
        raise RabbitmqctlError(f"rabbitmqctl {' '.join(args)}: {detail}")
    return done.stdout


def rabbitmqctl_available() -> bool:
    """Whether ``rabbitmqctl`` can talk to the local node (installed and permitted)."""
    try:
        rabbitmqctl("status", timeout=30.0)
    except RabbitmqctlError:
        return False
    return True


def broker_reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the broker in ``url`` succeeds within ``timeout``."""
    parts = urlsplit(url)
    port = parts.port or (5671 if parts.scheme == "amqps" else 5672)
    try:
        with socket.create_connection((parts.hostname or "localhost", port), timeout=timeout):
            return True
    except OSError:
        return False


def vhost_of(url: str) -> str:
    """The vhost named by an AMQP URL (``/`` when the path is empty)."""
    path = urlsplit(url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def with_vhost(url: str, vhost: str) -> str:
    """``url`` pointing at ``vhost`` instead."""
    return urlunsplit(urlsplit(url)._replace(path="/" + quote(vhost, safe="")))


def close_all_connections(vhost: str = "/", reason: str = "leveret test") -> None:
    """Force-close every client connection to ``vhost``, as a broker restart would."""
    rabbitmqctl("close_all_connections", "-p", vhost, reason)


def list_queues(vhost: str = "/", *, node: str | None = None) -> dict[str, tuple[int, int, int]]:
    """``{queue: (ready, unacked, consumers)}`` for every queue in ``vhost`` (of ``node``: a
    local node by name, default the session's broker)."""
    out = rabbitmqctl(
        "list_queues",
        "-p",
        vhost,
        "-q",
        "--no-table-headers",
        "name",
        "messages_ready",
        "messages_unacknowledged",
        "consumers",
        node=node,
    )
    queues: dict[str, tuple[int, int, int]] = {}
    for line in out.splitlines():
        name, ready, unacked, consumers = line.rsplit("\t", 3)
        queues[name] = (int(ready), int(unacked), int(consumers))
    return queues
