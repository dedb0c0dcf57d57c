"""Parameters that never receive a gradient, found before training and kept out of it.

Why: a head that mean-pools ``last_hidden_state`` leaves ``bert.pooler`` in the graph's dead end. Left trainable it
sits in AdamW, inflates ``trainable_params`` (the efficiency objective) and hangs DDP; excluded, it is checksummed
like a frozen group instead. The probe is one forward/backward on one batch (see
:func:`strategies.find_unused_parameters` for what one batch cannot see).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from strategies import LayerMap, find_unused_parameters, unused_by_group
from sweeps.data.batch import logits_of, model_inputs

log = logging.getLogger(__name__)


def probe_unused(model: nn.Module, batch: dict[str, torch.Tensor], device: torch.device) -> set[str]:
    """Names of the trainable parameters outside the graph of the training loss on ``batch``."""
    inputs = {k: v.to(device) for k, v in model_inputs(batch).items()}
    labels = batch["labels"].to(device) if "labels" in batch else None

    def loss(m: nn.Module) -> torch.Tensor:
        logits = logits_of(m(**inputs)).float()
        if labels is None:
            return logits.sum()
        return nn.functional.cross_entropy(logits, labels)

    return find_unused_parameters(model, loss)


def annotate_unused(rows: list[dict[str, Any]], layer_map: LayerMap, unused: set[str]) -> list[dict[str, Any]]:
    """``describe`` rows with ``unused_params`` (elements) and ``unused`` (names) per group; counts that follow the
    controller: an unused parameter is neither trainable nor frozen-by-the-strategy."""
    by_group = unused_by_group(layer_map, unused)
    sizes = {n: p.numel() for g in layer_map.groups for n, p in g.params}
    for row in rows:
        names = by_group.get(row["name"], [])
        row["unused"] = names
        row["unused_params"] = sum(sizes[n] for n in names)
    return rows


def unused_text(rows: list[dict[str, Any]]) -> str:
    """The log line / table footer: which parameters are left out and how many elements."""
    hits = [r for r in rows if r.get("unused")]
    if not hits:
        return ""
    total = sum(r["unused_params"] for r in hits)
    parts = "; ".join(f"{r['name']}: {', '.join(r['unused'])}" for r in hits)
    return f"never receive a gradient (not trained, not in the optimizer): {total:,} parameters — {parts}"
