"""Log configuration: structlog JSON lines in production, readable lines on a terminal.

Call ``configure_logging()`` once per process (``leveret run`` does it in the supervisor and in
every worker). Whatever the format, a credential in a URL never reaches a log line: every string
value of an event, every formatted traceback and every record from the standard library's
``logging`` (aio-pika, asyncio) passes through ``redact_credentials`` first.

Environment variables override the arguments, so a supervisor's choice reaches its workers:

* ``LEVERET_LOG_LEVEL``: ``debug``, ``info``, ``warning``, ``error`` or ``critical``;
* ``LEVERET_LOG_FORMAT``: ``json`` or ``console``.
"""

from __future__ import annotations

import io
import logging
import os
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, ExcInfo, Processor, WrappedLogger

from framework.errors import ConfigurationError
from framework.urls import redact_query_passwords

__all__ = [
    "LEVELS",
    "LOG_FORMAT_ENV",
    "LOG_LEVEL_ENV",
    "configure_logging",
    "redact_credentials",
    "redact_text",
]

LOG_LEVEL_ENV = "LEVERET_LOG_LEVEL"
LOG_FORMAT_ENV = "LEVERET_LOG_FORMAT"
LEVELS: Mapping[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
_FORMATS = {"json": True, "console": False}

# ``scheme://user:password@`` anywhere in a text. The password part runs to the last ``@``
# before whitespace, not to the first ``/`` or ``@``: an unescaped ``/`` or ``@`` in a password
# must not let the rest leak (at worst a host after a later ``@`` is masked too).
_CREDENTIALS = re.compile(
    r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@'\"]*):\S*@(?=[^\s@]*(?:\s|$))"
)


def redact_text(text: str) -> str:
    """Replace the password of every ``scheme://user:password@`` in ``text``, and every
    ``password=`` in a URL's query, with ``***``.

    >>> redact_text("connecting to amqp://app:s3cret@rabbit:5672/shop failed")
    'connecting to amqp://app:***@rabbit:5672/shop failed'
    """
    if "://" not in text:  # the common case costs one substring search
        return text
    text = _CREDENTIALS.sub(r"\g<head>:***@", text)
    return redact_query_passwords(text)


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: _redact_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_value(v) for v in value]
    if isinstance(value, tuple) and not _is_exc_info(value):
        return tuple(_redact_value(v) for v in value)
    return value


def _is_exc_info(value: object) -> bool:
    return isinstance(value, tuple) and len(value) == 3 and isinstance(value[1], BaseException)


