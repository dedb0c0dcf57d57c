"""A plain ``fc1..fc5`` text classifier for ``studies/schedule_fc2.yaml`` and ``studies/fastai_fine_tune.yaml``.

It is the issue's "model users actually write": no Hugging Face class, no ``layers:`` section. Token ids are turned
into a bag-of-tokens vector by a parameter-free hash (so the model is five ``Linear`` layers and nothing else), and
the flat layout maps ``fc1..fc4`` to ``layer.0..3`` and ``fc5`` to ``head``.

The factory contract: called with ``num_labels``, ``id2label`` and ``label2id``; the model takes the tokenizer's
``input_ids``/``attention_mask`` as keywords and returns logits.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

BUCKETS = 1024


class FcText(nn.Module):
    """Hashed bag of token counts → fc1 … fc5 (ReLU between)."""

    def __init__(self, num_labels: int, width: int = 32) -> None:
        super().__init__()
        self.fc1 = nn.Linear(BUCKETS, width)
        self.fc2 = nn.Linear(width, width)
        self.fc3 = nn.Linear(width, width)
        self.fc4 = nn.Linear(width, width)
        self.fc5 = nn.Linear(width, num_labels)
        self.act = nn.ReLU()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_: Any) -> torch.Tensor:
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        bag = torch.zeros(input_ids.shape[0], BUCKETS, device=input_ids.device)
        bag.scatter_add_(1, input_ids % BUCKETS, mask.float())
        x = bag  # counts, not frequencies: normalised bags gave fc1 inputs too small to learn from in a few epochs
        for fc in (self.fc1, self.fc2, self.fc3, self.fc4):
            x = self.act(fc(x))
        return self.fc5(x)


def build(num_labels: int, id2label: dict[int, str], label2id: dict[str, int]) -> nn.Module:
    """The study's factory (``task.model: models.fc_text:build``); the labels are unused by this model."""
    torch.manual_seed(0)  # the same initial weights in every trial: strategies are compared from one start
    return FcText(num_labels)
