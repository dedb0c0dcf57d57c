"""Group selectors: how a study file names layer groups (``head``, ``layer.2``, ``layer.0-3``, ``body``, ``fc2``).

Selectors are resolved against the :class:`~strategies.layers.LayerMap` structurally, by whole names and integer
indices, never by substring or prefix tests on parameter names: ``layer.1`` is block 1 and nothing else, not
``layer.10`` and ``layer.11`` as ``name.startswith("layer.1")`` would have it.

=================  =====================================================================================
``embeddings``     a group by its name (``embeddings``, ``head``, ``other``, ``layer.i``)
``layer.i-j``      blocks i to j, both included (``layer.0-3`` is four blocks)
``layer.*``        every block
``body``           every group except ``head`` (fastai's ``freeze()``: only the head trains)
``all``            every group
``fc2``            the group whose only module is at this path (``model.get_submodule("fc2")``)
=================  =====================================================================================
"""

from __future__ import annotations

import difflib
import re

from strategies.base import StrategyConfigError
from strategies.layers import HEAD, LayerMap, layer_name

_BLOCKS = re.compile(r"layer\.(\d+)(?:-(\d+))?")
KEYWORDS = ("layer.*", "body", "all")


def select_groups(layer_map: LayerMap, selector: str, field: str) -> list[str]:
    """The group names ``selector`` stands for, in layer-map order. ``field`` names the study-file field in the
    :class:`StrategyConfigError` raised for a selector that names nothing (or more than the user could mean)."""
    if not isinstance(selector, str) or not selector.strip():
        raise StrategyConfigError(field, f"a group selector must be a non-empty string, got {selector!r}")
    selector = selector.strip()
    names = layer_map.names
    if selector in names:
        return [selector]
    if selector == "all":
        return list(names)
    if selector == "body":
        return [n for n in names if n != HEAD]
    if selector == "layer.*":
        return [layer_name(i) for i in range(layer_map.num_layers)]
    match = _BLOCKS.fullmatch(selector)
    if match:
        return _block_range(layer_map, selector, int(match[1]), int(match[2] or match[1]), field)
    return [_by_module_path(layer_map, selector, field)]


def _block_range(layer_map: LayerMap, selector: str, first: int, last: int, field: str) -> list[str]:
    n_layers = layer_map.num_layers
    if first > last:
        raise StrategyConfigError(field, f"{selector!r}: the range is reversed; write layer.{last}-{first}")
    if last >= n_layers:
        raise StrategyConfigError(
            field,
            f"{selector!r} is beyond the model's L={n_layers} layers (layer.0..layer.{n_layers - 1})",
        )
    return [layer_name(i) for i in range(first, last + 1)]


def _by_module_path(layer_map: LayerMap, selector: str, field: str) -> str:
    """A module path that is exactly one group's only module with parameters (``fc2`` in a plain ``fc1..fc5``
    model; a parameter-free ``ReLU`` or ``Dropout`` sorted into the same group does not count)."""
    for group in layer_map.groups:
        if selector not in group.module_paths:
            continue
        others = [
            p for p in group.module_paths if p != selector and any(n.startswith(f"{p}.") for n, _ in group.params)
        ]
        if not others:
            return group.name
        raise StrategyConfigError(
            field,
            f"{selector!r} is only part of group {group.name!r} (with {others}); groups are frozen whole: "
            f"write {group.name!r}",
        )
    choices = [*layer_map.names, *KEYWORDS]
    close = difflib.get_close_matches(selector, choices, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise StrategyConfigError(
        field,
        f"unknown group {selector!r}.{hint} Groups of this model: {layer_map.names}; also layer.i-j (a range), "
        "layer.* (every block), body (all but head), all, or the module path of a single-module group",
    )


__all__ = ["KEYWORDS", "select_groups"]
