"""Sagas: pure definitions, the runner that persists them, and the outbox."""

from framework.saga.definition import (
    Instance,
    RetryBackoff,
    Saga,
    SagaDefinitionError,
    SagaTimeout,
    StepKind,
    Transition,
)

__all__ = [
    "Instance",
    "RetryBackoff",
    "Saga",
    "SagaDefinitionError",
    "SagaTimeout",
    "StepKind",
    "Transition",
]
