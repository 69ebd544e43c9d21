"""TLS to RabbitMQ: ``amqps://`` with a CA file, on a node of the test's own with a TLS listener.

The certificates are made with ``openssl`` for this module (a CA, a server certificate it signs
for 127.0.0.1, and an unrelated CA); the node is started with ``listeners.ssl.default`` and
``ssl_options`` pointing at them. The shared broker is never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from contracts.orders import GetOrder, OrderView, PlaceOrder
from framework import (
    App,
    AppConfig,
    BrokerUnreachable,
    ConfigurationError,
    Context,
    Service,
    TLSVerificationFailed,
)
from framework.transport.amqp import AmqpConfig, AmqpTransport
from tests.support.broker import RabbitmqctlError
from tests.support.certs import Certificates, OpensslError, make_certificates
from tests.support.second_node import free_port, second_node

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow, pytest.mark.timeout(180)]

PROJECT = Path(__file__).resolve().parents[2]
# Far longer than a TLS failure takes: a verification error that hung would show as a timeout.
PATIENT = AmqpConfig(connect_timeout=30.0)


@dataclass(frozen=True)
class TlsBroker:
    port: int
    certs: Certificates

    def url(self, query: str = "") -> str:
        return f"amqps://guest:guest@127.0.0.1:{self.port}/{query}"


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    """A second RabbitMQ node with a TLS listener, for this module only."""
    try:
        certs = make_certificates(tmp_path_factory.mktemp("certs"))
    except OpensslError as exc:
        pytest.fail(f"cannot make certificates: {exc}")
    port = free_port()
    config = (
        f"listeners.ssl.default = 127.0.0.1:{port}\n"
        "ssl_options.cacertfile = {dir}/ca.pem\n"
        "ssl_options.certfile = {dir}/server.pem\n"
        "ssl_options.keyfile = {dir}/server.key\n"
        "ssl_options.verify = verify_none\n"
        "ssl_options.fail_if_no_peer_cert = false\n"
    )
    files = {
        "ca.pem": certs.ca.read_bytes(),
        "server.pem": certs.server_cert.read_bytes(),
        "server.key": certs.server_key.read_bytes(),
    }
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(second_node(extra_config=config, files=files))
        except RabbitmqctlError as exc:
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail(f"cannot start a second RabbitMQ node: {exc}")
            pytest.skip(f"cannot start a second RabbitMQ node: {exc}")
        yield TlsBroker(port, certs)


async def test_amqps_with_the_ca_file_serves_an_app(tls_broker: TlsBroker) -> None:
    """With ?cafile= naming the CA, an app connects over TLS, handles a command and a query."""
    orders = Service("orders")
    handled: asyncio.Queue[str] = asyncio.Queue()

    @orders.command
    async def place_order(cmd: PlaceOrder, ctx: Context) -> None:
        handled.put_nowait(cmd.order_id)

    @orders.query
    async def get_order(query: GetOrder) -> OrderView:
        return OrderView(order_id=query.order_id, customer_id="c", status="placed", total_cents=0)

    url = tls_broker.url(f"?cafile={tls_broker.certs.ca}")
    app = App([orders], url=url, config=AppConfig(prefix="tls"))
    async with app:
        await app.send(PlaceOrder(order_id="o-tls", customer_id="c", address="a", items=[]))
        async with asyncio.timeout(15):
            assert await handled.get() == "o-tls"
        reply = await app.request(GetOrder(order_id="o-tls"), timeout=10)
        assert reply.order_id == "o-tls"
    assert repr(app).startswith("App(url='amqps://guest:***@127.0.0.1:")


@pytest.mark.parametrize("trust", ["other-ca", "system-cas"])
async def test_an_untrusted_certificate_fails_at_once_with_a_clear_error(
    tls_broker: TlsBroker, trust: str
) -> None:
    """The wrong CA (or none: the system's) fails verification with a TLSVerificationFailed
    naming the host, well before the connect deadline, and without the password."""
    query = f"?cafile={tls_broker.certs.other_ca}" if trust == "other-ca" else ""
    transport = AmqpTransport(tls_broker.url(query), config=PATIENT)
    with pytest.raises(TLSVerificationFailed) as failed:
        await transport.connect()
    error = failed.value
    assert isinstance(error, BrokerUnreachable)  # `leveret run` exits 3, as for any broker
    assert error.host == "127.0.0.1"
    assert "certificate" in error.detail
    text = str(error)
    assert "TLS certificate verification failed for host '127.0.0.1'" in text
    assert "?cafile=/path/to/ca.pem" in text
    assert "no connection within" not in text  # it failed, it did not time out
    assert "guest:guest" not in text
    assert "guest:***@" in text
    await transport.close()


async def test_a_missing_ca_file_is_a_configuration_error(tls_broker: TlsBroker) -> None:
    """A cafile that does not exist is named, before any connection is tried."""
    missing = tls_broker.certs.ca.parent / "missing.pem"
    transport = AmqpTransport(tls_broker.url(f"?cafile={missing}"), config=PATIENT)
    with pytest.raises(ConfigurationError, match=r"cafile='.*missing\.pem' in the broker URL"):
        await transport.connect()
    await transport.close()


def test_leveret_run_with_the_wrong_ca_exits_2_at_once_naming_tls(tls_broker: TlsBroker) -> None:
    """``leveret run`` against an untrusted certificate exits 2 (a configuration error) without
    waiting out its connect deadline; its log says why."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEVERET_")}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "framework",
            "run",
            "tests.apps.slow_app:app",
            "--amqp-url",
            tls_broker.url(f"?cafile={tls_broker.certs.other_ca}"),
            "--connect-timeout",
            "60",  # not waited out: the first refusal ends it
            "--log-format",
            "json",
        ],
        cwd=PROJECT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=40,  # well below the 60 s connect deadline
        check=False,
        start_new_session=True,
    )
    assert done.returncode == 2, done.stderr
    errors = [
        json.loads(line)["error"]
        for line in done.stderr.splitlines()
        if '"app_start_failed"' in line
    ]
    assert errors
    assert "TLS certificate verification failed for host '127.0.0.1'" in errors[0]
    assert '"broker_not_reachable_yet"' not in done.stderr


