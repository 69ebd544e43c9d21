"""leveret's public test kit: an in-memory harness that captures messages and controls time,
contexts for calling a handler alone, and contract checks.

The pytest plugin (``framework.testing.pytest_plugin``, registered through the ``pytest11``
entry point when leveret is installed) exposes these as fixtures. ``SagaStatus`` and
``DeadLetterInfo`` are here so that a test reads a saga's status and a dead letter without
importing leveret's internals.
"""

from framework.dlq import DeadLetterInfo
from framework.store.base import SagaStatus
from framework.testing.clock import VirtualClock
from framework.testing.context import FakeContext, FakeQueryContext, LogLine
from framework.testing.contracts import (
    assert_compatible,
    decode_payload_files,
    round_trip,
)
from framework.testing.harness import Captured, Harness
from framework.testing.views import PendingTimer, SagaView, SettleTimeout

__all__ = [
    "Captured",
    "DeadLetterInfo",
    "FakeContext",
    "FakeQueryContext",
    "Harness",
    "LogLine",
    "PendingTimer",
    "SagaStatus",
    "SagaView",
    "SettleTimeout",
    "VirtualClock",
    "assert_compatible",
    "decode_payload_files",
    "round_trip",
]
