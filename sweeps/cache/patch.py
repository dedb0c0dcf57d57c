"""The block ``forward`` replacements the cached runner installs for one model call.

A frozen block is either *served* (it returns the cached output of the deepest cached depth and does not even read
its inputs) or run *live* under ``torch.no_grad()``, with its output captured when that depth is being built.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from sweeps.cache.capture import Staged, _SplitCapture
from sweeps.cache.layout import BatchLayout
from sweeps.cache.store import CACHE_DTYPES, BlockFormat

ABSENT = object()
"""Marks a block that had no ``forward`` of its own on the instance (restoring means deleting the patch)."""


def _stage(out: Any, layout: BatchLayout, rows: torch.Tensor, cache_dtype: str) -> Staged:
    """A block's output for the examples ``rows``, as rows in the storage dtype (or an unreproducible format)."""
    fmt = BlockFormat.of(out, multi_tensor=layout.multi_tensor)
    packed = layout.pack(fmt.tensors(out), rows) if fmt is not None else None
    if fmt is None or packed is None:
        return Staged(np.zeros((0, 1), CACHE_DTYPES[cache_dtype][1]), None, "torch.float32", [])
    flat, shapes = packed
    torch_dtype, np_dtype = CACHE_DTYPES[cache_dtype]
    picked = flat.to(torch_dtype).cpu()
    if cache_dtype == "bfloat16":
        picked = picked.view(torch.int16)
    activation_dtype = str(fmt.tensors(out)[0].dtype)
    return Staged(picked.numpy().astype(np_dtype, copy=False), fmt, activation_dtype, shapes)


def live_forward(
    original: Callable[..., Any],
    depth: int,
    capture: _SplitCapture | None,
    rows: torch.Tensor | None,
    layout: BatchLayout,
    *,
    leaf_grad: bool,
    cache_dtype: str,
    stats: dict[str, Any],
) -> Callable[..., Any]:
    """A frozen block run live: no autograd, and its output captured when this depth is being built. ``leaf_grad``
    makes the output a fresh leaf that requires grad (the input of the first trainable block under checkpointing);
    ``stats["build_seconds"]`` accumulates the time spent here."""

    def forward(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        with torch.no_grad():
            out = original(*args, **kwargs)
        if capture is not None and rows is not None and depth in capture.sinks:
            capture.staged[depth] = _stage(out, layout, rows, cache_dtype)
        if leaf_grad:
            fmt_out = BlockFormat.of(out, multi_tensor=True)
            if fmt_out is not None:  # fresh leaves (detach), not views created under no_grad
                out = fmt_out.wrap([t.detach().requires_grad_(t.is_floating_point()) for t in fmt_out.tensors(out)])
        stats["build_seconds"] += time.perf_counter() - start
        return out

    return forward


def served_forward(fmt: BlockFormat, cached: list[torch.Tensor]) -> Callable[..., Any]:
    """A frozen block replaced by the cached output of the deepest cached depth (its inputs are not even read)."""

    def forward(*args: Any, **kwargs: Any) -> Any:
        return fmt.wrap(cached)

    return forward
