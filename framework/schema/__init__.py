"""Contracts as data: JSON Schema snapshots, compatibility checks and AsyncAPI documents.

``leveret contracts export`` and ``leveret contracts check`` and ``leveret asyncapi`` are thin
commands over this package; the pytest plugin (``framework.testing``) calls the same functions.
"""

from framework.schema.asyncapi import asyncapi_document
from framework.schema.compat import Break, Mode, Note, Report, check
from framework.schema.snapshot import (
    DEFAULT_SNAPSHOT_DIR,
    ExportResult,
    contract_schema,
    export,
    read_snapshots,
)
from framework.schema.source import ContractSet, load_contracts

__all__ = [
    "DEFAULT_SNAPSHOT_DIR",
    "Break",
    "ContractSet",
    "ExportResult",
    "Mode",
    "Note",
    "Report",
    "asyncapi_document",
    "check",
    "contract_schema",
    "export",
    "load_contracts",
    "read_snapshots",
]
