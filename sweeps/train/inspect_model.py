"""The model ``sweeps inspect`` shows: the checkpoint's own label count (or ``--num-labels``), a factory or a
``task.head`` model from a study file, and the parameters that would never receive a gradient.

Why the label count matters: the head's parameter count is ``hidden × num_labels``; a saved 3-label checkpoint shown
with a 2-label head reports numbers that are not the model's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn


def checkpoint_labels(location: str) -> list[str]:
    """``config.id2label`` of a checkpoint, in id order (``["0", "1"]`` when it cannot be read)."""
    from transformers import AutoConfig

    try:
        id2label = AutoConfig.from_pretrained(location).id2label or {}
        return [str(v) for _, v in sorted((int(k), v) for k, v in id2label.items())] or ["0", "1"]
    except Exception:
        return ["0", "1"]


def inspect_model(model_ref: str, spec: Any, base: Path | None, num_labels: int | None) -> tuple[nn.Module, str, Any]:
    """(model, what to call it, tokenizer or None) for ``inspect``: ``spec`` is the study file when one was given."""
    from sweeps.train.context import model_source
    from sweeps.train.custom_models import build_custom, is_custom
    from sweeps.train.models import load_classifier, load_tokenizer, resolve_model

    if spec is not None:
        source = model_source(spec)
        tokenizer_source = resolve_model(spec.task.tokenizer, base) if spec.task.tokenizer else source
    else:
        source = tokenizer_source = resolve_model(model_ref, base)
    if num_labels is not None:
        labels = [str(i) for i in range(num_labels)]
    else:
        labels = ["0", "1"] if getattr(source, "kind", "") == "factory" else checkpoint_labels(source.location)
    if spec is not None and is_custom(spec):
        model = build_custom(spec, source, labels)
    else:
        model = load_classifier(source, labels)
    try:
        tokenizer = load_tokenizer(tokenizer_source)
    except Exception:  # no tokenizer, no probe batch: the table is still right, only unused parameters go unseen
        tokenizer = None
    return model, source.location, tokenizer


def probe_batch(tokenizer: Any) -> dict[str, torch.Tensor]:
    """Two short texts through the real tokenizer: enough for the forward graph (unused parameters)."""
    inputs = set(getattr(tokenizer, "model_input_names", ())) | {"input_ids", "attention_mask"}
    encoded = tokenizer(["a short example", "another one"], padding=True, return_tensors="pt")
    return {k: v for k, v in encoded.items() if k in inputs}
