"""A login or vhost the broker refuses: recognised at once, named, and never retried in silence.

Each test makes a RabbitMQ user and vhost of its own (``rabbitmqctl``), removed afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from structlog.testing import capture_logs

from framework import App, BrokerAccessDenied, ConfigurationError, Service
from framework.errors import BrokerUnreachable
from framework.transport.amqp import AmqpConfig, AmqpTransport
from framework.transport.base import Delivery, QueueSpec, Topology
from framework.worker import EXIT_CONFIGURATION, serve
from tests.support.broker import (
    RabbitmqctlError,
    close_all_connections,
    rabbitmqctl,
    rabbitmqctl_available,
)
from tests.support.poll import until

pytestmark = pytest.mark.rabbitmq

PROJECT = Path(__file__).resolve().parents[2]
WAIT = 30.0  # generous: a loaded 2-core machine slows reconnect handling a lot
# A connect deadline far above what a refusal takes: "at once" means well before it.
CONFIG = AmqpConfig(
    connect_timeout=20.0,
    publish_timeout=5.0,
    declare_timeout=5.0,
    heartbeat=5,
    reconnect_interval=0.2,
    consumer_verify_timeout=30.0,
)


@dataclass(frozen=True)
class Account:
    """A RabbitMQ user with all permissions on a vhost, both of one test's own."""

    host: str
    port: int
    user: str
    password: str
    vhost: str

    def url(self, *, password: str | None = None, vhost: str | None = None) -> str:
        secret = quote(password if password is not None else self.password, safe="")
        path = quote(vhost if vhost is not None else self.vhost, safe="")
        return f"amqp://{quote(self.user, safe='')}:{secret}@{self.host}:{self.port}/{path}"


@pytest.fixture(scope="module")
def manages_users(amqp_url: str) -> bool:
    """Whether ``rabbitmqctl`` can make users and vhosts on the tests' broker (asked once)."""
    local = urlsplit(amqp_url).hostname in ("127.0.0.1", "localhost", "::1")
    return local and rabbitmqctl_available()


@pytest.fixture
def account(amqp_url: str, manages_users: bool) -> Iterator[Account]:
    """A fresh user and vhost (the user may do anything there), deleted after the test."""
    if not manages_users:
        pytest.skip("needs rabbitmqctl for the broker's node, to make users and vhosts")
    parts = urlsplit(amqp_url)
    token = secrets.token_hex(4)
    made = Account(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 5672,
        user=f"lvr-denied-{token}",
        password=f"pw-{secrets.token_hex(8)}",
        vhost=f"lvr-denied-{token}",
    )
    rabbitmqctl("add_user", made.user, made.password)
    try:
        rabbitmqctl("add_vhost", made.vhost)
        rabbitmqctl("set_permissions", "-p", made.vhost, made.user, ".*", ".*", ".*")
        yield made
    finally:
        with contextlib.suppress(RabbitmqctlError):
            rabbitmqctl("delete_vhost", made.vhost)
        with contextlib.suppress(RabbitmqctlError):
            rabbitmqctl("delete_user", made.user)


@contextlib.asynccontextmanager
async def refused(url: str) -> AsyncIterator[pytest.ExceptionInfo[BrokerAccessDenied]]:
    """Connect to ``url``, expecting the broker's refusal well before the connect deadline."""
    transport = AmqpTransport(url, config=CONFIG)
    try:
        async with asyncio.timeout(CONFIG.connect_timeout):
            with pytest.raises(BrokerAccessDenied) as caught:
                await transport.connect()
        yield caught
    finally:
        await transport.close()


def assert_hides(error: BaseException, password: str) -> None:
    for text in (str(error), repr(error), getattr(error, "reason", ""), error.args[0]):
        assert password not in text


async def test_a_wrong_password_is_refused_at_once_as_wrong_credentials(account: Account) -> None:
    """A wrong password fails connect() at once with BrokerAccessDenied naming the user."""
    wrong = f"wrong-{secrets.token_hex(6)}"
    async with refused(account.url(password=wrong)) as caught:
        error = caught.value
    assert (error.cause, error.user, error.vhost) == ("credentials", account.user, account.vhost)
    assert str(error).startswith("wrong credentials: ")
    assert f"refused the login of user {account.user!r}" in str(error)
    assert "ACCESS_REFUSED" in error.detail
    # Still what callers of connect() catch, and a configuration error first of all.
    assert isinstance(error, BrokerUnreachable)
    assert isinstance(error, ConfigurationError)
    assert_hides(error, wrong)


async def test_a_missing_vhost_is_refused_at_once_by_name(account: Account) -> None:
    """A vhost that does not exist fails connect() at once, saying it does not exist."""
    missing = f"{account.vhost}-missing"
    async with refused(account.url(vhost=missing)) as caught:
        error = caught.value
    assert (error.cause, error.vhost) == ("vhost_missing", missing)
    assert str(error).startswith(f"vhost {missing!r} does not exist on the broker at amqp://")
    assert_hides(error, account.password)


