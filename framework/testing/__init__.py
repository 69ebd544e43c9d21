"""leveret's public test kit: an in-memory harness that captures messages, and contract checks.

The pytest plugin (``framework.testing.pytest_plugin``, registered through the ``pytest11``
entry point when leveret is installed) exposes these as fixtures.
"""

from framework.testing.contracts import (
    assert_compatible,
    decode_payload_files,
    round_trip,
)
from framework.testing.harness import Captured, Harness

__all__ = [
    "Captured",
    "Harness",
    "assert_compatible",
    "decode_payload_files",
    "round_trip",
]
