"""What every trial of a study shares in one process, prepared once: data, tokenizer, tokenised splits,
model source and device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from strategies import LayerSpec
from sweeps.config import DataConfig, StudySpec
from sweeps.data import TaskData, load_task_data, make_collator, tokenization_key, tokenize_split
from sweeps.data.images import ImageCollator, image_split_key
from sweeps.errors import SpecError
from sweeps.phases import MODEL_LOAD, SAVING, TOKENISATION, timed
from sweeps.records import tokenized_cache_dir
from sweeps.train.custom_models import FactorySource, build_custom, is_custom, resolve_factory, save_custom
from sweeps.train.image_models import load_image_processor, resolve_modality
from sweeps.train.models import ModelSource, load_classifier, load_tokenizer, resolve_model
from sweeps.train.unused import UnusedProbes


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SpecError("training.device", f"{name!r} requested but CUDA is not available on this machine")
    return device


def resolve_precision(name: str, device: torch.device) -> str:
    """``training.precision: auto`` for ``device``: bf16 autocast on a CUDA GPU that computes bf16 natively (Ampere and
    later), fp32 everywhere else. Not fp16 on older GPUs (T4, V100): models that overflow in fp16 would fail their
    trials as diverged, a verdict about the hardware rather than the strategy; set ``fp16`` there explicitly. Not bf16
    on CPU, where it is rarely faster and would change every CPU result. Any other value is returned as given."""
    if name != "auto":
        return name
    if device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False):
        return "bf16"
    return "fp32"


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
    """Per-process state shared by every trial of a study: built once, read by each trial.

    For image tasks (``modality == "image"``) ``tokenizer`` is the model's image processor (it is saved next to the
    model the same way), ``tokenized`` holds the normalised splits with ``labels`` (images are decoded and processed
    per batch by the collator) and ``split_keys`` are :func:`sweeps.data.images.image_split_key`.
    """

    spec: StudySpec
    output: Path
    device: torch.device
    data: TaskData
    tokenizer: Any
    model_source: ModelSource | FactorySource
    tokenized: dict[str, Any]  # split name -> tokenized datasets.Dataset
    split_keys: dict[str, str]  # split name -> tokenization cache key (used by the activation cache)
    collator: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]
    modality: str = "text"
    augment: bool = False  # task.data.augment: training batches of an image task are augmented
    unused_probes: UnusedProbes = field(default_factory=UnusedProbes)  # one probe per distinct model build

    @classmethod
    def prepare(cls, spec: StudySpec, output: Path, dataframe: Any = None) -> StudyContext:
        with timed(TOKENISATION):
            return cls._prepare(spec, output, dataframe)

    @classmethod
    def _prepare(cls, spec: StudySpec, output: Path, dataframe: Any) -> StudyContext:
        device = resolve_device(spec.training.device)
        if spec.training.num_threads:
            torch.set_num_threads(spec.training.num_threads)
        source = model_source(spec)
        modality = "text" if isinstance(source, FactorySource) else resolve_modality(spec, source)
        data_cfg = resolved_data_config(spec)
        if modality == "image" and not data_cfg.has_images:
            data_cfg = data_cfg.model_copy(update={"image_column": "image"})
        data = load_task_data(data_cfg, dataframe=dataframe, carve_validation=not spec.task.cv.enabled)
        if modality == "image":
            return cls._prepare_images(spec, output, device, data, source)
        tokenizer = load_tokenizer(
            resolve_model(spec.task.tokenizer, spec.base_dir) if spec.task.tokenizer else source
        )
        cache_dir = tokenized_cache_dir(output)
        tokenized, keys = {}, {}
        for split in ("train", "validation", "test"):
            ds = getattr(data, split)
            if ds is None or len(ds) == 0:
                continue
            tokenized[split] = tokenize_split(ds, tokenizer, spec.task.max_length, cache_dir)
            keys[split] = tokenization_key(tokenizer, spec.task.max_length, ds)
        return cls(spec, output, device, data, tokenizer, source, tokenized, keys, make_collator(tokenizer))

    @classmethod
    def _prepare_images(
        cls, spec: StudySpec, output: Path, device: torch.device, data: TaskData, source: ModelSource
    ) -> StudyContext:
        processor = load_image_processor(source)
        splits, keys = {}, {}
        for split in ("train", "validation", "test"):
            ds = getattr(data, split)
            if ds is None or len(ds) == 0:
                continue
            splits[split] = ds.rename_column("label", "labels") if "label" in ds.column_names else ds
            keys[split] = image_split_key(processor, data.split_fingerprints[split])
        return cls(
            spec, output, device, data, processor, source, splits, keys, ImageCollator(processor),
            modality="image", augment=bool(spec.task.data.augment),
        )

    def collator_for(self, train: bool, seed: int) -> Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]:
        """The collate function of a loader: a fresh augmenting one (seeded per trial) for training batches of an
        image task with ``task.data.augment``, else the shared deterministic one."""
        if train and self.augment:
            return ImageCollator(self.tokenizer, augment=True, seed=seed)
        return self.collator

    def build_model(self, head: dict[str, Any] | None = None) -> torch.nn.Module:
        """A fresh model on the study's device; ``head`` is a trial's ``task.head`` (see :func:`build_custom`)."""
        with timed(MODEL_LOAD):
            if is_custom(self.spec):
                return build_custom(self.spec, self.model_source, self.data.label_names, head).to(self.device)
            return load_classifier(self.model_source, self.data.label_names).to(self.device)

    def save_model(self, model: torch.nn.Module, folder: Path) -> None:
        """The trained model and its tokenizer, reloadable by ``predict``."""
        with timed(SAVING):
            folder.mkdir(parents=True, exist_ok=True)
            if is_custom(self.spec):
                save_custom(model, folder, self.model_source, self.data.label_names)
            else:
                model.save_pretrained(folder)
            self.tokenizer.save_pretrained(folder)


def model_source(spec: StudySpec) -> ModelSource | FactorySource:
    """Where ``task.model`` comes from: a factory (imported now, so a typo fails before trial 0) or a checkpoint."""
    if spec.task.is_factory:
        return resolve_factory(spec.task.model, spec.base_dir)
    return resolve_model(spec.task.model, spec.base_dir, spec.task.revision)
