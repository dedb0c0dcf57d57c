"""Batches: dynamic padding of tokenised examples, and which keys of a batch the model takes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch


class _Collator:
    """Dynamic padding via transformers' ``DataCollatorWithPadding``; ``example_id`` and ``labels`` ride along.

    Only model inputs go through the tokenizer's ``pad``; bookkeeping columns (``example_id``, ``labels``) are turned
    into LongTensors here, and anything else (``length``) is dropped so the batch can go straight to ``model(**)``
    after popping ``example_id``.
    """

    def __init__(self, tokenizer: Any, pad_to_multiple_of: int | None = None) -> None:
        from transformers import DataCollatorWithPadding

        self._pad = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to_multiple_of, return_tensors="pt")
        self._inputs = set(getattr(tokenizer, "model_input_names", ())) | {"input_ids", "attention_mask"}

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("cannot collate an empty batch")
        inputs = [{k: v for k, v in ex.items() if k in self._inputs} for ex in examples]
        batch = dict(self._pad(inputs))
        for name in ("labels", "example_id"):
            if name in examples[0]:
                batch[name] = torch.tensor([int(ex[name]) for ex in examples], dtype=torch.long)
        return batch


def make_collator(tokenizer: Any, pad_to_multiple_of: int | None = None) -> Callable[[list[dict[str, Any]]], dict]:
    """A collate function for tokenised splits: pads each batch to its own longest example."""
    return _Collator(tokenizer, pad_to_multiple_of)


def length_grouped_order(lengths: Sequence[int], batch_size: int, seed: int) -> list[int]:
    """A seeded order in which consecutive ``batch_size`` slices hold examples of similar length (less padding).

    Reuses transformers' ``get_length_grouped_indices`` (random permutation, megabatches of 50×batch sorted by
    length, the longest batch first so an out-of-memory error shows at step 1, not mid-epoch).
    """
    from transformers.trainer_pt_utils import get_length_grouped_indices

    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if len(lengths) == 0:
        return []
    generator = torch.Generator().manual_seed(int(seed))
    return [int(i) for i in get_length_grouped_indices(list(lengths), batch_size, generator=generator)]


MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "pixel_values")


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The keys of a collated batch that the model's forward takes (labels and example ids stay out)."""
    return {k: v for k, v in batch.items() if k in MODEL_INPUTS}
