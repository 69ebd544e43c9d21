"""A one-handler app whose handler takes a while, for supervisor and drain tests.

Everything comes from the environment, so a test can point worker subprocesses at its own vhost
and prefix:

* ``LEVERET_TEST_URL``: broker URL (default ``memory://``);
* ``LEVERET_TEST_PREFIX``: name prefix (default ``slowapp``);
* ``LEVERET_TEST_HANDLER_SECONDS``: how long each handler runs (default 0);
* ``LEVERET_TEST_RECORD``: a file each handled message's ``n`` is appended to, one per line;
* ``LEVERET_TEST_PIDS``: a directory in which each worker leaves a file named after its pid
  once its handler has run (so a test can find a busy worker to kill);
* ``LEVERET_TEST_PREFETCH`` and ``LEVERET_TEST_SHUTDOWN_GRACE``: the AppConfig settings.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from framework import App, AppConfig, Command, Service

__all__ = ["QUEUE_SERVICE", "Work", "app", "build_app", "work_queue"]

QUEUE_SERVICE = "slow"


class Work(Command):
    __wire_name__ = "slow.work"

    n: int


def build_app(
    *,
    url: str = "memory://",
    prefix: str = "slowapp",
    handler_seconds: float = 0.0,
    record: str | None = None,
    pids: str | None = None,
    prefetch: int = 2,
    shutdown_grace: float = 10.0,
) -> App:
    """The app: one command handler that waits ``handler_seconds`` then records ``n``."""
    service = Service(QUEUE_SERVICE)

    @service.command
    async def work(cmd: Work) -> None:
        await asyncio.sleep(handler_seconds)  # stands for the handler's real work
        _note(cmd.n, record=record, pids=pids)

    return App(
        [service],
        url=url,
        config=AppConfig(prefix=prefix, prefetch=prefetch, shutdown_grace=shutdown_grace),
    )


def _note(n: int, *, record: str | None, pids: str | None) -> None:
    # Blocking on purpose: a tiny local write, finished before the handler returns and acks.
    if record is not None:
        # One short O_APPEND write per line: lines of concurrent workers never interleave.
        with open(record, "a", encoding="utf-8") as out:
            out.write(f"{n}\n")
    if pids is not None:
        Path(pids, str(os.getpid())).touch()


def work_queue(app: App) -> str:
    """The queue ``Work`` commands wait in."""
    return app.naming.handler_queue(QUEUE_SERVICE, Work.__wire_name__)


app = build_app(
    url=os.environ.get("LEVERET_TEST_URL", "memory://"),
    prefix=os.environ.get("LEVERET_TEST_PREFIX", "slowapp"),
    handler_seconds=float(os.environ.get("LEVERET_TEST_HANDLER_SECONDS", "0")),
    record=os.environ.get("LEVERET_TEST_RECORD") or None,
    pids=os.environ.get("LEVERET_TEST_PIDS") or None,
    prefetch=int(os.environ.get("LEVERET_TEST_PREFETCH", "2")),
    shutdown_grace=float(os.environ.get("LEVERET_TEST_SHUTDOWN_GRACE", "10")),
)
