"""The block ``forward`` replacements the cached runner installs for one model call.

A frozen block is either *served* (it returns the cached hidden states of the deepest cached depth and does not even
read its inputs) or run *live* under ``torch.no_grad()``, with its output captured when that depth is being built.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from sweeps.cache.capture import _SplitCapture
from sweeps.cache.store import CACHE_DTYPES, BlockFormat, _hidden_of

ABSENT = object()
"""Marks a block that had no ``forward`` of its own on the instance (restoring means deleting the patch)."""


def live_forward(
    original: Callable[..., Any],
    depth: int,
    capture: _SplitCapture | None,
    rows: torch.Tensor | None,
    mask: torch.Tensor,
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
            fmt = BlockFormat.of(out)
            hidden = _hidden_of(out) if fmt is not None else None
            if hidden is None or hidden.dim() != 3 or tuple(hidden.shape[:2]) != tuple(mask.shape):
                fmt, tokens = None, np.zeros((0, 1), CACHE_DTYPES[cache_dtype][1])
                act_dtype = "torch.float32"
            else:
                torch_dtype, np_dtype = CACHE_DTYPES[cache_dtype]
                picked = hidden[rows][mask[rows]].to(torch_dtype).cpu()
                if cache_dtype == "bfloat16":
                    picked = picked.view(torch.int16)
                tokens = picked.numpy().astype(np_dtype, copy=False)
                act_dtype = str(hidden.dtype)
            capture.staged[depth] = (tokens, fmt, act_dtype)
        if leaf_grad:
            fmt_out = BlockFormat.of(out)
            if fmt_out is not None:  # a fresh leaf (detach), not a view created under no_grad
                out = fmt_out.wrap(_hidden_of(out).detach().requires_grad_(True))
        stats["build_seconds"] += time.perf_counter() - start
        return out

    return forward


def served_forward(fmt: BlockFormat, cached: torch.Tensor) -> Callable[..., Any]:
    """A frozen block replaced by the cached output of the deepest cached depth (its inputs are not even read)."""

    def forward(*args: Any, **kwargs: Any) -> Any:
        return fmt.wrap(cached)

    return forward
