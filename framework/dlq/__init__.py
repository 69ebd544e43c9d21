"""Dead-letter queues: read, count, replay and purge them without losing or reordering messages.

``leveret dlq list|show|replay|purge`` (``framework.cli.dlq``) is the command line over these.
"""

from framework.dlq.scan import (
    MAX_SCAN,
    DeadLetterInfo,
    ReplayResult,
    ScanIncomplete,
    Selection,
    count_reasons,
    describe,
    original_queue,
    peek,
    purge,
    replay,
    replay_copy,
    undecodable_reason,
)

__all__ = [
    "MAX_SCAN",
    "DeadLetterInfo",
    "ReplayResult",
    "ScanIncomplete",
    "Selection",
    "count_reasons",
    "describe",
    "original_queue",
    "peek",
    "purge",
    "replay",
    "replay_copy",
    "undecodable_reason",
]
