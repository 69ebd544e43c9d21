"""leveret: an asyncio framework for services on RabbitMQ.

The public API is re-exported here; implementation modules are private unless documented.
"""

from framework.app import App, AppConfig
from framework.bus import Answer, Outbound, PublishMiddleware
from framework.consumer import RejectMessage
from framework.context import Context, MessageContext, QueryContext
from framework.errors import (
    AccessRefused,
    BreakerOpen,
    BrokerAccessDenied,
    BrokerUnreachable,
    ConfigurationError,
    ContractError,
    DecodeFailure,
    HandlerTimeout,
    LeveretError,
    NotEncodable,
    PublishFailed,
    PublishNacked,
    PublishTimeout,
    QueryFailed,
    QueryTimeout,
    RegistrationError,
    ReplyLost,
    TLSVerificationFailed,
    Unroutable,
    WrongBus,
)
from framework.handlers import Service
from framework.messages import Command, Event, Message, Query, Reply
from framework.middleware import Incoming, Middleware
from framework.retry import RetryPolicy
from framework.upcasting import Upcaster, upcaster

__all__ = [
    "AccessRefused",
    "Answer",
    "App",
    "AppConfig",
    "BreakerOpen",
    "BrokerAccessDenied",
    "BrokerUnreachable",
    "Command",
    "ConfigurationError",
    "Context",
    "ContractError",
    "DecodeFailure",
    "Event",
    "HandlerTimeout",
    "Incoming",
    "LeveretError",
    "Message",
    "MessageContext",
    "Middleware",
    "NotEncodable",
    "Outbound",
    "PublishFailed",
    "PublishMiddleware",
    "PublishNacked",
    "PublishTimeout",
    "Query",
    "QueryContext",
    "QueryFailed",
    "QueryTimeout",
    "RegistrationError",
    "RejectMessage",
    "Reply",
    "ReplyLost",
    "RetryPolicy",
    "Service",
    "TLSVerificationFailed",
    "Unroutable",
    "Upcaster",
    "WrongBus",
    "upcaster",
]
