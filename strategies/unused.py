"""Parameters that never receive a gradient, found with one forward/backward on a sample batch.

Why: a custom head that mean-pools ``last_hidden_state`` never uses ``bert.pooler``, yet the pooler sits in the head
group as trainable. It then occupies AdamW (state is created lazily, but the group is there), is counted in
``trainable_params`` (inflating the cost a report attributes to the strategy), and under DDP is the classic
``find_unused_parameters`` failure. :func:`find_unused_parameters` names such parameters;
``FreezeController(..., exclude=names)`` keeps them out of the optimizer and out of the counts for the whole run, and
:func:`exclude_unused_parameters` does it for a training loop of your own (before wrapping the model in DDP).

A single batch sees a single path through the model: parameters used only on some inputs (a branch on the batch,
mixture-of-experts routing) can look unused. The probe is for structurally dead parameters; check its answer (the
names are returned, not applied) before excluding.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from strategies.layers import LayerMap

LossFn = Callable[[nn.Module], torch.Tensor]


def find_unused_parameters(model: nn.Module, batch_or_loss: Any) -> set[str]:
    """Names of the trainable parameters (``requires_grad``) whose ``.grad`` stays ``None`` after one backward pass.

    ``batch_or_loss`` is a callable ``f(model) -> scalar loss`` or a sample batch: a mapping (``model(**batch)``), a
    tuple/list (``model(*batch)``) or a tensor (``model(batch)``); the output's ``loss`` is used when present, else
    the sum of its logits / tensor. A gradient of zero still counts as used: only a parameter outside the graph is
    unused. The model runs in its current train/eval mode and is left as it was: gradients, buffers (BatchNorm
    statistics) and the RNG state are restored; nothing is stepped.
    """
    params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    saved_grads = {name: p.grad for name, p in params}
    saved_buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    devices = sorted({p.device.index or 0 for _, p in params if p.device.type == "cuda"})
    try:
        for _, p in params:
            p.grad = None
        with torch.random.fork_rng(devices=devices), torch.enable_grad():
            loss = batch_or_loss(model) if callable(batch_or_loss) else _scalar(_call(model, batch_or_loss))
            loss.backward()
        return {name for name, p in params if p.grad is None}
    finally:
        for name, p in params:
            p.grad = saved_grads[name]
        with torch.no_grad():
            for name, b in model.named_buffers():
                if name in saved_buffers:
                    b.copy_(saved_buffers[name])


def exclude_unused_parameters(model: nn.Module, batch_or_loss: Any) -> set[str]:
    """Find the parameters that never receive a gradient (:func:`find_unused_parameters`) and take them out of
    training: ``requires_grad=False``. Returns their names.

    For a training loop of your own, DDP in particular: ``DistributedDataParallel`` registers a gradient hook on every
    parameter that requires grad when it is *constructed*, and with ``find_unused_parameters=False`` (the fast default)
    a parameter that never gets a gradient keeps its bucket from being reduced, so the next forward fails with
    "Expected to have finished reduction in the prior iteration" (or a rank waits). Call this on every rank *before*
    wrapping the model and before building the optimizer from the parameters that still require grad::

        exclude_unused_parameters(model, sample_batch)
        ddp = DistributedDataParallel(model, find_unused_parameters=False)
        optimizer = torch.optim.AdamW(p for p in ddp.parameters() if p.requires_grad)

    Give every rank the same sample batch (or a loss built from it) so all ranks exclude the same names: DDP requires
    the same set of trainable parameters on every rank. A study trial does the same through
    ``FreezeController(..., exclude=find_unused_parameters(...))``, which also keeps the names out of its groups and
    checksums them.
    """
    names = find_unused_parameters(model, batch_or_loss)
    for name, param in model.named_parameters():
        if name in names:
            param.requires_grad_(False)
    return names


def unused_by_group(layer_map: LayerMap, names: set[str]) -> dict[str, list[str]]:
    """``names`` sorted into their layer groups (in model order), for a log line or the ``layer_groups`` artifact."""
    out: dict[str, list[str]] = {}
    for group in layer_map.groups:
        hits = [n for n, _ in group.params if n in names]
        if hits:
            out[group.name] = hits
    return out


def _call(model: nn.Module, batch: Any) -> Any:
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def _scalar(output: Any) -> torch.Tensor:
    """A scalar that depends on every output the model computed from its parameters."""
    loss = getattr(output, "loss", None)
    if isinstance(loss, torch.Tensor):
        return loss
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits.float().sum()
    if isinstance(output, torch.Tensor):
        return output.float().sum()
    if isinstance(output, Mapping):
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        tensors = [t.float().sum() for t in output if isinstance(t, torch.Tensor) and t.requires_grad]
        if tensors:
            return torch.stack(tensors).sum()
    raise TypeError(
        f"cannot make a loss from a {type(output).__name__}; pass a callable f(model) -> loss instead of a batch"
    )


__all__ = ["exclude_unused_parameters", "find_unused_parameters", "unused_by_group"]
