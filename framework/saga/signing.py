"""Proof that the framework made a message: keyed message ids and timeout tokens.

The saga runner derives the ids of the messages it emits and the token of every timeout it arms
with HMAC-SHA256 under one secret, and transactional handlers the ids of the messages they emit
(``Signer.emitted_id``; the app hands its ``SagaKeys`` to both). To the framework they stay
deterministic (a retried transaction or a re-published outbox row derives the same id, so
inboxes still drop duplicates); to anyone without the secret they are unguessable, so no one
can pre-empt an id in an inbox or forge a timeout (see DESIGN.md, "Trust boundaries").

The secret is ``AppConfig.secret``, else ``LEVERET_SECRET``, else a random one that the saga store
keeps (``Store.shared_secret``: the first process to ask writes it), so every worker sharing a
store shares it without configuration. It is never logged and never put on the wire.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import secrets
from typing import Final

import msgspec

from framework.errors import ConfigurationError
from framework.store.base import SecretKeeper, Store
from framework.urls import redact

__all__ = ["MIN_SECRET_LENGTH", "SECRET_ENV", "SagaKeys", "Signer", "check_secret", "env_secret"]

MIN_SECRET_LENGTH: Final = 16
SECRET_ENV: Final = "LEVERET_SECRET"
# AMQP's message-id is a short string; a derived id never exceeds it.
MAX_ID_BYTES: Final = 255
# Hex digits of the tag that ends a derived id (64 bits) and of a timeout's token (128 bits).
ID_TAG_CHARS: Final = 16
TOKEN_CHARS: Final = 32
# The most of a handler's name a derived id shows (the tag covers all of it).
MAX_HANDLER_BYTES: Final = 64
_ELLIPSIS: Final = "…"

_encode = msgspec.json.Encoder().encode


def check_secret(secret: object, where: str) -> str:
    """``secret`` if it is a string of at least ``MIN_SECRET_LENGTH`` characters.

    Raises:
        ConfigurationError: naming ``where`` and what to change (never the value).
    """
    if not isinstance(secret, str) or len(secret) < MIN_SECRET_LENGTH:
        size = f"{len(secret)} characters" if isinstance(secret, str) else type(secret).__name__
        raise ConfigurationError(
            f"{where} is {size}: use a string of at least {MIN_SECRET_LENGTH} characters "
            "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'), or leave it "
            "unset to use a secret kept in the saga store"
        )
    return secret


def env_secret() -> str | None:
    """``LEVERET_SECRET`` from the environment, None when unset or empty.

    Raises:
        ConfigurationError: it is set but shorter than ``MIN_SECRET_LENGTH``.
    """
    value = os.environ.get(SECRET_ENV)
    if not value:
        return None
    return check_secret(value, f"the environment variable {SECRET_ENV}")


class Signer:
    """HMAC-SHA256 under one secret, keyed once; each message costs a copy of the keyed state.

    Every digest covers a purpose and the fields as one JSON array, so no two different inputs
    (whatever characters a business key holds) and no two purposes share a digest.
    """

    __slots__ = ("_mac",)

    def __init__(self, secret: str) -> None:
        self._mac = hmac.new(secret.encode(), digestmod=hashlib.sha256)

    def __repr__(self) -> str:
        return "Signer(***)"

    def _digest(self, fields: tuple[str | int, ...]) -> str:
        mac = self._mac.copy()
        mac.update(_encode(fields))
        return mac.hexdigest()

    def message_id(self, saga_id: str, version: int, slot: int | str) -> str:
        """``<saga id>/<version>/<slot>/<tag>``: readable, deterministic, unguessable.

        A saga id too long for AMQP's 255-byte message id is shortened (ending in ``…``); the
        tag still covers all of it.
        """
        tag = self._digest(("id", saga_id, version, slot))[:ID_TAG_CHARS]
        return _fitted(saga_id, f"/{version}/{slot}/{tag}")

    def emitted_id(self, message_id: str, handler: str, n: int) -> str:
        """``<message id>/<handler>/<n>/<tag>``: the id of the ``n``-th message (from 0) that
        ``handler``, a transactional handler, emits while handling ``message_id``.

        Deterministic, so a redelivery emits the same ids; unguessable, so no one who chose or
        saw ``message_id`` can publish a message with one of them first and have its receiver's
        inbox drop the real one. Shortened like ``message_id``: the message id (and a handler
        name over ``MAX_HANDLER_BYTES``) ends in ``…``; the tag covers all of both.
        """
        tag = self._digest(("emitted", message_id, handler, n))[:ID_TAG_CHARS]
        shown = _clipped(handler, MAX_HANDLER_BYTES)
        return _fitted(message_id, f"/{shown}/{n}/{tag}")

    def event_id(self, message_id: str, handler: str, slot: str) -> str:
        """``<message id>/<handler>/<slot>/<tag>``: the id of an event a transactional handler
        stores and publishes while handling ``message_id`` (``slot`` is ``<stream>@<version>``).

        Deterministic and unguessable like ``emitted_id``, shortened the same way.
        """
        tag = self._digest(("event", message_id, handler, slot))[:ID_TAG_CHARS]
        shown = _clipped(handler, MAX_HANDLER_BYTES)
        return _fitted(message_id, f"/{shown}/{_clipped(slot, MAX_HANDLER_BYTES)}/{tag}")

    def timeout_token(self, saga: str, saga_id: str, state: str, armed_version: int) -> str:
        """The token a timeout armed by saga ``saga`` for this instance, state and version
        carries."""
        return self._digest(("timeout", saga, saga_id, state, armed_version))[:TOKEN_CHARS]

    def timeout_valid(
        self, saga: str, saga_id: str, state: str, armed_version: int, token: str
    ) -> bool:
        """Whether ``token`` is the one the framework gave this timeout (constant time)."""
        expected = self.timeout_token(saga, saga_id, state, armed_version)
        return hmac.compare_digest(expected.encode(), token.encode(errors="surrogatepass"))


def _clipped(text: str, limit: int) -> str:
    """``text`` if it fits in ``limit`` UTF-8 bytes, else its start and ``…`` in that many."""
    if len(text) * 4 <= limit or len(text.encode()) <= limit:
        return text
    room = limit - len(_ELLIPSIS.encode())
    return text.encode()[:room].decode(errors="ignore") + _ELLIPSIS


def _fitted(head: str, tail: str) -> str:
    """``head + tail`` in ``MAX_ID_BYTES``, shortening ``head`` (``tail`` is short)."""
    return _clipped(head, MAX_ID_BYTES - len(tail.encode())) + tail


class SagaKeys:
    """Where an app's saga runners get their ``Signer``: the configured secret, else the store's.

    Args:
        secret: ``AppConfig.secret`` or ``LEVERET_SECRET`` (checked by the caller); None asks
            the store (``Store.shared_secret``) the first time a runner needs it, and again only
            when the runner's store is replaced.
    """

    def __init__(self, secret: str | None = None) -> None:
        self._fixed = None if secret is None else Signer(secret)
        self._store: Store | None = None
        self._signer: Signer | None = None
        self._lock = asyncio.Lock()

    @property
    def configured(self) -> bool:
        """Whether the secret came from the configuration rather than the store."""
        return self._fixed is not None

    async def signer(self, store: Store) -> Signer:
        """The signer for messages of sagas kept in ``store``.

        Raises:
            ConfigurationError: no secret is configured and ``store`` cannot keep one, or the
                one it keeps is too short.
        """
        if self._fixed is not None:
            return self._fixed
        if self._store is store and self._signer is not None:
            return self._signer
        async with self._lock:
            if self._store is not store or self._signer is None:
                self._signer = Signer(await _stored_secret(store))
                self._store = store
            return self._signer


async def _stored_secret(store: Store) -> str:
    if not isinstance(store, SecretKeeper):
        raise ConfigurationError(
            f"{type(store).__name__} cannot keep the sagas' secret: set AppConfig(secret=...) "
            f"or {SECRET_ENV}"
        )
    kept = await store.shared_secret(secrets.token_hex(32))
    return check_secret(kept, f"the secret kept in the store at {redact(store.url)}")
