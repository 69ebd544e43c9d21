"""Liveness and readiness: checks against the broker and the store, served over HTTP.

``leveret run --health-port PORT`` serves ``/live`` and ``/ready`` (``framework.health.http``);
``leveret status MODULE:APP`` prints the same readiness from the command line
(``framework.cli.status``).
"""

from framework.health.checks import Check, QueueStatus, Readiness, readiness

__all__ = ["Check", "QueueStatus", "Readiness", "readiness"]
