"""How a batch goes through the model: the seam where activation caching plugs in.

The training loop never calls the model directly; it asks a :class:`ForwardRunner` for logits. The plain runner
(:class:`DirectForward`) calls the model. :class:`sweeps.cache.CachedPrefixForward` serves the output of a frozen
prefix from a cache so later epochs run only the trainable top. The loop tells the runner the current frozen-prefix
depth whenever the strategy's plan changes (gradual unfreezing shrinks it).
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from sweeps.data.batch import logits_of, model_inputs


class ForwardRunner(Protocol):
    def set_prefix_depth(self, depth: int | None) -> None:
        """The number of lowest blocks frozen together with the embedding side (``None``: the embeddings train)."""

    def logits(self, model: nn.Module, batch: dict[str, torch.Tensor], split: str) -> torch.Tensor:
        """Logits for ``batch`` of ``split`` ("train" or "eval"; cached activations differ per split)."""

    def close(self) -> None:
        """Release caches and hooks."""


class DirectForward:
    """Calls the model. Frozen parameters have ``requires_grad=False`` and token ids never require grad, so autograd
    records nothing for a frozen prefix even here; the cached runner additionally skips computing it."""

    def __init__(self, reason: str | None = None) -> None:
        self.depth: int | None = None
        # why a cache-enabled study runs direct (logged with the trial's cache stats); empty when nobody asked
        self.stats: dict[str, object] = {"mode": "direct", "reason": reason} if reason else {}

    def set_prefix_depth(self, depth: int | None) -> None:
        self.depth = depth

    def logits(self, model: nn.Module, batch: dict[str, torch.Tensor], split: str) -> torch.Tensor:
        return logits_of(model(**model_inputs(batch)))

    def close(self) -> None:
        pass
