"""``--set dotted.key=value`` overrides, applied to the plain study data before validation.

Keys are checked against the schema while they are applied, so a typo is reported as the override it came
from (with a did-you-mean), not as a confusing error about the merged document.
"""

from __future__ import annotations

import copy
import re
import typing
from collections.abc import Iterable
from typing import Any

import yaml

from sweeps.config.fields import _describe, _did_you_mean
from sweeps.config.pydantic_errors import _format_path, _models_in, _step_type, _union_members, _unwrap_annotated
from sweeps.config.schema import StudySpec
from sweeps.errors import SpecError

_SEGMENT_RE = re.compile(r"([^.\[\]]+)|\[(-?\d+)\]")


def _split_key(key: str) -> list[str | int]:
    """``strategies[1].params.n`` / ``strategies.1.params.n`` → ``['strategies', 1, 'params', 'n']``."""
    parts: list[str | int] = []
    pos = 0
    key = key.strip()
    while pos < len(key):
        if key[pos] == "." and parts:
            pos += 1
        m = _SEGMENT_RE.match(key, pos)
        if not m:
            raise ValueError(f"cannot parse key {key!r} at {key[pos:]!r}")
        if m.group(2) is not None:
            parts.append(int(m.group(2)))
        else:
            parts.append(int(m.group(1)) if m.group(1).isdigit() else m.group(1))
        pos = m.end()
    if not parts or not isinstance(parts[0], str):
        raise ValueError(f"cannot parse key {key!r}")
    return parts


def _allowed_keys(tp: Any) -> list[str] | None:
    """Field names when ``tp`` is (a union of) models; ``None`` for free-form mappings such as strategy params."""
    models = _models_in(tp)
    if not models:
        return None
    return sorted({f for m in models for f in m.model_fields})


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``dotted.key=value`` overrides to raw study data (a copy is returned). Values are parsed as YAML, so
    ``training.epochs=3`` is an int and ``optuna.pruner=none`` a string; keys are checked against the schema here so
    a typo is reported as the override it came from, with a suggestion."""
    data = copy.deepcopy(data)
    for override in overrides:
        where = f"--set {override}"
        if "=" not in override:
            raise SpecError("", f"{where}: expected dotted.key=value")
        key, _, raw = override.partition("=")
        try:
            parts = _split_key(key)
        except ValueError as exc:
            raise SpecError(key.strip(), f"{where}: {exc}") from None
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise SpecError(key.strip(), f"{where}: value is not valid YAML: {getattr(exc, 'problem', exc)}") from None
        _set_path(data, parts, value, where)
    return data


def _set_path(data: dict[str, Any], parts: list[str | int], value: Any, where: str) -> None:
    node: Any = data
    tp: Any = StudySpec
    done: list[tuple[Any, bool]] = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        here = _format_path([*done, (part, isinstance(node, list) and isinstance(part, int))])
        if isinstance(node, list):
            if not isinstance(part, int):
                raise SpecError(here, f"{where}: {_format_path(done)} is a list; use an index such as [0]")
            if not -len(node) <= part <= len(node):
                raise SpecError(here, f"{where}: index {part!r} is out of range (the list has {len(node)} item(s))")
            part = part + len(node) if part < 0 else part  # -1 is the last item; len(node) appends
            item_tp = _step_type(tp, 0)
            if part == len(node):
                node.append(None)
        else:
            allowed = _allowed_keys(tp)
            if isinstance(part, int):
                part = str(part)
            if allowed is not None and part not in allowed:
                raise SpecError(here, f"{where}: unknown key {part!r}{_did_you_mean(part, allowed)}")
            item_tp = _step_type(tp, part)
        if last:
            node[part] = value
            return
        child = node[part] if isinstance(node, list) else node.get(part)
        if child is None:
            if not _is_container_type(item_tp):
                raise SpecError(here, f"{where}: {here} is a single value; there is no key inside it to set")
            child = [] if isinstance(parts[i + 1], int) and _is_list_type(item_tp) else {}
            node[part] = child
        if not isinstance(child, (dict, list)):
            raise SpecError(here, f"{where}: cannot set a key inside {_describe(child)}")
        done.append((part, isinstance(node, list)))
        node, tp = child, item_tp


def _is_container_type(tp: Any) -> bool:
    """Whether keys can be set below a value of type ``tp`` (a section, a list, a mapping or a search entry)."""
    if tp is None or _models_in(tp):
        return True
    tp, _ = _unwrap_annotated(tp)
    members = _union_members(tp)
    if members is not None:
        return any(_is_container_type(m) for m in members if m is not type(None))
    return typing.get_origin(tp) in (list, dict)


def _is_list_type(tp: Any) -> bool:
    tp, _ = _unwrap_annotated(tp)
    members = _union_members(tp)
    if members is not None:
        return any(_is_list_type(m) for m in members)
    return typing.get_origin(tp) is list
