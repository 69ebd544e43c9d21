"""Does a reader schema accept every message a writer schema allows?

``compare(reader, writer)`` walks two JSON Schema documents as msgspec writes them (``$defs`` and
``$ref``, ``anyOf``, ``enum``, objects, arrays, dicts, tuples, numeric and length constraints)
and returns what the writer may send that the reader rejects, field by field. It follows
msgspec's decoding rules: unknown fields are ignored unless the reader forbids them, an integer
is accepted where a number is expected, and a field without a default is required.

The result is direction-free (reader and writer); ``framework.schema.compat`` turns it into
plain words for the backward (new code reads old messages) and forward (old code reads new
messages) checks.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["Issue", "compare", "describe"]

Node = dict[str, Any]
_ANY: Node = {}
_TYPES = ("null", "boolean", "integer", "number", "string", "array", "object")
# Types with so few values that a plain one compares with an enum value by value.
_FINITE: dict[str, list[Any]] = {"null": [None], "boolean": [False, True]}


@dataclass(frozen=True, slots=True)
class Issue:
    """One way in which writer messages can fail the reader.

    ``kind`` is one of:

    * ``missing``: the reader requires field ``path``; the writer does not have it.
    * ``made_required``: the reader requires ``path``; the writer may leave it out.
    * ``changed``: the reader accepts none of the writer's values at ``path``.
    * ``narrower``: the reader accepts only some of them (a range, a length, an alternative).
    * ``enum_missing``: the reader lacks the enum ``values`` the writer may send.
    * ``unknown_forbidden``: the writer sends ``path``, the reader forbids unknown fields.

    ``reader`` and ``writer`` describe the two types in words.
    """

    kind: str
    path: str
    reader: str = ""
    writer: str = ""
    values: tuple[Any, ...] = ()


def compare(reader: Node, writer: Node) -> list[Issue]:
    """What messages valid under ``writer`` may hold that ``reader`` rejects (documents)."""
    return _Comparison(reader, writer).run()


def describe(document: Node, node: Node | None = None) -> str:
    """A short description of a type in ``document``: ``integer 1..10000``, ``string or null``."""
    doc = _Document(document)
    return doc.describe(doc.root if node is None else node)


class _Document:
    def __init__(self, document: Node) -> None:
        self.document = document
        self.defs: dict[str, Node] = document.get("$defs", {})
        self.root = document

    def resolve(self, node: Any) -> Node:
        seen: set[str] = set()
        while isinstance(node, dict) and "$ref" in node:
            ref = node["$ref"]
            if not isinstance(ref, str) or ref in seen or not ref.startswith("#/$defs/"):
                break
            seen.add(ref)
            node = self.defs.get(ref.removeprefix("#/$defs/"), _ANY)
        if node is True or node is None:
            return _ANY
        if node is False:
            return {"not": {}}
        return node if isinstance(node, dict) else _ANY

    def alternatives(self, node: Any) -> list[tuple[str, Node]]:
        """``(category, schema)`` pairs; the categories are JSON types or ``any``."""
        node = self.resolve(node)
        found: list[tuple[str, Node]] = []
        for key in ("anyOf", "oneOf"):
            if key in node:
                for option in node[key]:
                    found.extend(self.alternatives(option))
                return found
        if "const" in node or "enum" in node:
            values = [node["const"]] if "const" in node else list(node["enum"])
            by_category: dict[str, list[Any]] = {}
            for value in values:
                by_category.setdefault(_category_of(value), []).append(value)
            return [(cat, {**node, "enum": vals}) for cat, vals in by_category.items()]
        kind = node.get("type")
        if kind is None:
            return [("any", node)]
        if isinstance(kind, str):
            # The node itself, not a copy: the recursion guard of ``object`` goes by identity.
            return [(kind, node)] if kind in _TYPES else []
        return [(k, {**node, "type": k}) for k in kind if k in _TYPES]

    def describe(self, node: Any, depth: int = 0) -> str:
        parts = [self._describe(cat, alt, depth) for cat, alt in self.alternatives(node)]
        return " or ".join(dict.fromkeys(parts)) or "nothing"

    def _describe(self, cat: str, node: Node, depth: int) -> str:
        if cat == "any":
            return "anything"
        if "enum" in node:
            values = [json.dumps(v) for v in node["enum"]]
            shown = ", ".join(values[:6]) + (", ..." if len(values) > 6 else "")
            return f"one of {shown}"
        if cat in ("integer", "number"):
            bounds = _range_text(node)
            return f"{cat} {bounds}" if bounds else cat
        if cat == "string":
            extra = [node[k] for k in ("format", "contentEncoding") if k in node]
            extra += [f"{k} {node[k]}" for k in ("minLength", "maxLength", "pattern") if k in node]
            return f"string ({', '.join(map(str, extra))})" if extra else "string"
        if cat == "array":
            if depth > 1:
                return "array"
            if "prefixItems" in node:
                inner = ", ".join(self.describe(i, depth + 1) for i in node["prefixItems"])
                return f"tuple of ({inner})"
            return f"array of {self.describe(node.get('items', _ANY), depth + 1)}"
        if cat == "object":
            if "properties" in node:
                return str(node.get("title", "object"))
            value_schema = node.get("additionalProperties")
            if isinstance(value_schema, dict) and depth <= 1:
                return f"object of {self.describe(value_schema, depth + 1)}"
            return "object"
        return cat


def _category_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


class _Comparison:
    def __init__(self, reader: Node, writer: Node) -> None:
        self.r = _Document(reader)
        self.w = _Document(writer)
        self.active: set[tuple[int, int]] = set()

    def run(self) -> list[Issue]:
        return self.node(self.r.root, self.w.root, "")

    def node(self, reader: Any, writer: Any, path: str) -> list[Issue]:
        r_alts = self.r.alternatives(reader)
        if any(cat == "any" and not alt.get("not") for cat, alt in r_alts):
            return []
        issues: list[Issue] = []
        accepted = 0
        rejected = 0
        # Tagged unions: a struct matches only the struct with its tag value.
        tag = _discriminator(self.w.resolve(writer)) or _discriminator(self.r.resolve(reader))
        for w_cat, w_alt in self.w.alternatives(writer):
            candidates = [(r_cat, r_alt) for r_cat, r_alt in r_alts if _fits(r_cat, w_cat)]
            w_tag = _tag_value(w_alt, tag)
            if w_tag is not None:
                candidates = [(c, a) for c, a in candidates if _tag_value(a, tag) == w_tag]
            if w_cat == "any" or not candidates:
                rejected += 1
                continue
            best: list[Issue] | None = None
            for r_cat, r_alt in self._by_likeness(candidates, w_alt):
                found = self.same(r_cat, r_alt, w_cat, w_alt, path)
                if best is None or len(found) < len(best):
                    best = found
                if not found:
                    break
            accepted += 1
            issues.extend(best or ())
        if rejected:
            kind = "narrower" if accepted else "changed"
            issues.insert(0, self.issue(kind, path, reader, writer))
        return issues

    def issue(self, kind: str, path: str, reader: Any, writer: Any) -> Issue:
        return Issue(kind, path, self.r.describe(reader), self.w.describe(writer))

    @staticmethod
    def _by_likeness(candidates: list[tuple[str, Node]], writer: Node) -> list[tuple[str, Node]]:
        # Match a struct in a union with the struct of the same name first.
        title = writer.get("title")
        return sorted(candidates, key=lambda pair: pair[1].get("title") != title)

    def same(self, r_cat: str, r: Node, w_cat: str, w: Node, path: str) -> list[Issue]:
        """Compare two alternatives whose categories fit (same type, or integer in number)."""
        if "enum" in r or "enum" in w:
            return self.enum(r, w_cat, w, path)
        if r_cat == "integer" and w_cat == "number":
            return [self.issue("narrower", path, r, w)]
        narrowed = False
        if r_cat in ("integer", "number"):
            narrowed = not _range_covers(r, w, integer=r_cat == w_cat == "integer")
            multiple = r.get("multipleOf")
            if multiple is not None:
                theirs = w.get("multipleOf")
                narrowed |= theirs is None or not _is_multiple(theirs, multiple)
        elif r_cat == "string":
            narrowed = not _lengths_cover(r, w, "minLength", "maxLength") or any(
                k in r and r[k] != w.get(k) for k in ("pattern", "format", "contentEncoding")
            )
        elif r_cat == "array":
            return self.array(r, w, path)
        elif r_cat == "object":
            return self.object(r, w, path)
        return [self.issue("narrower", path, r, w)] if narrowed else []

    def enum(self, r: Node, w_cat: str, w: Node, path: str) -> list[Issue]:
        values = w.get("enum", _FINITE.get(w_cat))
        if values is None:
            return [self.issue("narrower", path, r, w)]
        if "enum" in r:
            missing = tuple(v for v in values if not _contains(r["enum"], v))
        else:
            missing = tuple(v for v in values if not _value_fits(r, v))
        if not missing:
            return []
        return [Issue("enum_missing", path, self.r.describe(r), self.w.describe(w), missing)]

    def array(self, r: Node, w: Node, path: str) -> list[Issue]:
        issues: list[Issue] = []
        if not _lengths_cover(r, w, "minItems", "maxItems") or (
            r.get("uniqueItems") and not w.get("uniqueItems")
        ):
            issues.append(self.issue("narrower", path, r, w))
        r_tuple, w_tuple = r.get("prefixItems"), w.get("prefixItems")
        if r_tuple is not None and w_tuple is not None:
            for index, (ri, wi) in enumerate(zip(r_tuple, w_tuple, strict=False)):
                issues += self.node(ri, wi, f"{path}[{index}]")
        elif r_tuple is not None:
            if not issues:
                issues.append(self.issue("narrower", path, r, w))
        elif w_tuple is not None:
            for index, wi in enumerate(w_tuple):
                issues += self.node(r.get("items", _ANY), wi, f"{path}[{index}]")
        else:
            issues += self.node(r.get("items", _ANY), w.get("items", _ANY), f"{path}[]")
        return issues

    def object(self, r: Node, w: Node, path: str) -> list[Issue]:
        key = (id(r), id(w))
        if key in self.active:
            return []  # a recursive type: this pair is being compared further up
        self.active.add(key)
        try:
            r_struct, w_struct = "properties" in r, "properties" in w
            if r_struct and w_struct:
                return self.fields(r, w, path)
            if r_struct or w_struct:
                return [self.issue("changed", path, r, w)]
            issues: list[Issue] = []
            if not _lengths_cover(r, w, "minProperties", "maxProperties"):
                issues.append(self.issue("narrower", path, r, w))
            if "propertyNames" in r:
                keys = self.node(r["propertyNames"], w.get("propertyNames", _ANY), f"{path}{{}}")
                issues += [
                    Issue("narrower", i.path, i.reader, i.writer, i.values)
                    if i.kind == "changed"
                    else i
                    for i in keys
                ]
            r_values = r.get("additionalProperties", _ANY)
            w_values = w.get("additionalProperties", _ANY)
            if r_values is not False:
                issues += self.node(r_values, w_values, f"{path}{{}}")
            elif w_values is not False:
                issues.append(self.issue("narrower", path, r, w))
            return issues
        finally:
            self.active.discard(key)

    def fields(self, r: Node, w: Node, path: str) -> list[Issue]:
        r_props: dict[str, Any] = r.get("properties", {})
        w_props: dict[str, Any] = w.get("properties", {})
        r_required = set(r.get("required", ()))
        w_required = set(w.get("required", ()))
        issues: list[Issue] = []
        for name in _ordered(r_props, r_required):
            where = _join(path, name)
            if name in r_required and name not in w_props:
                issues.append(Issue("missing", where, self.r.describe(r_props.get(name, _ANY))))
                continue
            if name in r_required and name not in w_required:
                issues.append(self.issue("made_required", where, r_props[name], w_props[name]))
            if name in w_props:
                issues += self.node(r_props[name], w_props[name], where)
        if r.get("additionalProperties") is False:
            for name in w_props:
                if name not in r_props:
                    where = _join(path, name)
                    issues.append(
                        Issue("unknown_forbidden", where, "", self.w.describe(w_props[name]))
                    )
        return issues


def _discriminator(node: Node) -> str | None:
    found = node.get("discriminator")
    if isinstance(found, dict):
        name = found.get("propertyName")
        return name if isinstance(name, str) else None
    return found if isinstance(found, str) else None


def _tag_value(node: Node, tag: str | None) -> Any:
    if tag is None:
        return None
    prop = node.get("properties", {}).get(tag)
    if isinstance(prop, dict):
        values = prop.get("enum", [prop["const"]] if "const" in prop else [])
        if len(values) == 1:
            return values[0]
    return None


def _fits(r_cat: str, w_cat: str) -> bool:
    return (
        r_cat == w_cat
        or (r_cat == "number" and w_cat == "integer")
        or (r_cat == "integer" and w_cat == "number")
    )


def _ordered(props: dict[str, Any], required: set[str]) -> Iterator[str]:
    yield from props
    yield from sorted(required - set(props))


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _contains(values: list[Any], value: Any) -> bool:
    # 1 == True in Python, but not in JSON.
    return any(type(v) is type(value) and v == value for v in values)


def _value_fits(node: Node, value: Any) -> bool:
    if isinstance(value, str):
        if len(value) < node.get("minLength", 0) or len(value) > node.get("maxLength", math.inf):
            return False
        pattern = node.get("pattern")
        return pattern is None or re.search(pattern, value) is not None
    if isinstance(value, int | float) and not isinstance(value, bool):
        lo, lo_ex, hi, hi_ex = _bounds(node)
        if lo is not None and (value < lo or (lo_ex and value == lo)):
            return False
        return hi is None or not (value > hi or (hi_ex and value == hi))
    return True


def _bounds(node: Node) -> tuple[float | None, bool, float | None, bool]:
    lo, lo_ex = node.get("minimum"), False
    if "exclusiveMinimum" in node and (lo is None or node["exclusiveMinimum"] >= lo):
        lo, lo_ex = node["exclusiveMinimum"], True
    hi, hi_ex = node.get("maximum"), False
    if "exclusiveMaximum" in node and (hi is None or node["exclusiveMaximum"] <= hi):
        hi, hi_ex = node["exclusiveMaximum"], True
    return lo, lo_ex, hi, hi_ex


def _integer_bounds(node: Node) -> tuple[float | None, bool, float | None, bool]:
    lo, lo_ex, hi, hi_ex = _bounds(node)
    if lo is not None and lo_ex:
        lo, lo_ex = math.floor(lo) + 1, False
    if hi is not None and hi_ex:
        hi, hi_ex = math.ceil(hi) - 1, False
    return lo, lo_ex, hi, hi_ex


def _range_covers(r: Node, w: Node, *, integer: bool) -> bool:
    bounds = _integer_bounds if integer else _bounds
    r_lo, r_lo_ex, r_hi, r_hi_ex = bounds(r)
    w_lo, w_lo_ex, w_hi, w_hi_ex = bounds(w)
    low_ok = r_lo is None or (
        w_lo is not None and (r_lo < w_lo or (r_lo == w_lo and (not r_lo_ex or w_lo_ex)))
    )
    high_ok = r_hi is None or (
        w_hi is not None and (r_hi > w_hi or (r_hi == w_hi and (not r_hi_ex or w_hi_ex)))
    )
    return low_ok and high_ok


def _lengths_cover(r: Node, w: Node, low: str, high: str) -> bool:
    if r.get(low, 0) > w.get(low, 0):
        return False
    return high not in r or (high in w and w[high] <= r[high])


def _is_multiple(value: float, of: float) -> bool:
    ratio = value / of
    return math.isclose(ratio, round(ratio))


def _range_text(node: Node) -> str:
    lo, lo_ex, hi, hi_ex = _bounds(node)
    if lo is not None and hi is not None and not lo_ex and not hi_ex:
        return f"{_num(lo)}..{_num(hi)}"
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_ex else '>='} {_num(lo)}")
    if hi is not None:
        parts.append(f"{'<' if hi_ex else '<='} {_num(hi)}")
    if "multipleOf" in node:
        parts.append(f"multiple of {_num(node['multipleOf'])}")
    return ", ".join(parts)


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
