"""A RabbitMQ node of the test's own, for tests that reconfigure or alarm a broker.

Per RABBITMQ.md, tests that would disturb the shared broker start a second node instead. The
node gets a unique name and free ports, runs detached as the ``rabbitmq`` user, and is stopped
(and its directory removed) afterwards. Booting takes a few seconds: use it once per module.

``extra_config`` adds lines to the node's ``rabbitmq.conf`` (``{dir}`` in them stands for the
node's directory) and ``files`` are written into that directory first, readable by the broker:
a TLS listener, for one, is ``files`` with the certificates and ``extra_config`` naming them.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from tests.support.broker import RabbitmqctlError, rabbitmqctl

__all__ = ["SecondNode", "free_port", "second_node"]


class SecondNode:
    """A running extra node: its AMQP URL and its ``rabbitmqctl -n`` name."""

    def __init__(self, name: str, port: int, directory: Path | None = None) -> None:
        self.name = name
        self.port = port
        self.dir = directory
        self.url = f"amqp://guest:guest@127.0.0.1:{port}/"

    def ctl(self, *args: str) -> str:
        """``rabbitmqctl -n NODE ARGS``."""
        return rabbitmqctl(*args, node=self.name)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def second_node(
    boot_timeout: float = 60.0,
    *,
    extra_config: str = "",
    files: Mapping[str, bytes] | None = None,
) -> Iterator[SecondNode]:
    """Start a node, yield it, stop it.

    Args:
        boot_timeout: seconds the node may take to boot.
        extra_config: more ``rabbitmq.conf`` lines; ``{dir}`` is replaced by the node directory.
        files: file name -> content, written into the node directory before it boots.

    Raises:
        RabbitmqctlError: rabbitmq-server or rabbitmqctl is missing, or the node did not boot.
    """
    server = shutil.which("rabbitmq-server")
    if server is None or shutil.which("rabbitmqctl") is None:
        raise RabbitmqctlError("rabbitmq-server is not installed")
    base = Path(tempfile.mkdtemp(prefix="leveret-node-"))
    port, dist = free_port(), free_port()
    # Unique per call: two nodes of one test process must not share an Erlang node name.
    name = f"leveret-breakers-{os.getpid()}-{secrets.token_hex(3)}@localhost"
    for file_name, content in (files or {}).items():
        (base / file_name).write_bytes(content)
    extra = extra_config.replace("{dir}", str(base))
    (base / "rabbitmq.conf").write_text(f"listeners.tcp.default = 127.0.0.1:{port}\n{extra}\n")
    (base / "enabled_plugins").write_text("[].\n")
    subprocess.run(["chown", "-R", "rabbitmq", str(base)], check=False, capture_output=True)
    env = {
        **os.environ,
        "RABBITMQ_NODENAME": name,
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(dist),
        "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq"),
        "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
        "RABBITMQ_LOG_BASE": str(base / "log"),
        "RABBITMQ_PID_FILE": str(base / "pid"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
    }
    node = SecondNode(name, port, base)
    try:
        subprocess.run([server, "-detached"], env=env, check=True, capture_output=True)
        deadline = time.monotonic() + boot_timeout
        while True:  # await_startup fails at once until the node registers with epmd
            try:
                node.ctl("await_startup")
                break
            except RabbitmqctlError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        yield node
    finally:
        with contextlib.suppress(RabbitmqctlError):
            node.ctl("stop")
        shutil.rmtree(base, ignore_errors=True)
