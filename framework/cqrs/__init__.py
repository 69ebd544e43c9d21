"""CQRS read side: projections of events into read models, idempotent and rebuildable."""

from framework.cqrs.projection import EVENT_LOG_SCHEMA, Projection, find_projection

__all__ = ["EVENT_LOG_SCHEMA", "Projection", "find_projection"]
