"""RabbitMQ and PostgreSQL in throwaway Docker containers, where a Docker engine answers.

The tests reach their servers at ``LEVERET_AMQP_URL`` and ``LEVERET_POSTGRES_URL``. For each of
the two that is not set, the test session starts a container (testcontainers) when a Docker
engine answers, points the variable at it — so worker processes the tests start inherit it —
and removes the container at the end; without Docker it leaves the variable unset and the tests
use the local defaults (``127.0.0.1:5672``, ``127.0.0.1:5432``).

``LEVERET_TESTCONTAINERS`` chooses: ``auto`` (the default, as above), ``0`` (never: always the
local defaults) or ``1`` (always: no Docker engine is an error, not a fallback).

In a RabbitMQ container the broker's own ``rabbitmqctl`` (vhosts, users, closing connections)
runs through ``docker exec``: ``tests.support.broker.rabbitmqctl`` is pointed at it. A second
node (``tests.support.second_node``) still needs a local ``rabbitmq-server``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from tests.support import broker

__all__ = [
    "MODES",
    "POSTGRES_IMAGE",
    "RABBITMQ_IMAGE",
    "SERVICES",
    "ContainerError",
    "docker_answers",
    "plan",
    "started",
]

RABBITMQ_IMAGE = "rabbitmq:3.13"
POSTGRES_IMAGE = "postgres:16"
# Service -> the variable that names its server.
SERVICES: Mapping[str, str] = {"amqp": "LEVERET_AMQP_URL", "postgres": "LEVERET_POSTGRES_URL"}
MODES = ("auto", "0", "1")
# RabbitMQ's guest user may only connect from the loopback interface, and a published port of a
# container arrives from Docker's bridge: the container gets a user of its own.
_AMQP_USER = "leveret"


class ContainerError(RuntimeError):
    """A container was asked for and could not be had."""


def docker_answers(timeout: float = 2.0) -> bool:
    """Whether a Docker engine answers ``GET /_ping`` within ``timeout`` seconds, at
    ``DOCKER_HOST`` (a ``unix://`` socket or plain ``tcp://``; default the local socket).

    Asked over a socket of our own, closed on every path: the Docker SDK leaves a socket of a
    failed ping for the garbage collector.
    """
    parts = urlsplit(os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock")
    try:
        if parts.scheme == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(parts.path)
            except OSError:
                sock.close()
                raise
        elif parts.scheme in ("tcp", "http"):
            sock = socket.create_connection(
                (parts.hostname or "localhost", parts.port or 2375), timeout
            )
        else:  # ssh://, TLS and the like: leave those set-ups to the caller's own variables
            return False
        with sock:
            sock.settimeout(timeout)
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            reply = sock.recv(64)
    except OSError:
        return False
    return reply.startswith(b"HTTP/1.") and reply.split(b" ", 2)[1:2] == [b"200"]


def plan(env: Mapping[str, str], docker: Callable[[], bool] = docker_answers) -> list[str]:
    """The services (``"amqp"``, ``"postgres"``) to run in containers for this session.

    Only services whose variable is unset are candidates; ``docker`` is asked only when there
    is one and the mode is not ``0``.

    Raises:
        ContainerError: ``LEVERET_TESTCONTAINERS`` is not one of ``MODES``, or it is ``1`` and
            no Docker engine answers.
    """
    mode = env.get("LEVERET_TESTCONTAINERS", "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise ContainerError(f"LEVERET_TESTCONTAINERS={mode!r}: use one of {', '.join(MODES)}")
    wanted = [service for service, variable in SERVICES.items() if not env.get(variable)]
    if mode == "0" or not wanted:
        return []
    if docker():
        return wanted
    if mode == "1":
        raise ContainerError(
            "LEVERET_TESTCONTAINERS=1 but no Docker engine answers (is the daemon running, and "
            "DOCKER_HOST right?)"
        )
    return []


@contextlib.contextmanager
def started(services: Sequence[str], env: MutableMapping[str, str]) -> Iterator[dict[str, str]]:
    """Start a container per service, set its variable in ``env``, yield ``{variable: url}``;
    stop them (and restore ``env`` and ``rabbitmqctl``) afterwards.

    Raises:
        ContainerError: a container did not start or its server did not answer in time.
    """
    urls: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        for service in services:
            start = _rabbitmq if service == "amqp" else _postgres
            url = stack.enter_context(start())
            variable = SERVICES[service]
            previous = env.get(variable)
            env[variable] = urls[variable] = url
            stack.callback(_restore, env, variable, previous)
        yield urls


def _restore(env: MutableMapping[str, str], variable: str, previous: str | None) -> None:
    if previous is None:
        env.pop(variable, None)
    else:
        env[variable] = previous


@contextlib.contextmanager
def _container(image: str, port: int, env: Mapping[str, str]) -> Iterator[Any]:
    from testcontainers.core.container import DockerContainer

    container = DockerContainer(image).with_exposed_ports(port)
    for key, value in env.items():
        container = container.with_env(key, value)
    try:
        container.start()
    except Exception as exc:
        raise ContainerError(f"cannot start a {image} container: {exc}") from exc
    try:
        yield container
    finally:
        container.stop()


@contextlib.contextmanager
def _rabbitmq(timeout: float = 120.0) -> Iterator[str]:
    env = {"RABBITMQ_DEFAULT_USER": _AMQP_USER, "RABBITMQ_DEFAULT_PASS": _AMQP_USER}
    with _container(RABBITMQ_IMAGE, 5672, env) as container:
        host, port = container.get_container_host_ip(), container.get_exposed_port(5672)
        url = f"amqp://{_AMQP_USER}:{_AMQP_USER}@{host}:{port}/"
        _wait(lambda: _amqp_answers(url), timeout, f"RabbitMQ in {RABBITMQ_IMAGE}")
        previous = broker.use_rabbitmqctl(_exec_in(container))
        try:
            yield url
        finally:
            broker.use_rabbitmqctl(previous)


@contextlib.contextmanager
def _postgres(timeout: float = 120.0) -> Iterator[str]:
    env = {"POSTGRES_HOST_AUTH_METHOD": "trust", "POSTGRES_DB": "test"}
    with _container(POSTGRES_IMAGE, 5432, env) as container:
        host, port = container.get_container_host_ip(), container.get_exposed_port(5432)
        url = f"postgresql://postgres@{host}:{port}/test"
        _wait(lambda: _postgres_answers(url), timeout, f"PostgreSQL in {POSTGRES_IMAGE}")
        yield url


def _exec_in(container: Any) -> broker.Rabbitmqctl:
    """``rabbitmqctl ARGS`` run inside ``container``."""

    def run(args: Sequence[str], timeout: float) -> str:
        del timeout  # docker exec has no deadline of its own; the tests' timeout applies
        result = container.get_wrapped_container().exec_run(["rabbitmqctl", *args], demux=True)
        stdout, stderr = (part.decode(errors="replace") if part else "" for part in result.output)
        if result.exit_code != 0:
            detail = stderr.strip() or stdout.strip()
            raise broker.RabbitmqctlError(f"rabbitmqctl {' '.join(args)}: {detail}")
        return stdout

    return run


def _wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise ContainerError(f"{what} did not answer within {timeout:g}s")
        time.sleep(0.5)  # poll interval while the server boots


def _amqp_answers(url: str) -> bool:
    """A full AMQP handshake, not only a TCP accept (Docker's proxy accepts at once)."""
    import aiormq

    async def handshake() -> None:
        connection = await asyncio.wait_for(aiormq.connect(url), 5)
        await connection.close()

    try:
        asyncio.run(handshake())
    except Exception:  # still booting
        return False
    return True


def _postgres_answers(url: str) -> bool:
    import asyncpg

    async def query() -> None:
        connection = await asyncpg.connect(url, timeout=5)
        try:
            await connection.fetchval("SELECT 1")
        finally:
            await connection.close()

    try:
        asyncio.run(query())
    except Exception:  # still booting (the image restarts its server once after init)
        return False
    return True
