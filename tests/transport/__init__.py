"""Transport contract tests (memory and RabbitMQ) and RabbitMQ-only tests."""
