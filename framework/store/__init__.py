"""Persistence: the store port (saga state, inbox, outbox, history) and its implementations."""

from framework.store.base import (
    ConcurrencyConflict,
    HistoryRow,
    OutboxRow,
    SagaExists,
    SagaRecord,
    SagaStatus,
    SecretKeeper,
    Store,
    StoreStats,
    StoreTx,
    StoreUnreachable,
    store_from_url,
)

__all__ = [
    "ConcurrencyConflict",
    "HistoryRow",
    "OutboxRow",
    "SagaExists",
    "SagaRecord",
    "SagaStatus",
    "SecretKeeper",
    "Store",
    "StoreStats",
    "StoreTx",
    "StoreUnreachable",
    "store_from_url",
]
