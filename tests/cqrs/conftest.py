"""The CQRS tests use the app suite's ``backend`` fixture (memory and RabbitMQ)."""

from tests.app.conftest import backend

__all__ = ["backend"]
