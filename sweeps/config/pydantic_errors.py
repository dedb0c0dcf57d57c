"""pydantic validation errors → one :class:`~sweeps.errors.SpecError` naming the YAML path a user can search
for (``strategies[1].params.n``), with a sentence they can act on.

pydantic's locations include union tags and other elements that are not keys of the input; they are
dropped here by walking the input data alongside the location.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Sequence
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, Tag, ValidationError

from sweeps.config.fields import _describe, _did_you_mean, _hinted
from sweeps.config.spaces import _SPACE_TYPES
from sweeps.errors import SpecError


def _unwrap_annotated(tp: Any) -> tuple[Any, list[Any]]:
    metadata: list[Any] = []
    while typing.get_origin(tp) is Annotated:
        args = typing.get_args(tp)
        tp, metadata = args[0], [*metadata, *args[1:]]
    return tp, metadata


def _union_members(tp: Any) -> list[Any] | None:
    if typing.get_origin(tp) in (Union, types.UnionType):
        return list(typing.get_args(tp))
    return None


def _step_type(tp: Any, element: Any) -> Any:
    """The annotation reached from ``tp`` by one element of a pydantic error location (field name, list index,
    dict key or union tag); ``None`` when unknown."""
    tp, _ = _unwrap_annotated(tp)
    members = _union_members(tp)
    if members is not None:
        for member in members:  # a tag names its member
            if any(isinstance(m, Tag) and m.tag == element for m in _unwrap_annotated(member)[1]):
                return member
        for member in members:
            found = _step_type(member, element)
            if found is not None:
                return found
        return None
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        field = tp.model_fields.get(element) if isinstance(element, str) else None
        if field is None:
            return None
        return Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
    origin = typing.get_origin(tp)
    if origin is list and isinstance(element, int):
        return typing.get_args(tp)[0]
    if origin is dict:
        return typing.get_args(tp)[1]
    return None


def _type_at(root: Any, loc: Sequence[Any]) -> Any:
    tp = root
    for element in loc:
        tp = _step_type(tp, element)
        if tp is None:
            return None
    return tp


def _models_in(tp: Any) -> list[type[BaseModel]]:
    tp, _ = _unwrap_annotated(tp)
    members = _union_members(tp)
    if members is not None:
        return [m for member in members for m in _models_in(member)]
    return [tp] if isinstance(tp, type) and issubclass(tp, BaseModel) else []


def _literal_values(tp: Any) -> list[str]:
    tp, _ = _unwrap_annotated(tp)
    members = _union_members(tp)
    if members is not None:
        return [v for member in members for v in _literal_values(member)]
    if typing.get_origin(tp) is Literal:
        return [str(v) for v in typing.get_args(tp)]
    return []


def _format_path(parts: Sequence[tuple[Any, bool]]) -> str:
    out = ""
    for key, in_list in parts:
        if in_list:
            out += f"[{key}]"
        else:
            out += f".{key}" if out else str(key)
    return out


def _yaml_path(loc: Sequence[Any], data: Any, key_error: bool = False) -> str:
    """The YAML path of a pydantic error location: union tags and other elements that are not keys of the input are
    dropped. For a missing or unknown key (``key_error``) the last element is the key and is kept."""
    parts: list[tuple[Any, bool]] = []
    node = data
    for i, element in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(node, dict) and element in node:
            parts.append((element, False))
            node = node[element]
        elif isinstance(node, list) and isinstance(element, int) and 0 <= element < len(node):
            parts.append((element, True))
            node = node[element]
        elif isinstance(node, dict) and last and key_error:
            parts.append((element, False))
    return _format_path(parts)


_EXPECTED = {
    "int_type": "expected an integer",
    "int_parsing": "expected an integer",
    "int_from_float": "expected an integer",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "string_type": "expected a string",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "list_type": "expected a list",
    "dict_type": "expected a mapping",
    "model_type": "expected a mapping",
    "model_attributes_type": "expected a mapping",
    "none_required": "expected null",
}


def _error_message(err: dict[str, Any], root: Any) -> str:
    """One pydantic error as a sentence a user can act on."""
    kind, loc, value, ctx = err["type"], err["loc"], err.get("input"), err.get("ctx") or {}
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        allowed = sorted({f for model in _models_in(_type_at(root, loc[:-1])) for f in model.model_fields})
        return _hinted(f"unknown key {loc[-1]!r}", loc[-1], allowed, f"Allowed here: {', '.join(allowed)}")
    if kind == "invalid_key":
        return f"keys must be strings, got {_describe(value)}"
    if kind in ("union_tag_not_found", "union_tag_invalid"):
        given = value.get("type") if isinstance(value, dict) else None
        if given is not None:
            return _hinted(f"unknown search type {given!r}", str(given), _SPACE_TYPES, "Use int, float or categorical")
        return "a search entry needs 'type: int', 'type: float' or 'type: categorical' (or just 'choices: [...]')"
    if kind in _EXPECTED:
        return f"{_EXPECTED[kind]}, got {_describe(value)}"
    if kind == "literal_error":
        allowed = _literal_values(_type_at(root, loc)) or [ctx.get("expected", "")]
        return f"must be one of {', '.join(allowed)}, got {_describe(value)}{_did_you_mean(value, allowed)}"
    bounds = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}
    if kind in bounds:
        limit = next(iter(ctx.values()), "?")
        return f"must be {bounds[kind]} {limit}, got {_describe(value)}"
    if kind == "finite_number":
        return f"must be a finite number, got {_describe(value)}"
    if kind == "too_short":
        return f"must have at least {ctx.get('min_length', 1)} item(s)"
    if kind == "string_too_short":
        return "must not be empty"
    msg = str(err.get("msg", kind))
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    return msg


def _spec_error_from(exc: ValidationError, data: Any, root: Any, prefix: str = "") -> SpecError:
    """The first problem as a :class:`SpecError`; the others are named so a user can fix them in one go."""
    # an unknown key first: a typo ('lo') explains the "missing" error ('low') it causes
    errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
    if not errors:
        return SpecError(prefix, str(exc))
    paths: list[str] = []
    for err in errors:
        path = _yaml_path(err["loc"], data, key_error=err["type"] in ("missing", "extra_forbidden"))
        full = f"{prefix}.{path}" if prefix and path else (prefix or path)
        if full not in paths:
            paths.append(full)
    message = _error_message(errors[0], root)
    if len(paths) > 1:
        others = paths[1:6]
        message += f" (also {len(paths) - 1} more problem(s) at: {', '.join(p or '<top>' for p in others)})"
    return SpecError(paths[0], message)