@pytest.mark.parametrize("value", ["false", "", "yes"])
async def test_a_no_verify_ssl_other_than_0_or_1_never_reaches_the_broker(
    tls_broker: TlsBroker, value: str
) -> None:
    """With the wrong CA, ``no_verify_ssl=false`` (or empty, or ``yes``) used to connect with
    verification silently off; now it is a ConfigurationError that says what to write."""
    query = f"?cafile={tls_broker.certs.other_ca}&no_verify_ssl={value}"
    transport = AmqpTransport(tls_broker.url(query), config=PATIENT)
    with pytest.raises(ConfigurationError) as refused:
        await transport.connect()
    assert "write no_verify_ssl=0" in str(refused.value)
    assert "guest:guest" not in str(refused.value)
    await transport.close()


async def test_a_worker_without_verification_warns_at_start(tls_broker: TlsBroker) -> None:
    """``no_verify_ssl=1`` connects to an untrusted certificate, and the app's start logs
    ``tls_verification_disabled`` with the URL's password masked."""
    query = f"?cafile={tls_broker.certs.other_ca}&no_verify_ssl=1"
    app = App([Service("idle")], url=tls_broker.url(query), config=AppConfig(prefix="tlsoff"))
    with capture_logs() as logs:
        async with app:
            pass
    [warning] = [e for e in logs if e["event"] == "tls_verification_disabled"]
    assert warning["log_level"] == "warning"
    assert warning["url"].startswith("amqps://guest:***@127.0.0.1:")
    assert warning["url"].endswith("no_verify_ssl=1")
