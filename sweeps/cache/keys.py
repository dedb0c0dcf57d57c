"""What a cache entry is keyed by, beyond the prefix weights: the prefix's buffers, the model's architecture, the
compute precision, and a per-example fingerprint of the token ids or pixels (so a stale split key degrades to a direct
forward instead of wrong activations).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from strategies.base import embedding_side
from strategies.layers import LayerMap, layer_name
from strategies.optim import checksum

FORMAT_VERSION = 1


# Config fields that cannot change a frozen prefix's output (labels, the head, switches of what is returned, dropout:
# the prefix runs in eval mode, which is checked on every batch). Leaving them out lets trials that vary them share.
_CONFIG_IGNORED = {
    "id2label",
    "label2id",
    "num_labels",
    "problem_type",
    "architectures",
    "transformers_version",
    "_name_or_path",
    "name_or_path",
    "finetuning_task",
    "return_dict",
    "output_attentions",
    "output_hidden_states",
    "use_cache",
    "torch_dtype",
    "dtype",
}


_MIX = tuple(np.uint64(k) for k in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB, 0xD6E8FEB86659FD93))


def token_fingerprints(batch: Mapping[str, torch.Tensor], mask: torch.Tensor) -> np.ndarray:
    """Per-example 64-bit fingerprint of the (unpadded) token ids and token types, independent of padding side/length.

    Why: the split key is the caller's promise that the tokenisation did not change; this checks it per example for
    the price of a few integer operations, so a stale key degrades to a direct forward instead of wrong activations.
    """
    m = mask.cpu().numpy().astype(bool)
    ids = batch["input_ids"].cpu().numpy().astype(np.uint64)
    pos = (np.cumsum(m, axis=1) - 1).clip(min=0).astype(np.uint64) + np.uint64(1)
    x = ids * _MIX[0] + pos * _MIX[1]
    if "token_type_ids" in batch:
        x = x + (batch["token_type_ids"].cpu().numpy().astype(np.uint64) + np.uint64(1)) * _MIX[2]
    x ^= x >> np.uint64(31)
    x *= _MIX[3]
    x ^= x >> np.uint64(29)
    x[~m] = 0
    return x.sum(axis=1, dtype=np.uint64).view(np.int64)


def pixel_fingerprints(pixel_values: torch.Tensor) -> np.ndarray:
    """Per-example 64-bit fingerprint (BLAKE2b) of the exact bytes of ``pixel_values`` (the counterpart of
    :func:`token_fingerprints` for images).

    Why: evaluation transforms are deterministic, so an image gives the same bytes in every epoch and trial; a batch
    whose pixels differ from the captured ones (an augmented batch, a changed processor behind a stale split key) is
    computed directly instead of being served another image's activations. A hash per example, not a vectorised mix
    over the batch: an image has ~10⁵ values, and the mix's 64-bit temporaries would cost hundreds of MB per batch.
    """
    rows = pixel_values.detach().cpu().contiguous().reshape(pixel_values.shape[0], -1).view(torch.uint8).numpy()
    digests = [hashlib.blake2b(row.tobytes(), digest_size=8).digest() for row in rows]
    return np.frombuffer(b"".join(digests), dtype=np.int64).copy()


def model_fingerprint(model: nn.Module) -> str:
    """Architecture part of the key: class, config (minus fields that cannot affect the prefix) and parameter dtypes.

    Why: the weights hash alone does not cover hyperparameters such as ``layer_norm_eps``, the number of heads or the
    attention implementation, which change the prefix's output for identical weights.
    """
    config = getattr(model, "config", None)
    fields: dict[str, Any] = {}
    if config is not None and hasattr(config, "to_dict"):
        fields = {
            k: v
            for k, v in config.to_dict().items()
            if k not in _CONFIG_IGNORED and "dropout" not in k and not k.endswith("pdrop")
        }
        fields["_attn_implementation"] = getattr(config, "_attn_implementation", None)
    dtypes = sorted({str(p.dtype) for p in model.parameters()})
    # a factory model's recipe (factory + source hash, or the declared head): its class name alone is not enough
    payload: dict[str, Any] = {"class": type(model).__name__, "config": fields, "dtypes": dtypes}
    recipe = getattr(model, "_sweeps_recipe", None)
    if recipe is not None:  # only then: the keys of checkpoint models stay what they were
        payload["recipe"] = recipe
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _precision_key(device: torch.device) -> str:
    """The prefix computed under bf16 autocast differs from fp32: the autocast state is part of the key."""
    if torch.is_autocast_enabled(device.type):
        return f"autocast-{torch.get_autocast_dtype(device.type)}"
    return "plain"


def prefix_weight_hashes(layer_map: LayerMap, depth: int) -> dict[int, str]:
    """``{d: hash of embedding side + blocks 0 … d-1}`` for d = 1 … depth, each group hashed once: a deeper prefix
    chains the shallower one's hash, and any change of a prefix weight changes the key."""
    digest = hashlib.sha256()
    for name in sorted(embedding_side(layer_map) & set(layer_map.names)):
        digest.update(f"{name}:{checksum(p for _, p in layer_map.group(name).params)};".encode())
    out: dict[int, str] = {}
    for i in range(depth):
        name = layer_name(i)
        digest.update(f"{name}:{checksum(p for _, p in layer_map.group(name).params)};".encode())
        out[i + 1] = digest.copy().hexdigest()
    return out


def prefix_buffer_hashes(model: nn.Module, layer_map: LayerMap, depth: int) -> dict[int, str]:
    """``{d: hash of the buffers of embedding side + blocks 0 … d-1}``, chained like :func:`prefix_weight_hashes`.

    Why: a prefix's output depends on its buffers too — BatchNorm's running statistics decide a frozen CNN stage's
    output in eval mode — and they are not parameters. Two checkpoints with equal weights but other statistics (or a
    model whose frozen BatchNorm ran in training mode, ``train_bn``) must not share an entry.
    """
    digest = hashlib.sha256()

    def update(name: str) -> None:
        buffers = []
        for path in layer_map.group(name).module_paths:
            module = model.get_submodule(path)
            buffers.extend(b for _, b in sorted(module.named_buffers(), key=lambda item: item[0]))
        digest.update(f"{name}:{checksum(buffers)};".encode())

    for name in sorted(embedding_side(layer_map) & set(layer_map.names)):
        update(name)
    out: dict[int, str] = {}
    for i in range(depth):
        update(layer_name(i))
        out[i + 1] = digest.copy().hexdigest()
    return out


def entry_key(model: str, weights: str, split_key: str, depth: int, cache_dtype: str, precision: str) -> str:
    """The key of one entry: (model architecture, prefix weights, split data, depth, storage dtype, precision)."""
    parts = {
        "version": FORMAT_VERSION,
        "model": model,
        "weights": weights,
        "split_key": split_key,
        "depth": depth,
        "cache_dtype": cache_dtype,
        "precision": precision,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]
