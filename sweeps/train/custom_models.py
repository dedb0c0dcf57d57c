"""Models users write themselves: a ``module:function`` factory, or a declarative ``task.head`` on a bare encoder.

The forward contract every model of a study meets (checkpoint classifiers meet it already): the model is called as
``model(input_ids=..., attention_mask=..., [token_type_ids=...])`` with the keys the tokenizer produces, and returns
the logits ``(batch, num_labels)`` — a tensor, or an object with ``.logits`` (Hugging Face's ``ModelOutput``). Labels
never go into the model: the loss is computed by the training loop.

A trained custom model is saved as ``model.safetensors`` (its ``state_dict``) plus ``sweeps_model.json`` (how to
rebuild it: the factory or the head, and the labels), with the tokenizer beside it; :func:`load_saved` rebuilds it
with the same factory, so ``predict`` needs no pickled code.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sweeps.config.model_fields import is_factory_ref
from sweeps.errors import ModelLoadError
from sweeps.records import SavedModel

MANIFEST = SavedModel.MANIFEST
WEIGHTS = SavedModel.WEIGHTS


@dataclass(frozen=True)
class FactorySource:
    """A ``module:function`` factory, resolved: the module's file and a hash of its source (part of cache keys)."""

    spec: str
    base_dir: str | None
    module_file: str
    content_hash: str

    kind = "factory"
    location = property(lambda self: self.module_file)

    def describe(self) -> dict[str, str]:
        return {"model.source": self.spec, "model.location": self.module_file, "model.kind": "factory",
                "model.revision": "", "model.hash": self.content_hash}


def _import_factory(ref: str, base_dir: str | None) -> Callable[..., Any]:
    """The factory function; the study file's folder is importable, so ``models.fc:build`` finds
    ``<study dir>/models/fc.py`` without installing anything."""
    module_name, func_name = ref.split(":", 1)
    if base_dir and base_dir not in sys.path:
        sys.path.insert(0, base_dir)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ModelLoadError(f"task.model: cannot import {module_name!r} ({type(exc).__name__}: {exc})") from exc
    factory = getattr(module, func_name, None)
    if not callable(factory):
        raise ModelLoadError(f"task.model: module {module_name!r} has no function {func_name!r}")
    return factory


def resolve_factory(ref: str, base_dir: Path | None) -> FactorySource:
    """Import the factory once (import errors surface before trial 0) and hash its module's source."""
    base = str(base_dir) if base_dir else None
    factory = _import_factory(ref, base)
    module = sys.modules[factory.__module__]
    file = getattr(module, "__file__", None) or ""
    digest = hashlib.sha256(Path(file).read_bytes() if file and Path(file).is_file() else ref.encode())
    return FactorySource(ref, base, file, digest.hexdigest()[:16])


def _labels(label_names: list[str]) -> dict[str, Any]:
    id2label = dict(enumerate(label_names))
    return {"num_labels": len(label_names), "id2label": id2label, "label2id": {v: k for k, v in id2label.items()}}


def build_factory_model(source: FactorySource, label_names: list[str]) -> nn.Module:
    """Call the factory with ``num_labels``, ``id2label`` and ``label2id``; it must return an ``nn.Module``."""
    factory = _import_factory(source.spec, source.base_dir)
    try:
        model = factory(**_labels(label_names))
    except Exception as exc:
        raise ModelLoadError(f"task.model: factory {source.spec!r} failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"task.model: factory {source.spec!r} returned {type(model).__name__}, not an nn.Module")
    # the activation cache's architecture key: the class name alone cannot tell two factories apart
    model._sweeps_recipe = f"{source.spec}@{source.content_hash}"
    return model


# -- declarative heads ------------------------------------------------------------------------------------------------

_ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU}


