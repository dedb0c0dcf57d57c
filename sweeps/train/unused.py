"""Parameters that never receive a gradient, found before training and kept out of it.

Why: a head that mean-pools ``last_hidden_state`` leaves ``bert.pooler`` in the graph's dead end. Left trainable it
sits in AdamW, inflates ``trainable_params`` (the efficiency objective) and hangs DDP; excluded, it is checksummed
like a frozen group instead. The probe is one forward/backward on one batch (see
:func:`strategies.find_unused_parameters` for what one batch cannot see).

It costs as much as a training step on an evaluation batch through the whole model (0.7 s for MiniLM on 2 CPU
cores, the largest part of a cheap cached trial's setup), and every trial of a study builds the same model, so
:class:`UnusedProbes` runs it once per process for each distinct (model build, batch) and reuses the answer.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import torch
from torch import nn

from strategies import LayerMap, checksum, find_unused_parameters, unused_by_group
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


class UnusedProbes:
    """:func:`probe_unused`, remembered per process. The answer depends only on the model as built and on the batch:
    ``build`` names what determines the build (the trial's head, its seed, gradient checkpointing), the batch is
    hashed by its bytes, so a CV fold's other validation rows or another head are probed afresh."""

    def __init__(self) -> None:
        self._answers: dict[str, frozenset[str]] = {}
        self.probes = 0  # how many probes actually ran (the tests read it)

    def __call__(
        self, model: nn.Module, batch: dict[str, torch.Tensor], device: torch.device, build: dict[str, Any]
    ) -> set[str]:
        key = _probe_key(batch, build)
        if key not in self._answers:
            self._answers[key] = frozenset(probe_unused(model, batch, device))
            self.probes += 1
        return set(self._answers[key])


def _probe_key(batch: dict[str, torch.Tensor], build: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(build, sort_keys=True, default=str).encode())
    for name in sorted(batch):
        value = batch[name]
        if isinstance(value, torch.Tensor):
            digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}:{checksum([value])}".encode())
        else:
            digest.update(f"{name}:{value!r}".encode())
    return digest.hexdigest()


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
