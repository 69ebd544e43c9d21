"""Encoding and strict decoding of contracts, built once at start-up.

``Codec`` holds one JSON decoder per registered ``(wire name, version)``; decoding checks the
size limit, the content type, the type and the version before the body is parsed, and turns every
problem into a ``DecodeFailure`` whose ``reason`` goes into the DLQ header.

Several versions of one wire name live side by side. Decoding ``into`` a handler's class takes an
older version through the upcasters planned when they were registered (start-up), never per
message; the handler's own version costs one comparison more than plain decoding.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable
from typing import Any

import msgspec

from framework.errors import ContractError, DecodeFailure
from framework.messages import Message, validate_contract
from framework.upcasting import Upcaster

__all__ = ["DEFAULT_MAX_BODY_SIZE", "Codec"]

DEFAULT_MAX_BODY_SIZE = 1024 * 1024

_ACCEPTED_CONTENT_TYPES = frozenset({"application/json", "text/json"})
_VALIDATION = re.compile(r"^(?P<what>.*?)(?: - at `(?P<path>[^`]*)`)?$", re.DOTALL)


class Codec:
    """Encodes contracts to JSON and decodes bodies against a closed set of contract types.

    Args:
        types: every contract class the app sends or receives.
        upcasters: conversions from older to newer versions; their classes are registered too.
        max_body_size: bodies larger than this (bytes) are refused before parsing.

    Raises:
        ContractError: a class breaks the contract rules, two classes share a wire name and
            version, or two upcasters join the same two versions.
    """

    def __init__(
        self,
        types: Iterable[type[Message]],
        *,
        upcasters: Iterable[Upcaster[Any, Any]] = (),
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
    ) -> None:
        self.max_body_size = max_body_size
        self._encoder = msgspec.json.Encoder()
        self._decoders: dict[tuple[str, int], msgspec.json.Decoder[Any]] = {}
        self._types: dict[tuple[str, int], type[Message]] = {}
        self._versions: dict[str, list[int]] = {}
        self._upcasters: dict[tuple[str, int, int], Upcaster[Any, Any]] = {}
        # (wire name, from version, to version) -> the upcasters to apply, in order
        self._paths: dict[tuple[str, int, int], tuple[Upcaster[Any, Any], ...]] = {}
        for cls in types:
            self.add(cls)
        for up in upcasters:
            self.add_upcaster(up)

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
        self._plan(key[0])

    def add_upcaster(self, upcaster: Upcaster[Any, Any]) -> None:
        """Register an upcaster and both its classes (start-up only).

        Raises:
            ContractError: another upcaster already joins the same two versions.
        """
        self.add(upcaster.source)
        self.add(upcaster.target)
        key = (upcaster.wire_name, upcaster.from_version, upcaster.to_version)
        known = self._upcasters.get(key)
        if known is upcaster:
            return
        if known is not None:
            raise ContractError(
                f"{upcaster.where} and {known.where} both upcast {key[0]!r} from version "
                f"{key[1]} to {key[2]}: keep one"
            )
        self._upcasters[key] = upcaster
        self._plan(upcaster.wire_name)

    def _plan(self, wire_name: str) -> None:
        """Find the shortest upcaster path between every two versions of ``wire_name``."""
        versions = sorted(self._versions.get(wire_name, ()))
        edges: dict[int, list[Upcaster[Any, Any]]] = {}
        for (name, start, _), up in sorted(self._upcasters.items()):
            if name == wire_name:
                edges.setdefault(start, []).append(up)
        for source in versions:
            paths: dict[int, tuple[Upcaster[Any, Any], ...]] = {source: ()}
            todo = deque([source])
            while todo:
                at = todo.popleft()
                for up in edges.get(at, ()):
                    if up.to_version not in paths:
                        paths[up.to_version] = (*paths[at], up)
                        todo.append(up.to_version)
            for target, path in paths.items():
                if path:
                    self._paths[(wire_name, source, target)] = path

    def types(self) -> list[type[Message]]:
        """Every registered contract class."""
        return list(self._types.values())

    def upcasters(self) -> list[Upcaster[Any, Any]]:
        """Every registered upcaster, by wire name and versions."""
        return [self._upcasters[key] for key in sorted(self._upcasters)]

    def versions(self, wire_name: str) -> list[int]:
        """The registered versions of a wire name, oldest first."""
        return sorted(self._versions.get(wire_name, ()))

    def upcast_path(
        self, wire_name: str, from_version: int, to_version: int
    ) -> tuple[Upcaster[Any, Any], ...] | None:
        """The upcasters that take ``from_version`` to ``to_version``; ``()`` when equal, None
        when there is no path."""
        if from_version == to_version:
            return ()
        return self._paths.get((wire_name, from_version, to_version))

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
        into: type[Message] | None = None,
    ) -> Message:
        """Decode a body into its registered contract class, or upcast it ``into`` a newer one.

        A missing version means version 1; a missing content type means JSON (plain clients
        often leave it out). With ``into`` (a handler's class), an older version of the same
        wire name is decoded with its own class and passed through the upcasters; a version
        with no path to ``into`` fails. A message of another wire name is returned as it is.

        Raises:
            DecodeFailure: with a reason such as ``body_too_large``, ``unsupported_content_type``,
                ``missing_type``, ``unknown_type``, ``unsupported_version``, ``invalid_utf8``,
                ``malformed_json``, ``too_deeply_nested``, ``invalid_message`` (a contract's
                ``__post_init__`` raised),
                ``validation_error: $.path expected int, got str`` or ``upcast_failed``.
        """
        size = len(body)
        if size > self.max_body_size:
            raise DecodeFailure(f"body_too_large: {size} bytes > limit {self.max_body_size}")
        if content_type is not None and content_type not in _ACCEPTED_CONTENT_TYPES:
            media = content_type.split(";", 1)[0].strip().lower()
            if media not in _ACCEPTED_CONTENT_TYPES:
                raise DecodeFailure(f"unsupported_content_type: {content_type!r}")
        if not wire_name:
            raise DecodeFailure("missing_type: the AMQP `type` property must name the contract")
        number = _version(version)
        decoder = self._decoders.get((wire_name, number))
        if decoder is None:
            versions = self._versions.get(wire_name)
            if versions is None:
                raise DecodeFailure(f"unknown_type: {wire_name!r}")
            raise DecodeFailure(
                f"unsupported_version: {wire_name!r} version {version!r}, "
                f"handled: {sorted(versions)}"
            )
        path: tuple[Upcaster[Any, Any], ...] = ()
        if into is not None and number != into.__wire_version__ and wire_name == into.__wire_name__:
            found = self._paths.get((wire_name, number, into.__wire_version__))
            if found is None:
                raise DecodeFailure(
                    f"unsupported_version: {wire_name!r} version {number} has no upcaster "
                    f"path to version {into.__wire_version__}, which this handler reads"
                )
            path = found
        try:
            message: Message = decoder.decode(body)
        except msgspec.ValidationError as exc:
            if exc.__cause__ is not None:  # msgspec wraps what a __post_init__ raised
                raise DecodeFailure(_invalid_message(exc.__cause__, str(exc))) from None
            raise DecodeFailure(f"validation_error: {_describe_validation(str(exc))}") from None
        except msgspec.DecodeError as exc:
            text = str(exc)
            if "UTF-8" in text:
                raise DecodeFailure(f"invalid_utf8: {text}") from None
            raise DecodeFailure(f"malformed_json: {text}") from None
        except RecursionError:
            # msgspec guards its recursion with the interpreter's limit (about 1000 levels,
            # less the stack in use), so the depth is bounded; it raises this, not DecodeError.
            raise DecodeFailure(
                "too_deeply_nested: the JSON nests deeper than the decoder's recursion limit"
            ) from None
        except Exception as exc:
            # A contract's __post_init__ may raise anything; msgspec wraps only ValueError and
            # TypeError. Whatever it is, the message is bad input, not a reason to leave it
            # unsettled on its channel.
            raise DecodeFailure(f"invalid_message: {type(exc).__name__}: {exc}") from None
        return self._upcast(message, path) if path else message

    def _upcast(self, message: Message, path: tuple[Upcaster[Any, Any], ...]) -> Message:
        first, last = path[0], path[-1]
        what = f"{first.wire_name!r} version {first.from_version} -> {last.to_version}"
        for step in path:
            try:
                message = step.func(message)
            except Exception as exc:
                raise DecodeFailure(
                    f"upcast_failed: {what}: {step.where} raised {type(exc).__name__}: {exc}"
                ) from None
            if type(message) is not step.target:
                raise DecodeFailure(
                    f"upcast_failed: {what}: {step.where} returned "
                    f"{type(message).__qualname__}, not {step.target.__qualname__}"
                )
        # Struct constructors check no constraints: validate the result as if it came on the wire.
        decoder = self._decoders[(last.wire_name, last.to_version)]
        try:
            result: Message = decoder.decode(self._encoder.encode(message))
        except msgspec.ValidationError as exc:
            raise DecodeFailure(
                f"upcast_failed: {what} gave an invalid message: {_describe_validation(str(exc))}"
            ) from None
        return result


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


def _invalid_message(cause: BaseException, text: str) -> str:
    """``invalid_message: ValueError: qty must be positive`` (``at $.items[0]`` when nested)."""
    match = _VALIDATION.match(text)
    path = match.group("path") if match else None
    where = f" at {path}" if path and path != "$" else ""
    return f"invalid_message: {type(cause).__name__}: {cause}{where}"


def _describe_validation(text: str) -> str:
    """``Expected `int`, got `str` - at `$.a[0]``` -> ``$.a[0] expected int, got str``."""
    match = _VALIDATION.match(text)
    what = (match.group("what") if match else text).replace("`", "")
    what = what[:1].lower() + what[1:]
    path = match.group("path") if match else None
    return f"{path} {what}" if path else what
