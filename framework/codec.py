"""Encoding and strict decoding of contracts, built once at start-up.

``Codec`` holds one JSON decoder per registered ``(wire name, version)``; decoding checks the
size limit, the content type, the type and the version before the body is parsed, and turns every
problem into a ``DecodeFailure`` whose ``reason`` goes into the DLQ header.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import msgspec

from framework.errors import ContractError, DecodeFailure
from framework.messages import Message, validate_contract

__all__ = ["DEFAULT_MAX_BODY_SIZE", "Codec"]

DEFAULT_MAX_BODY_SIZE = 1024 * 1024

_ACCEPTED_CONTENT_TYPES = frozenset({"application/json", "text/json"})
_VALIDATION = re.compile(r"^(?P<what>.*?)(?: - at `(?P<path>[^`]*)`)?$", re.DOTALL)


class Codec:
    """Encodes contracts to JSON and decodes bodies against a closed set of contract types.

    Args:
        types: every contract class the app sends or receives.
        max_body_size: bodies larger than this (bytes) are refused before parsing.

    Raises:
        ContractError: a class breaks the contract rules, or two classes share a wire name and
            version.
    """

    def __init__(
        self, types: Iterable[type[Message]], *, max_body_size: int = DEFAULT_MAX_BODY_SIZE
    ) -> None:
        self.max_body_size = max_body_size
        self._encoder = msgspec.json.Encoder()
        self._decoders: dict[tuple[str, int], msgspec.json.Decoder[Any]] = {}
        self._types: dict[tuple[str, int], type[Message]] = {}
        self._versions: dict[str, list[int]] = {}
        for cls in types:
            self.add(cls)

    def add(self, cls: type[Message]) -> None:
        """Register one more contract class (start-up only)."""
        validate_contract(cls)
        key = (cls.__wire_name__, cls.__wire_version__)
        known = self._types.get(key)
        if known is cls:
            return
        if known is not None:
            raise ContractError(
                f"{cls.__qualname__} and {known.__qualname__} both claim wire name "
                f"{key[0]!r} version {key[1]}: give one of them another name or version"
            )
        self._types[key] = cls
        self._decoders[key] = msgspec.json.Decoder(cls)
        self._versions.setdefault(key[0], []).append(key[1])

    def types(self) -> list[type[Message]]:
        """Every registered contract class."""
        return list(self._types.values())

    def encode(self, message: Message) -> bytes:
        """JSON body of a contract."""
        return self._encoder.encode(message)

    def decode(
        self,
        body: bytes,
        *,
        wire_name: str | None,
        version: Any,
        content_type: str | None,
    ) -> Message:
        """Decode a body into its registered contract class.

        A missing version means version 1; a missing content type means JSON (plain clients
        often leave it out).

        Raises:
            DecodeFailure: with a reason such as ``body_too_large``, ``unsupported_content_type``,
                ``missing_type``, ``unknown_type``, ``unsupported_version``, ``invalid_utf8``,
                ``malformed_json`` or ``validation_error: $.path expected int, got str``.
        """
        size = len(body)
        if size > self.max_body_size:
            raise DecodeFailure(f"body_too_large: {size} bytes > limit {self.max_body_size}")
        if content_type is not None:
            media = content_type.split(";", 1)[0].strip().lower()
            if media not in _ACCEPTED_CONTENT_TYPES:
                raise DecodeFailure(f"unsupported_content_type: {content_type!r}")
        if not wire_name:
            raise DecodeFailure("missing_type: the AMQP `type` property must name the contract")
        decoder = self._decoders.get((wire_name, _version(version)))
        if decoder is None:
            versions = self._versions.get(wire_name)
            if versions is None:
                raise DecodeFailure(f"unknown_type: {wire_name!r}")
            raise DecodeFailure(
                f"unsupported_version: {wire_name!r} version {version!r}, "
                f"handled: {sorted(versions)}"
            )
        try:
            return decoder.decode(body)  # type: ignore[no-any-return]  # decoder typed per class
        except msgspec.ValidationError as exc:
            raise DecodeFailure(f"validation_error: {_describe_validation(str(exc))}") from None
        except msgspec.DecodeError as exc:
            text = str(exc)
            if "UTF-8" in text:
                raise DecodeFailure(f"invalid_utf8: {text}") from None
            raise DecodeFailure(f"malformed_json: {text}") from None


def _version(raw: Any) -> int:
    if raw is None:
        return 1
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if isinstance(raw, bytes | str):
        try:
            return int(raw)
        except ValueError:
            return -1
    return -1


def _describe_validation(text: str) -> str:
    """``Expected `int`, got `str` - at `$.a[0]``` -> ``$.a[0] expected int, got str``."""
    match = _VALIDATION.match(text)
    what = (match.group("what") if match else text).replace("`", "")
    what = what[:1].lower() + what[1:]
    path = match.group("path") if match else None
    return f"{path} {what}" if path else what
