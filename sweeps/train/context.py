"""What every trial of a study shares in one process, prepared once: data, tokenizer, tokenised splits,
model source and device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from strategies import LayerSpec
from sweeps.config import DataConfig, StudySpec
from sweeps.data import TaskData, load_task_data, make_collator, tokenization_key, tokenize_split
from sweeps.errors import SpecError
from sweeps.records import tokenized_cache_dir
from sweeps.train.models import ModelSource, load_classifier, load_tokenizer, resolve_model


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SpecError("training.device", f"{name!r} requested but CUDA is not available on this machine")
    return device


def layer_spec(spec: StudySpec | None) -> LayerSpec | None:
    """The study file's ``layers:`` section as a :class:`LayerSpec` (None: discover)."""
    section = spec.layers if spec is not None else None
    if section is None:
        return None
    return LayerSpec(
        layers=section.layers if isinstance(section.layers, str) else tuple(section.layers),
        embeddings=tuple(section.embeddings),
        head=tuple(section.head),
        other=tuple(section.other),
    )


def resolved_data_config(spec: StudySpec) -> DataConfig:
    """``task.data`` with file locations made absolute against the study file's folder (hub splits stay names), so
    a study runs the same from any working directory."""
    cfg = spec.task.data
    if cfg.source == "hub":
        return cfg
    update = {k: str(spec.resolve_path(v)) for k in ("train", "validation", "test") if (v := getattr(cfg, k))}
    return cfg.model_copy(update=update)


@dataclass
class StudyContext:
    """Per-process state shared by every trial of a study: built once, read by each trial."""

    spec: StudySpec
    output: Path
    device: torch.device
    data: TaskData
    tokenizer: Any
    model_source: ModelSource
    tokenized: dict[str, Any]  # split name -> tokenized datasets.Dataset
    split_keys: dict[str, str]  # split name -> tokenization cache key (used by the activation cache)
    collator: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]

    @classmethod
    def prepare(cls, spec: StudySpec, output: Path, dataframe: Any = None) -> StudyContext:

        device = resolve_device(spec.training.device)
        if spec.training.num_threads:
            torch.set_num_threads(spec.training.num_threads)
        data = load_task_data(
            resolved_data_config(spec), dataframe=dataframe, carve_validation=not spec.task.cv.enabled
        )
        source = resolve_model(spec.task.model, spec.base_dir, spec.task.revision)
        tokenizer = load_tokenizer(source)
        cache_dir = tokenized_cache_dir(output)
        tokenized, keys = {}, {}
        for split in ("train", "validation", "test"):
            ds = getattr(data, split)
            if ds is None or len(ds) == 0:
                continue
            tokenized[split] = tokenize_split(ds, tokenizer, spec.task.max_length, cache_dir)
            keys[split] = tokenization_key(tokenizer, spec.task.max_length, ds)
        return cls(spec, output, device, data, tokenizer, source, tokenized, keys, make_collator(tokenizer))

    def build_model(self) -> torch.nn.Module:
        return load_classifier(self.model_source, self.data.label_names).to(self.device)