async def test_a_vhost_without_permission_is_refused_at_once(account: Account) -> None:
    """A user without permission on the vhost fails connect() at once, naming both."""
    rabbitmqctl("clear_permissions", "-p", account.vhost, account.user)
    async with refused(account.url()) as caught:
        error = caught.value
    assert (error.cause, error.user, error.vhost) == (
        "vhost_permission",
        account.user,
        account.vhost,
    )
    assert str(error).startswith(
        f"no permission on vhost {account.vhost!r}: user {account.user!r} may not use it"
    )
    assert_hides(error, account.password)


async def test_app_start_and_a_worker_fail_at_once_with_the_configuration_code(
    account: Account,
) -> None:
    """App.start() raises the refusal at once; a worker's serve() returns EXIT_CONFIGURATION
    instead of retrying until the connect deadline."""
    url = account.url(password="not-the-password")
    app = App([Service("idle")], transport=AmqpTransport(url, config=CONFIG))
    async with asyncio.timeout(CONFIG.connect_timeout):
        with pytest.raises(BrokerAccessDenied, match=r"^wrong credentials"):
            await app.start()
    await app.transport.close()

    worker = App([Service("idle")], transport=AmqpTransport(url, config=CONFIG))
    with capture_logs() as logs:
        async with asyncio.timeout(CONFIG.connect_timeout):
            assert await serve(worker, asyncio.Event()) == EXIT_CONFIGURATION
    events = [e["event"] for e in logs]
    assert "broker_not_reachable_yet" not in events  # no retry loop
    failed = next(e for e in logs if e["event"] == "app_start_failed")
    assert failed["error"].startswith("wrong credentials")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_leveret_run_with_a_wrong_password_exits_2_and_says_why(account: Account) -> None:
    """``leveret run`` with a wrong password exits with the configuration code (2), and its
    output says it was the credentials, naming the user, never the password."""
    wrong = f"wrong-{secrets.token_hex(6)}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEVERET_")}
    env["LEVERET_LOG_FORMAT"] = "console"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "framework",
            "run",
            "tests.apps.slow_app:app",
            "--amqp-url",
            account.url(password=wrong),
            "--connect-timeout",
            "60",  # far more than the test's own timeout: a retry loop would show
        ],
        cwd=PROJECT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
        start_new_session=True,
    )
    output = done.stdout + done.stderr
    assert done.returncode == EXIT_CONFIGURATION, output
    assert "wrong credentials: the broker at amqp://" in output
    assert f"refused the login of user {account.user!r}" in output
    assert "broker_not_reachable_yet" not in output
    assert wrong not in output


async def consume_one_queue(transport: AmqpTransport, queue: str) -> None:
    await transport.declare(Topology(queues=(QueueSpec(queue),)))

    async def on_message(delivery: Delivery) -> None:
        await delivery.ack()

    await transport.consume(queue, on_message, prefetch=1)


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


@pytest.mark.timeout(120)
async def test_a_reconnect_refused_for_its_password_is_an_error_with_the_cause(
    account: Account, prefix: str
) -> None:
    """After the password changed, the refused reconnect is logged as one ERROR saying why;
    once the password is put back the connection recovers with one INFO."""
    transport = AmqpTransport(account.url(), config=CONFIG)
    await transport.connect()
    failed = asyncio.ensure_future(transport.wait_failed())
    try:
        await consume_one_queue(transport, f"{prefix}.q")
        with capture_logs() as logs:
            rabbitmqctl("change_password", account.user, f"changed-{secrets.token_hex(4)}")
            close_all_connections(account.vhost)
            await until(
                lambda: events(logs, "broker_access_denied"), timeout=WAIT, what="the refusal"
            )
            rabbitmqctl("change_password", account.user, account.password)
            await until(
                lambda: events(logs, "broker_reconnected"), timeout=WAIT, what="the recovery"
            )
        [denied] = events(logs, "broker_access_denied")
        assert denied["log_level"] == "error"
        assert (denied["cause"], denied["user"]) == ("credentials", account.user)
        assert denied["error"].startswith("wrong credentials")
        [back] = events(logs, "broker_reconnected")
        assert back["attempts"] >= 2  # the refused one, then the one that worked
        assert back["consumers"] == 1
        assert len(events(logs, "broker_connection_lost")) == 1
        assert not failed.done()
    finally:
        failed.cancel()
        await transport.close()


@pytest.mark.timeout(120)
async def test_an_outage_past_its_bound_fails_the_transport_with_its_cause(
    account: Account, prefix: str
) -> None:
    """A connection still refused when its bound runs out is an ERROR naming the cause, and
    wait_failed() returns the refusal (a worker then exits with the configuration code)."""
    config = AmqpConfig(connect_timeout=5.0, reconnect_interval=0.2, consumer_verify_timeout=3.0)
    transport = AmqpTransport(account.url(), config=config)
    await transport.connect()
    try:
        await consume_one_queue(transport, f"{prefix}.q")
        with capture_logs() as logs:
            rabbitmqctl("change_password", account.user, f"changed-{secrets.token_hex(4)}")
            close_all_connections(account.vhost)
            async with asyncio.timeout(WAIT):
                failure = await transport.wait_failed()
        assert isinstance(failure, BrokerAccessDenied)
        assert failure.cause == "credentials"
        [gave_up] = events(logs, "broker_connection_not_restored")
        assert gave_up["log_level"] == "error"
        assert gave_up["cause"].startswith("wrong credentials")
        assert account.password not in repr(logs)
    finally:
        await transport.close()
