"""How a batch's block outputs become stored rows and back: ragged tokens (text) or one fixed-shape row per example
(images).

Why two layouts behind one interface: the store, the capture and the served forward only ever see 2-D arrays of rows
(``(num_rows, width)``) and an index of ``(start, length, fingerprint)`` per example id. A text example is its
non-padding tokens (``length`` rows of ``hidden``: padding is stripped, so batches of any padded length share an
entry). An image example has no padding: every block output of an image model (a CNN stage's ``(C, H, W)`` feature
map, a ViT block's ``(tokens, hidden)`` sequence, a Swin stage's tuple of both) has the same shape for every example,
so it is one row, the flattened concatenation of the output's tensors, and ``item_shapes`` in the entry's metadata
turns it back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np
import torch

from sweeps.cache.keys import pixel_fingerprints, token_fingerprints

Shapes = Sequence[Sequence[int]]
"""Per-example shapes of a block output's tensors (without the batch dimension)."""

TOKENS = "tokens"
EXAMPLES = "examples"


class BatchLayout(Protocol):
    """What the cache needs to know about one batch to store and serve its prefix outputs."""

    name: str
    multi_tensor: bool  # whether tuple outputs may carry several tensors (the ragged layout holds one only)
    device: torch.device
    lengths: np.ndarray  # stored rows per example
    fingerprints: np.ndarray  # per-example fingerprint of the model inputs (a stale split key is caught by it)

    def pack(self, tensors: Sequence[torch.Tensor], rows: torch.Tensor) -> tuple[torch.Tensor, list[list[int]]] | None:
        """The rows to store for the examples ``rows`` (a bool mask over the batch) and the per-example shapes of
        ``tensors``; ``None`` when the output does not fit this layout (then it cannot be cached)."""

    def unpack(self, values: torch.Tensor, item_shapes: Shapes, dtype: torch.dtype) -> list[torch.Tensor]:
        """The stored rows of this batch (``values``, in batch order) as the block's output tensors."""


class TokenLayout:
    """Text: the non-padding tokens of each example, ``(length, hidden)`` rows (see :mod:`sweeps.cache`)."""

    name = TOKENS
    multi_tensor = False

    def __init__(self, batch: Mapping[str, torch.Tensor]) -> None:
        mask = batch.get("attention_mask")
        self.mask = torch.ones_like(batch["input_ids"], dtype=torch.bool) if mask is None else mask.bool()
        self.device = self.mask.device
        self.lengths = self.mask.sum(dim=1).cpu().numpy().astype(np.int64)
        self.fingerprints = token_fingerprints(batch, self.mask)

    def pack(self, tensors: Sequence[torch.Tensor], rows: torch.Tensor) -> tuple[torch.Tensor, list[list[int]]] | None:
        hidden = tensors[0]
        if len(tensors) != 1 or hidden.dim() != 3 or tuple(hidden.shape[:2]) != tuple(self.mask.shape):
            return None
        return hidden[rows][self.mask[rows]], [[int(hidden.shape[2])]]

    def unpack(self, values: torch.Tensor, item_shapes: Shapes, dtype: torch.dtype) -> list[torch.Tensor]:
        """Zeros at padding: real tokens never attend to padding, so the logits are those of a live prefix."""
        out = torch.zeros((*self.mask.shape, values.shape[1]), dtype=dtype, device=self.device)
        out[self.mask] = values.to(device=self.device, dtype=dtype)
        return [out]


class ExampleLayout:
    """Images: one row per example, the flattened tensors of the block's output side by side."""

    name = EXAMPLES
    multi_tensor = True

    def __init__(self, batch: Mapping[str, torch.Tensor]) -> None:
        pixels = batch["pixel_values"]
        self.size = int(pixels.shape[0])
        self.device = pixels.device
        self.lengths = np.ones(self.size, dtype=np.int64)
        self.fingerprints = pixel_fingerprints(pixels)

    def pack(self, tensors: Sequence[torch.Tensor], rows: torch.Tensor) -> tuple[torch.Tensor, list[list[int]]] | None:
        # every tensor must be per example (a leading batch dimension) and of one dtype; a tensor of windows or heads
        # (Swin V2's attention weights: batch × windows) cannot be split into examples
        if any(t.dim() < 2 or t.shape[0] != self.size or t.dtype != tensors[0].dtype for t in tensors):
            return None
        n = int(rows.sum())
        flat = torch.cat([t[rows].reshape(n, -1) for t in tensors], dim=1)
        return flat, [[int(s) for s in t.shape[1:]] for t in tensors]

    def unpack(self, values: torch.Tensor, item_shapes: Shapes, dtype: torch.dtype) -> list[torch.Tensor]:
        values = values.to(device=self.device, dtype=dtype)
        sizes = [int(np.prod(shape)) for shape in item_shapes]
        return [part.reshape(self.size, *shape) for part, shape in zip(values.split(sizes, dim=1), item_shapes)]


def layout_name(batch: Mapping[str, torch.Tensor]) -> str | None:
    """The layout a batch takes by its model inputs: token ids (text) or ``pixel_values`` (images); ``None`` for a
    batch with neither (it is not cached)."""
    if "input_ids" in batch:
        return TOKENS
    if "pixel_values" in batch:
        return EXAMPLES
    return None


def batch_layout(batch: Mapping[str, torch.Tensor]) -> BatchLayout:
    """The batch's layout, with its lengths and fingerprints computed (so only for batches that will be cached)."""
    name = layout_name(batch)
    if name is None:
        raise ValueError("the batch has neither input_ids nor pixel_values")
    return TokenLayout(batch) if name == TOKENS else ExampleLayout(batch)