def redact_credentials(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """structlog processor: redact URL passwords in every string value, nested ones included."""
    for key, value in event_dict.items():
        if isinstance(value, str | dict | list | tuple):
            event_dict[key] = _redact_value(value)
    return event_dict


def _redacting_traceback(sio: TextIO, exc_info: ExcInfo) -> None:
    # Plain tracebacks only: rich's would print local variables, passwords among them.
    buffer = io.StringIO()
    structlog.dev.plain_traceback(buffer, exc_info)
    sio.write(redact_text(buffer.getvalue()))


def _add_logger_name(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    record = event_dict.get("_record")
    name = record.name if record is not None else getattr(logger, "name", None)
    if name is not None:
        event_dict.setdefault("logger", name)
    return event_dict


class _NamedWriteLogger(structlog.WriteLogger):
    """A ``WriteLogger`` that remembers the name given to ``structlog.get_logger(name)``."""

    def __init__(self, file: TextIO, name: str | None) -> None:
        super().__init__(file)
        self.name = name


class _NamedWriteLoggerFactory:
    def __init__(self, file: TextIO) -> None:
        self._file = file

    def __call__(self, *args: Any) -> _NamedWriteLogger:
        name = args[0] if args and isinstance(args[0], str) else None
        return _NamedWriteLogger(self._file, name)


def _resolve_level(level: str) -> int:
    chosen = os.environ.get(LOG_LEVEL_ENV) or level
    try:
        return LEVELS[chosen.strip().lower()]
    except KeyError:
        source = f"{LOG_LEVEL_ENV}={chosen!r}" if os.environ.get(LOG_LEVEL_ENV) else repr(chosen)
        raise ConfigurationError(f"log level {source} is not one of {', '.join(LEVELS)}") from None


def _resolve_json(json: bool | None, stream: TextIO) -> bool:
    env = os.environ.get(LOG_FORMAT_ENV)
    if env:
        try:
            return _FORMATS[env.strip().lower()]
        except KeyError:
            raise ConfigurationError(
                f"{LOG_FORMAT_ENV}={env!r} is not a log format: use json or console"
            ) from None
    if json is not None:
        return json
    isatty: Callable[[], bool] | None = getattr(stream, "isatty", None)
    return not (isatty is not None and isatty())


def configure_logging(
    *, json: bool | None = None, level: str = "info", stream: TextIO | None = None
) -> None:
    """Configure structlog (and route the standard library's ``logging`` through it).

    Args:
        json: JSON lines (``True``), readable lines (``False``), or by whether ``stream`` is a
            terminal (``None``). ``LEVERET_LOG_FORMAT`` overrides it.
        level: the lowest level logged. ``LEVERET_LOG_LEVEL`` overrides it. Records of other
            libraries are logged from ``warning`` up whatever the level.
        stream: where lines go; ``sys.stderr`` by default.

    Raises:
        ConfigurationError: an unknown level or format (argument or environment variable).
    """
    out = stream if stream is not None else sys.stderr
    min_level = _resolve_level(level)
    as_json = _resolve_json(json, out)

    renderer: Processor
    if as_json:
        timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
        renderer = structlog.processors.JSONRenderer()
        exceptions: list[Processor] = [structlog.processors.format_exc_info]
    else:
        timestamper = structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%S", utc=False)
        colors = bool(getattr(out, "isatty", lambda: False)())
        renderer = structlog.dev.ConsoleRenderer(
            colors=colors, exception_formatter=_redacting_traceback
        )
        exceptions = []  # the console renderer formats them, through _redacting_traceback

    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _add_logger_name,
        timestamper,
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            *exceptions,
            redact_credentials,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(min_level),
        logger_factory=_NamedWriteLoggerFactory(out),
        cache_logger_on_first_use=True,
    )
    _route_stdlib_logging(
        out,
        level=max(min_level, logging.WARNING),
        formatter=structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *exceptions,
                redact_credentials,
                renderer,
            ],
        ),
    )


_HANDLER_MARK = "_leveret_handler"


def _route_stdlib_logging(out: TextIO, *, level: int, formatter: logging.Formatter) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _HANDLER_MARK, False):
            root.removeHandler(handler)
            handler.close()
    handler = logging.StreamHandler(out)
    setattr(handler, _HANDLER_MARK, True)
    handler.setFormatter(formatter)
    handler.addFilter(_quiet_reconnects)
    root.addHandler(handler)
    root.setLevel(level)


def _quiet_reconnects(record: logging.LogRecord) -> bool:
    """Drop the client libraries' lines about a lost connection that the transport reports.

    On every lost connection aiormq logs an ERROR (``Unexpected connection close from remote``)
    and a WARNING with a traceback (``Cancelling cause reader exited abnormally``), aio-pika an
    ERROR with a traceback for each of its channels (``Callback <OneShotCallback ... _on_close>
    error``), both a line per failed reconnect attempt, and aiormq a WARNING per channel whose
    opening was cancelled (by the transport's deadlines and ``close()``). The transport logs one
    ``broker_connection_lost`` (WARNING) and one ``broker_reconnected`` (INFO) per outage,
    naming the node and the error, an ERROR when the broker refuses the login or the vhost or
    when the outage outlasts its bound, and fails the worker if its consumers do not come back.
    Everything else of theirs passes, a reader that died of anything but a lost connection
    (a malformed frame) among it.
    """
    name = record.name
    if name.startswith("aiormq."):
        message = str(record.msg)
        if message.startswith(("Unexpected connection close from remote", "error when creating")):
            return False
        if name == "aiormq.channel" and message.startswith("Closing channel "):
            return False  # an RPC cancelled: by our deadline, by close(), by a lost connection
        if message.startswith("Cancelling cause reader exited abnormally"):
            error = record.exc_info[1] if record.exc_info else None
            return not isinstance(error, ConnectionError)  # aiormq's AMQPConnectionError too
        return True
    if not name.startswith("aio_pika."):
        return True
    if name == "aio_pika.tools":
        return not str(record.msg).startswith("Callback ")
    if name == "aio_pika.robust_connection":
        message = str(record.msg)
        return "Reconnecting after" not in message and "Retrying after" not in message
    return True
