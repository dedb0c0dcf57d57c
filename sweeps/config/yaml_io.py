"""YAML text → plain data, safely: ``yaml.safe_load`` only (a ``!!python/object`` tag is an error), and the
composed node graph is checked first for duplicate keys (PyYAML silently keeps the last) and alias bombs
(which would make validation hang). Every problem is a :class:`~sweeps.errors.SpecError` with a position.
"""

from __future__ import annotations

from typing import Any

import yaml

from sweeps.errors import SpecError

# Guards against documents that would make validation hang: YAML aliases can expand a few lines into billions of
# nodes (the "billion laughs" document), and recursive aliases into cycles.
MAX_NODES = 200_000


MAX_DEPTH = 60


def _mark_error(exc: yaml.YAMLError, source: str) -> SpecError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    if isinstance(exc, yaml.constructor.ConstructorError) and "tag" in str(problem):
        problem = f"{problem} (YAML tags are not allowed in a study file)"
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "unknown position"
    detail = problem
    if context and context not in problem:
        started = getattr(exc, "context_mark", None)
        since = f" (from line {started.line + 1})" if started is not None and started is not mark else ""
        detail = f"{context}{since}: {problem}"
    return _positioned(f"{source}: invalid YAML at {where}: {detail}", mark)


def _positioned(message: str, mark: Any) -> SpecError:
    """A file-level :class:`SpecError` that also carries ``line``/``column`` (1-based) for editors and tests."""
    error = SpecError("", message)
    error.line = mark.line + 1 if mark is not None else None  # type: ignore[attr-defined]
    error.column = mark.column + 1 if mark is not None else None  # type: ignore[attr-defined]
    return error


def _check_nodes(root: yaml.Node, source: str) -> None:
    """Duplicate keys (PyYAML silently keeps the last: a second ``training:`` section would replace the first) and
    alias bombs / recursive aliases (which would make validation hang), found on the composed node graph."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def where(node: yaml.Node) -> str:
        return f"line {node.start_mark.line + 1}, column {node.start_mark.column + 1}"

    def size(node: yaml.Node, depth: int) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise _positioned(f"{source}: recursive YAML alias at {where(node)}", node.start_mark)
        if depth > MAX_DEPTH:
            raise _positioned(f"{source}: nested more than {MAX_DEPTH} levels deep at {where(node)}", node.start_mark)
        active.add(key)
        total = 1
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, yaml.Node] = {}
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.tag == "tag:yaml.org,2002:str":
                    if k.value in seen and k.value != "<<":
                        first = where(seen[k.value])
                        message = f"{source}: duplicate key {k.value!r} at {where(k)} (first at {first})"
                        raise _positioned(message, k.start_mark)
                    seen[k.value] = k
                total += size(k, depth + 1) + size(v, depth + 1)
        elif isinstance(node, yaml.SequenceNode):
            for v in node.value:
                total += size(v, depth + 1)
        active.discard(key)
        sizes[key] = total
        if total > MAX_NODES:
            raise SpecError("", f"{source}: the document expands to more than {MAX_NODES} values (YAML aliases?)")
        return total

    size(root, 0)


def _parse_yaml(text: str, source: str) -> Any:
    """``yaml.safe_load`` with YAML problems (syntax, tags, duplicate keys, alias bombs) as :class:`SpecError`."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)  # parse only: nothing is constructed
        if node is not None:
            _check_nodes(node, source)
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise _mark_error(exc, source) from None
    except RecursionError:
        raise SpecError("", f"{source}: the YAML document is nested too deeply") from None
