"""Batches: dynamic padding of tokenised examples, and which keys of a batch the model takes.
"""

from __future__ import annotations

from collections.abc import Callable
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


MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The keys of a collated batch that the model's forward takes (labels and example ids stay out)."""
    return {k: v for k, v in batch.items() if k in MODEL_INPUTS}
