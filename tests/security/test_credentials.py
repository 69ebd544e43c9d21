"""A password never shows: not in a log line, an exception, a repr, a DLQ header or CLI output.

A RabbitMQ user of its own, with a random sentinel password full of URL-special characters, is
created in the test's vhost and deleted after it. With it the tests run an app (a handler that
fails once, logs, and dead-letters an error quoting its URL), fail to log in with the wrong
password, fail to reach a port where nothing listens, point a store at a server that is not
there, and run every CLI command that takes a URL. Everything the process writes — structlog
JSON lines including other libraries' records, exception text, repr and cause chains, stdout
and stderr of the commands — is searched for the sentinel.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import pytest
import structlog

from contracts.orders import GetOrder, OrderView, PlaceOrder
from framework import App, AppConfig, Context, QueryFailed, RetryPolicy, Service
from framework import envelope as env
from framework.errors import BrokerUnreachable
from framework.logging import configure_logging
from framework.store import store_from_url
from framework.store.base import StoreUnreachable
from framework.transport.amqp import AmqpConfig, AmqpTransport
from framework.transport.base import Delivery
from tests.support.broker import RabbitmqctlError, rabbitmqctl, vhost_of

pytestmark = pytest.mark.rabbitmq

PROJECT = Path(__file__).resolve().parents[2]
FAST = AmqpConfig(connect_timeout=5.0, declare_timeout=5.0, publish_timeout=5.0)


@dataclass(frozen=True)
class Secret:
    """A broker user with a sentinel password, and URLs that carry it."""

    user: str
    password: str
    token: str  # the random part: any leak, raw or percent-encoded, contains it
    url: str  # logs in
    wrong_url: str  # the user with the token as a wrong password
    nowhere_url: str  # nothing listens on its port

    def leaked(self, text: str) -> bool:
        return self.token in text


def with_login(url: str, user: str, password: str, port: int | None = None) -> str:
    parts = urlsplit(url)
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{parts.hostname}:"
    return urlunsplit(parts._replace(netloc=netloc + str(port or parts.port)))


@pytest.fixture(scope="module")
def secret(amqp_url: str) -> Iterator[Secret]:
    """A user of the test vhost only, whose password is a fresh sentinel; deleted after."""
    prefix = "t" + secrets.token_hex(4)
    vhost = vhost_of(amqp_url)
    if vhost == "/":
        pytest.skip("needs the per-run test vhost (rabbitmqctl)")
    token = secrets.token_hex(12)
    password = f"S3nt/{token}:@%?#"  # every character a URL parser could trip on
    user = f"{prefix}-secret"
    try:
        rabbitmqctl("add_user", user, password)
    except RabbitmqctlError as exc:
        pytest.skip(f"rabbitmqctl add_user failed: {exc}")
    try:
        rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
        yield Secret(
            user=user,
            password=password,
            token=token,
            url=with_login(amqp_url, user, password),
            wrong_url=with_login(amqp_url, user, f"wrong-{token}"),
            nowhere_url=with_login(amqp_url, user, password, port=1),
        )
    finally:
        with contextlib.suppress(RabbitmqctlError):
            rabbitmqctl("delete_user", user)


@pytest.fixture
def log_stream(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """Everything logged, as ``leveret run`` configures it (JSON, debug), then undone."""
    monkeypatch.delenv("LEVERET_LOG_LEVEL", raising=False)
    monkeypatch.delenv("LEVERET_LOG_FORMAT", raising=False)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    stream = io.StringIO()
    configure_logging(json=True, level="debug", stream=stream)
    # Not cached: a module's logger first used now would keep this configuration for good,
    # and later tests' capture_logs would not see its events.
    structlog.configure(cache_logger_on_first_use=False)
    try:
        yield stream
    finally:
        structlog.reset_defaults()
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        root.setLevel(level)


def everything_about(exc: BaseException) -> str:
    """str, repr and formatted traceback of ``exc`` and of every exception chained to it."""
    parts: list[str] = []
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        parts += [str(current), repr(current), *current.args.__repr__().splitlines()]
        parts += traceback.format_exception(current)
        todo += [current.__cause__, current.__context__]
    return "\n".join(parts)


async def test_an_app_never_shows_the_password(
    secret: Secret, prefix: str, log_stream: io.StringIO
) -> None:
    """Connected, failing, dead-lettering, refused, unreachable: no sentinel anywhere."""
    orders = Service("orders")
    handled: asyncio.Queue[str] = asyncio.Queue()

    @orders.command(retry=RetryPolicy(immediate=1, delays=()))
    async def place_order(cmd: PlaceOrder, ctx: Context) -> None:
        ctx.log.info("placing", url=secret.url)
        if cmd.order_id == "doomed":
            raise ConnectionError(f"downstream at {secret.url} refused")
        if ctx.attempt == 0:
            raise RuntimeError(f"transient trouble with {secret.url}")
        handled.put_nowait(cmd.order_id)

    @orders.query
    async def get_order(query: GetOrder) -> OrderView:
        raise LookupError(f"the read model at {secret.url} is empty")

    app = App(
        [orders], transport=AmqpTransport(secret.url, config=FAST), config=AppConfig(prefix=prefix)
    )
    texts = [repr(app), repr(app.transport)]
    queue = app.naming.handler_queue("orders", "orders.place_order")
    probe = AmqpTransport(secret.url, config=FAST)
    dead: asyncio.Queue[Delivery] = asyncio.Queue()

    async def on_dead(delivery: Delivery) -> None:
        await delivery.ack()
        dead.put_nowait(delivery)

    async with app:
        await probe.connect()
        await probe.consume(app.naming.dlq(queue), on_dead, prefetch=10)
        await app.send(PlaceOrder(order_id="o-1", customer_id="c", address="a", items=[]))
        await app.send(PlaceOrder(order_id="doomed", customer_id="c", address="a", items=[]))
        async with asyncio.timeout(15):
            assert await handled.get() == "o-1"
            letter = await dead.get()
        with pytest.raises(QueryFailed) as query_failed:
            await app.request(GetOrder(order_id="o-1"), timeout=10)
        assert "the read model at amqp://" in str(query_failed.value)
        texts.append(everything_about(query_failed.value))
        texts.append(repr(probe))
        await probe.close()
    texts += [f"{k}={v!r}" for k, v in letter.headers.items()]
    assert "downstream at amqp://" in str(letter.headers[env.EXCEPTION_MESSAGE])

    failures: list[BaseException] = []
    for url in (secret.wrong_url, secret.nowhere_url):
        refused = App([orders], transport=AmqpTransport(url, config=FAST))
        texts.append(repr(refused))
        with pytest.raises(BrokerUnreachable) as raised:
            await refused.start()
        failures.append(raised.value)
    assert "ACCESS_REFUSED" in str(failures[0]) or "authentication" in str(failures[0]).lower()

    store = store_from_url(f"postgresql://postgres:{quote(secret.password, safe='')}@127.0.0.1:1/x")
    texts.append(repr(store))
    with pytest.raises(StoreUnreachable) as unreachable:
        await store.setup()
    failures.append(unreachable.value)

    texts += [everything_about(exc) for exc in failures]
    logged = log_stream.getvalue()
    assert '"handler_failed"' in logged
    assert '"placing"' in logged
    assert "amqp://" in logged  # URLs are logged, only their passwords are not
    leaks = [text for text in [*texts, *logged.splitlines()] if secret.leaked(text)]
    assert leaks == []


# -- the command line ------------------------------------------------------------------------


def leveret(*args: str, timeout: float = 60) -> subprocess.Popen[str]:
    """``python -m framework ARGS`` from the project directory, output piped."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEVERET_")}
    env["LEVERET_LOG_FORMAT"] = "json"
    return subprocess.Popen(
        [sys.executable, "-m", "framework", *args],
        cwd=PROJECT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_commands_never_show_the_password(secret: Secret, tmp_path: Path) -> None:
    """``run``, ``breakers``, ``sagas`` and ``asyncapi``, connecting or failing to: exit codes
    as documented, the URL shown redacted, the sentinel in no output."""
    pg = f"postgresql://postgres:{quote(secret.password, safe='')}@127.0.0.1:1/x"
    spec = "handlers.app:app"
    commands = {
        "run-wrong-password": (
            [
                "run",
                "tests.apps.slow_app:app",
                "--amqp-url",
                secret.wrong_url,
                "--connect-timeout",
                "5",
            ],
            2,  # a refused login is a configuration error, not an outage
        ),
        "run-nowhere": (
            [
                "run",
                "tests.apps.slow_app:app",
                "--amqp-url",
                secret.nowhere_url,
                "--connect-timeout",
                "5",
            ],
            3,
        ),
        "breakers-wrong-password": (
            [
                "breakers",
                "tests.apps.breaker_app:app",
                "--amqp-url",
                secret.wrong_url,
                "--timeout",
                "1",
            ],
            2,
        ),
        "breakers-nobody-answers": (
            ["breakers", "tests.apps.breaker_app:app", "--amqp-url", secret.url, "--timeout", "1"],
            1,
        ),
        "sagas-list-store-down": (["sagas", "list", spec, "--db-url", pg], 3),
        "sagas-resume-broker-refused": (
            [
                "sagas",
                "resume",
                spec,
                "no-such-saga",
                "--db-url",
                f"sqlite:///{tmp_path}/s.db",
                "--amqp-url",
                secret.wrong_url,
            ],
            2,
        ),
        "asyncapi": (
            [
                "asyncapi",
                spec,
                "--amqp-url",
                secret.url,
                "--format",
                "json",
                "-o",
                str(tmp_path / "asyncapi.json"),
            ],
            0,
        ),
    }
    running = {name: leveret(*args) for name, (args, _) in commands.items()}
    # One worker serving with the sentinel password until it is told to stop.
    serving = leveret("run", "tests.apps.slow_app:app", "--amqp-url", secret.url)
    outputs: dict[str, tuple[int, str]] = {}
    try:
        for name, process in running.items():
            out, err = process.communicate(timeout=90)
            outputs[name] = (process.returncode, out + err)
        assert serving.stderr is not None
        started = [serving.stderr.readline() for _ in range(2)]
        deadline = time.monotonic() + 60
        while not any('"worker_started"' in line for line in started):
            assert time.monotonic() < deadline, started
            started.append(serving.stderr.readline())
        serving.send_signal(signal.SIGTERM)
        out, err = serving.communicate(timeout=60)
        outputs["run-serving"] = (serving.returncode, "".join(started) + out + err)
    finally:
        for process in [*running.values(), serving]:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    outputs["asyncapi-file"] = (0, (tmp_path / "asyncapi.json").read_text())
    codes = {name: code for name, (code, _) in outputs.items()}
    assert codes == {
        **{name: code for name, (_, code) in commands.items()},
        "run-serving": 0,
        "asyncapi-file": 0,
    }, outputs
    assert f"{quote(secret.user)}:***@" in outputs["run-wrong-password"][1]
    assert "worker_started" in outputs["run-serving"][1]
    leaks = {name: text for name, (_, text) in outputs.items() if secret.leaked(text)}
    assert leaks == {}