class PooledClassifier(nn.Module):
    """A bare encoder (``AutoModel``) + pooling + an MLP head. The encoder sits under its own
    ``base_model_prefix`` (``bert``, ``roberta``, ...), so the known layouts and selectors name it as usual."""

    def __init__(self, encoder: nn.Module, num_labels: int, head: dict[str, Any]) -> None:
        super().__init__()
        self.head_spec = dict(head)  # the plain head this model was built with: saved beside its weights
        self.encoder_attr = getattr(encoder, "base_model_prefix", "") or "encoder"
        setattr(self, self.encoder_attr, encoder)
        self.config = encoder.config
        self.pooling = head.get("pooling", "cls")
        width = int(encoder.config.hidden_size)
        dropout = float(head.get("dropout", 0.1))
        layers: list[nn.Module] = []
        for size in head.get("hidden", []):
            layers += [nn.Dropout(dropout), nn.Linear(width, int(size)), _ACTIVATIONS[head.get("activation", "tanh")]()]
            width = int(size)
        layers += [nn.Dropout(dropout), nn.Linear(width, num_labels)]
        self.head = nn.Sequential(*layers)

    @property
    def encoder(self) -> nn.Module:
        return getattr(self, self.encoder_attr)

    def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
        self.encoder.gradient_checkpointing_enable(**kwargs)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **inputs: Any) -> Any:
        from transformers.modeling_outputs import SequenceClassifierOutput

        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **inputs).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        elif self.pooling == "mean":
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        else:
            pooled = hidden.masked_fill(mask == 0, torch.finfo(hidden.dtype).min).max(dim=1).values
        return SequenceClassifierOutput(logits=self.head(pooled))


def build_head_model(location: str, revision: str | None, head: dict[str, Any], label_names: list[str]) -> nn.Module:
    """``AutoModel.from_pretrained`` (the checkpoint's classification head, if any, is dropped) + ``head``."""
    from transformers import AutoModel

    try:
        encoder = AutoModel.from_pretrained(location, revision=revision)
    except Exception as exc:
        raise ModelLoadError(f"task.model: cannot load the encoder of {location}: {type(exc).__name__}: {exc}") from exc
    model = PooledClassifier(encoder, len(label_names), head)
    model._sweeps_recipe = json.dumps(head, sort_keys=True)
    return model


# -- the study's model, saving and reloading --------------------------------------------------------------------------


def is_custom(spec: Any) -> bool:
    """The study builds its model here (factory or head) rather than with ``AutoModelForSequenceClassification``."""
    return is_factory_ref(spec.task.model) or spec.task.head is not None


def build_custom(spec: Any, source: Any, label_names: list[str], head: dict[str, Any] | None = None) -> nn.Module:
    """The model of a study whose ``task.model`` is a factory or that declares a ``task.head``. ``head`` is the
    trial's head (plain values); ``None`` builds the study's own, with each searched field at its first choice or
    low end (:meth:`~sweeps.config.HeadConfig.representative`: for ``inspect`` and the checks before trial 0)."""
    if isinstance(source, FactorySource):
        return build_factory_model(source, label_names)
    return build_head_model(source.location, source.revision, head or spec.task.head.representative(), label_names)


def save_custom(model: nn.Module, folder: Path, source: Any, label_names: list[str]) -> None:
    """Weights (``state_dict``) + the manifest that rebuilds the model; the encoder config for a head model. The
    manifest's head is the one the model was built with (a trial's sampled head), not the study file's entries."""
    from safetensors.torch import save_model

    folder.mkdir(parents=True, exist_ok=True)
    save_model(model, str(folder / WEIGHTS))
    manifest: dict[str, Any] = {"labels": list(label_names)}
    if isinstance(source, FactorySource):
        manifest.update(kind="factory", factory=source.spec, base_dir=source.base_dir, hash=source.content_hash)
    else:
        assert isinstance(model, PooledClassifier)
        model.encoder.config.save_pretrained(folder)
        manifest.update(kind="head", head=model.head_spec)
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")


def is_saved_custom(folder: Path) -> bool:
    return (folder / MANIFEST).is_file()


def load_saved(folder: Path) -> tuple[nn.Module, list[str]]:
    """Rebuild a saved custom model with the same factory (or head) and load its weights; returns (model, labels)."""
    from safetensors.torch import load_model

    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        labels = [str(x) for x in manifest["labels"]]
        if manifest["kind"] == "factory":
            factory = _import_factory(manifest["factory"], manifest.get("base_dir"))
            model = factory(**_labels(labels))
        else:
            from transformers import AutoConfig, AutoModel

            encoder = AutoModel.from_config(AutoConfig.from_pretrained(str(folder)))
            model = PooledClassifier(encoder, len(labels), manifest["head"])
        load_model(model, str(folder / WEIGHTS))
    except Exception as exc:
        raise ModelLoadError(f"{folder}: cannot rebuild the saved model: {type(exc).__name__}: {exc}") from exc
    return model, labels

