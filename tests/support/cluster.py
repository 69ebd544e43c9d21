"""A three-node RabbitMQ cluster of the tests' own, on this machine.

Like ``second_node``, it never touches the shared broker: three nodes with unique names and free
ports boot detached as the ``rabbitmq`` user (in parallel, 13 to 19 s here), the second and third
join the first, and all three are checked running before the cluster is handed out. A node can
be SIGKILLed (its own beam pid only, from its pid file), stopped gracefully and booted again; a
rebooted node keeps its data directory and rejoins by itself (RABBITMQ.md, "A three-node cluster
on one machine"). Use it once per test session or module: it costs about 450 MiB.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.support.broker import RabbitmqctlError, rabbitmqctl
from tests.support.second_node import free_port

__all__ = ["Cluster", "ClusterNode", "cluster"]


class ClusterNode:
    """One node of the cluster: its AMQP URL, ``rabbitmqctl -n`` name and life cycle."""

    def __init__(self, name: str, port: int, dist: int, directory: Path) -> None:
        self.name = name
        self.port = port
        self.dist = dist
        self.dir = directory
        self.url = f"amqp://guest:guest@127.0.0.1:{port}/"
        self.stuck_boots = 0  # boots that hung and were killed and tried again

    def ctl(self, *args: str, timeout: float = 90.0) -> str:
        return rabbitmqctl(*args, node=self.name, timeout=timeout)

    def _env(self) -> dict[str, str]:
        d = self.dir
        return {
            **os.environ,
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "advanced.config"),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_PID_FILE": str(d / "pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
        }

    def boot(self) -> None:
        """Start the node detached (returns at once; ``await_running`` waits for it)."""
        server = shutil.which("rabbitmq-server")
        if server is None:
            raise RabbitmqctlError("rabbitmq-server is not installed")
        subprocess.run([server, "-detached"], env=self._env(), check=True, capture_output=True)

    def await_running(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while True:  # await_startup fails at once until the node registers with epmd
            try:
                self.ctl("await_startup", timeout=timeout)
                return
            except RabbitmqctlError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def boot_until_running(self, timeout: float = 30.0, attempts: int = 3) -> None:
        """Boot the node and wait until it runs; a boot that hangs past ``timeout`` is killed
        and tried again (``stuck_boots`` counts them).

        RabbitMQ 3.10.8 here: a node killed along with another, after a rolling restart, hung
        for good in its boot step ``rabbit_maintenance_mode_state`` ("Resetting node
        maintenance status") in 3 runs of 5, whether the two were booted together or one
        after the other.

        Raises:
            RabbitmqctlError: no boot succeeded.
        """
        for attempt in range(attempts):
            if not self.running():
                self.boot()
            try:
                self.await_running(timeout)
                return
            except RabbitmqctlError:
                if attempt == attempts - 1:
                    raise
                self.stuck_boots += 1
                self.kill()

    def pid(self) -> int | None:
        """The node's own beam pid, or None when it is not running."""
        try:
            pid = int((self.dir / "pid").read_text().strip() or 0)
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except (OSError, ValueError):
            return None
        if f"RABBITMQ_NODENAME={self.name}".encode() not in environ.split(b"\0"):
            return None  # a stale pid file: never kill a stranger
        return pid

    def kill(self) -> None:
        """SIGKILL the node's beam, as a crashed machine would, and wait until it is gone."""
        pid = self.pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while self.pid() is not None and time.monotonic() < deadline:
            time.sleep(0.1)

    def stop(self) -> None:
        """Stop the node gracefully (``rabbitmqctl stop``), killing it if that hangs."""
        try:
            self.ctl("stop", str(self.dir / "pid"), timeout=60)
        except RabbitmqctlError:
            self.kill()

    def running(self) -> bool:
        return self.pid() is not None

    def await_quorum_plus_one(self, timeout: float = 60.0) -> None:
        """Wait until stopping this node would leave every quorum queue its quorum
        (``rabbitmq-upgrade await_online_quorum_plus_one``: the step before each node of a
        rolling restart).

        Raises:
            RabbitmqctlError: the tool is missing, or the queues are not there in ``timeout``.
        """
        exe = shutil.which("rabbitmq-upgrade")
        if exe is None:
            raise RabbitmqctlError("rabbitmq-upgrade is not installed")
        command = [exe, "-n", self.name, "await_online_quorum_plus_one", "-t", f"{timeout:.0f}"]
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=timeout + 30, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RabbitmqctlError(f"await_online_quorum_plus_one: {exc}") from exc
        if done.returncode != 0:
            detail = done.stderr.strip() or done.stdout.strip()
            raise RabbitmqctlError(f"await_online_quorum_plus_one: {detail}")


class Cluster:
    """Three joined nodes; ``urls`` is the comma-separated list an app is given."""

    def __init__(self, nodes: list[ClusterNode]) -> None:
        self.nodes = nodes

    @property
    def urls(self) -> str:
        return ",".join(node.url for node in self.nodes)

    def node_on(self, port: int) -> ClusterNode:
        return next(node for node in self.nodes if node.port == port)

    def node_named(self, name: str) -> ClusterNode:
        return next(node for node in self.nodes if node.name == name)

    def first_running(self) -> ClusterNode:
        """The first node, in the listed order, whose process runs.

        Raises:
            RabbitmqctlError: every node is down.
        """
        for node in self.nodes:
            if node.running():
                return node
        raise RabbitmqctlError("no node of the cluster is running")

    def whole(self, timeout: float = 120.0) -> None:
        """Wait until every node runs in the cluster (after a node was booted again)."""
        deadline = time.monotonic() + timeout
        while self.running_nodes() != len(self.nodes):
            if time.monotonic() > deadline:
                raise RabbitmqctlError("the cluster did not come back whole")
            time.sleep(0.5)

    def running_nodes(self) -> int:
        """How many nodes the first running node sees running."""
        for node in self.nodes:
            if node.running():
                with contextlib.suppress(RabbitmqctlError):
                    return int(node.ctl("eval", "length(rabbit_nodes:all_running()).").strip())
        return 0

    def ensure_all_running(self, timeout: float = 120.0) -> None:
        """Boot every node that is down and wait until all three run together.

        The nodes boot one after the other: two nodes booted together after both were killed
        once left one stuck in a boot step for good (RabbitMQ 3.10.8).
        """
        for node in self.nodes:
            node.boot_until_running()
        self.whole(timeout)


# RabbitMQ 3.10's at-least-once dead-lettering (quorum queues) re-sends a dead letter whose
# confirm never came only after ``dead_letter_worker_publisher_confirm_timeout``, 180 s by
# default: when the target queue's leader died mid-forward, a delayed retry or a saga deadline
# (leveret's delay queues dead-letter them back) arrived three minutes late, seen in the fault
# suite's ``cluster_node_killed``. A cluster for leveret should set it to seconds.
DLX_CONFIRM_TIMEOUT_MS = 5000


@contextlib.contextmanager
def cluster(
    size: int = 3,
    boot_timeout: float = 120.0,
    *,
    dlx_confirm_timeout_ms: int = DLX_CONFIRM_TIMEOUT_MS,
) -> Iterator[Cluster]:
    """Boot ``size`` nodes, join them into one cluster, yield it, stop it.

    ``dlx_confirm_timeout_ms`` is the nodes' ``dead_letter_worker_publisher_confirm_timeout``
    (see ``DLX_CONFIRM_TIMEOUT_MS``; 180000 is RabbitMQ's default).

    Raises:
        RabbitmqctlError: rabbitmq-server or rabbitmqctl is missing, or a node did not boot.
    """
    if shutil.which("rabbitmq-server") is None or shutil.which("rabbitmqctl") is None:
        raise RabbitmqctlError("rabbitmq-server is not installed")
    base = Path(tempfile.mkdtemp(prefix="leveret-cluster-"))
    base.chmod(0o755)
    tag = f"{os.getpid()}-{secrets.token_hex(2)}"
    nodes: list[ClusterNode] = []
    for i in range(size):
        directory = base / chr(ord("a") + i)
        directory.mkdir()
        port, dist = free_port(), free_port()
        (directory / "rabbitmq.conf").write_text(f"listeners.tcp.default = 127.0.0.1:{port}\n")
        (directory / "enabled_plugins").write_text("[].\n")
        (directory / "advanced.config").write_text(
            "[{rabbit, [{dead_letter_worker_publisher_confirm_timeout, "
            f"{dlx_confirm_timeout_ms}}}]}}].\n"
        )
        nodes.append(ClusterNode(f"leveret-c{i}-{tag}@localhost", port, dist, directory))
    subprocess.run(["chown", "-R", "rabbitmq", str(base)], check=False, capture_output=True)
    started = Cluster(nodes)
    try:
        for node in nodes:
            node.boot()
        with ThreadPoolExecutor(size) as pool:
            list(pool.map(lambda n: n.await_running(boot_timeout), nodes))
        for node in nodes[1:]:
            node.ctl("stop_app")
            node.ctl("join_cluster", nodes[0].name)
            node.ctl("start_app")
            node.ctl("await_startup")
        if started.running_nodes() != size:
            raise RabbitmqctlError(f"the {size} nodes did not form one cluster")
        yield started
    finally:
        # Killed, not stopped: the cluster and its data are thrown away, and a graceful stop
        # of three nodes took about 16 s of every test session.
        for node in reversed(nodes):
            node.kill()
        shutil.rmtree(base, ignore_errors=True)
