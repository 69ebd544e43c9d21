"""The supervisor's ``/live`` and ``/ready``: every worker asked over its Unix socket, at once."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from framework.health.http import Endpoint, HealthResponse, ask_unix

__all__ = ["WorkerView", "supervisor_endpoints"]


@dataclass(frozen=True, slots=True)
class WorkerView:
    """One worker slot as the supervisor sees it: running (pid) or not, and its socket."""

    index: int
    pid: int | None
    socket: str


async def _ask(worker: WorkerView, target: str, timeout: float) -> dict[str, Any]:
    """The worker's answer, with ``state``: ``up``, ``starting``, ``down`` or ``stuck``."""
    base: dict[str, Any] = {"index": worker.index, "pid": worker.pid}
    if worker.pid is None:
        return {**base, "state": "down", "ok": False, "detail": "waiting to be restarted"}
    try:
        status, body = await ask_unix(worker.socket, target, timeout=timeout)
    except (FileNotFoundError, ConnectionRefusedError):
        # Not listening yet (starting), or its previous process left the socket file.
        return {**base, "state": "starting", "ok": False, "detail": "not serving health yet"}
    except TimeoutError:
        return {**base, "state": "stuck", "ok": False, "detail": f"no answer in {timeout:g}s"}
    except (OSError, ValueError) as exc:
        return {**base, "state": "stuck", "ok": False, "detail": f"{type(exc).__name__}: {exc}"}
    if body.get("pid") not in (None, worker.pid):  # a previous process's socket, still open
        return {**base, "state": "starting", "ok": False, "detail": "not serving health yet"}
    return {**base, "state": "up", "ok": status == 200, **body}


def supervisor_endpoints(
    workers: Callable[[], Sequence[WorkerView]], *, timeout: float
) -> dict[str, Endpoint]:
    """``/live`` and ``/ready`` aggregated over ``workers()`` (asked afresh per request)."""

    async def gather(target: str) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(_ask(w, target, timeout) for w in workers())))

    async def live() -> HealthResponse:
        answers = await gather("/live")
        stuck = [a for a in answers if a["state"] == "stuck"]
        return (503 if stuck else 200), {
            "live": not stuck,
            "pid": os.getpid(),
            "workers": answers,
        }

    async def ready() -> HealthResponse:
        answers = await gather("/ready")
        ok = bool(answers) and all(a["ok"] for a in answers)
        return (200 if ok else 503), {"ready": ok, "pid": os.getpid(), "workers": answers}

    return {"/live": live, "/ready": ready}
