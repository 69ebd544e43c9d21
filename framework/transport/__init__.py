"""Transports: the broker port and its implementations."""

from framework.transport.base import (
    BindingSpec,
    Consumer,
    Delivery,
    DeliveryCallback,
    ExchangeSpec,
    ExchangeType,
    OutgoingMessage,
    QueueSpec,
    Topology,
    Transport,
)

__all__ = [
    "BindingSpec",
    "Consumer",
    "Delivery",
    "DeliveryCallback",
    "ExchangeSpec",
    "ExchangeType",
    "OutgoingMessage",
    "QueueSpec",
    "Topology",
    "Transport",
]
