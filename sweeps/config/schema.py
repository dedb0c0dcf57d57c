"""The study file's sections as pydantic models: what each field means, its type, default and range.

``docs/yaml-reference.md`` is the user-facing reference of every field; keep the two in sync (a test checks
that every field is documented).
"""

from __future__ import annotations

import hashlib
import json
import os
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from annotated_types import Ge, Gt, Le, Lt
from pydantic import BeforeValidator, Discriminator, Field, PrivateAttr, Tag, field_validator

from sweeps.config.fields import (
    _DEVICE_RE,
    _IMPORT_REF_RE,
    _NAME_RE,
    _PACKAGE_RE,
    Float,
    _Bounds,
    _hinted,
    _Model,
    _yaml_float,
)
from sweeps.config.model_fields import HeadConfig, is_factory_ref
from sweeps.config.secrets import _mask_tree
from sweeps.config.spaces import (
    ParamValue,
    SearchableBatchSize,
    SearchableHeadScale,
    SearchableLearningRate,
    SearchableWarmup,
    SearchableWeightDecay,
)
from sweeps.metrics import OBJECTIVE_METRICS, QUALITY_METRICS
from sweeps.metrics import direction as metric_direction

BUILTIN_OPTIMIZERS = ("adamw", "adam", "sgd", "adafactor")


# transformers' SchedulerType values at the time of writing; names outside this list are checked against the
# installed transformers (imported only then), so a newer transformers' schedulers are accepted.
KNOWN_SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "reduce_lr_on_plateau",
    "cosine_with_min_lr",
    "cosine_warmup_with_min_lr",
    "warmup_stable_decay",
)


# File extension → data source for ``source: auto``; a compression suffix is looked through.
EXTENSION_SOURCES = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}


COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".zip")


class DataConfig(_Model):
    """``task.data``: where the examples come from and which columns hold what."""

    source: Literal["auto", "csv", "tsv", "json", "jsonl", "parquet", "hub", "imagefolder"] = "auto"
    train: Annotated[str, Field(min_length=1)]
    validation: str | None = None
    test: str | None = None
    hub_id: str | None = None
    hub_config: str | None = None
    text_column: Annotated[str, Field(min_length=1)] = "text"
    text_pair_column: str | None = None
    image_column: Annotated[str, Field(min_length=1)] | None = None
    augment: bool = False
    label_column: Annotated[str, Field(min_length=1)] = "label"
    id_column: str | None = None
    validation_fraction: Annotated[Float, Gt(0), Lt(1)] = 0.1
    max_train_rows: Annotated[int, Ge(1)] | None = None
    max_eval_rows: Annotated[int, Ge(1)] | None = None
    max_test_rows: Annotated[int, Ge(1)] | None = None
    shuffle_seed: Annotated[int, Ge(0), Lt(2**32)] = 0

    def source_for(self, location: str) -> str:
        """The reader for ``location`` (one of train/validation/test): ``source`` itself, or with ``auto`` the one
        its file extension names (:func:`source_from_extension`, the rule the data loader applies too)."""
        if self.source != "auto":
            return self.source
        return source_from_extension(location) or "auto"

    @property
    def has_images(self) -> bool:
        """Whether the examples are images (an ``image_column``, or folders of images); see ``task.modality``."""
        return self.image_column is not None or self.source == "imagefolder"


def source_from_extension(location: str) -> str | None:
    """``csv``/``tsv``/``json``/``jsonl``/``parquet`` from a file name (``train.csv.gz`` → ``csv``), else ``None``."""
    name = location.lower()
    for suffix in COMPRESSION_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return EXTENSION_SOURCES.get(os.path.splitext(name)[1])


class CVConfig(_Model):
    """``task.cv``: stratified K-fold cross-validation (``folds`` 0 or 1 = off)."""

    folds: Annotated[int, Ge(0), Le(100)] = 0

    @property
    def enabled(self) -> bool:
        return self.folds >= 2


class TaskConfig(_Model):
    """``task``: what is fine-tuned on what, and which metric is optimised."""

    model: Annotated[str, Field(min_length=1)]
    tokenizer: Annotated[str, Field(min_length=1)] | None = None
    head: HeadConfig | None = None
    revision: str | None = None
    max_length: Annotated[int, Ge(8), Le(8192)] = 128
    metric: Literal[QUALITY_METRICS] = "accuracy"
    # text or image classification; ``auto``: image when the data has images, else when the model is a vision model
    modality: Literal["auto", "text", "image"] = "auto"
    data: DataConfig
    cv: CVConfig = Field(default_factory=CVConfig)

    @field_validator("model")
    @classmethod
    def _check_model(cls, model: str) -> str:
        if model.startswith("package:") and not _PACKAGE_RE.match(model.split(":", 1)[1]):
            raise ValueError(f"'package:' must be followed by an importable package name, got {model!r}")
        return model

    @field_validator("tokenizer")
    @classmethod
    def _check_tokenizer(cls, tokenizer: str | None) -> str | None:
        package = tokenizer.split(":", 1)[1] if tokenizer and tokenizer.startswith("package:") else None
        if package is not None and not _PACKAGE_RE.match(package):
            raise ValueError(f"'package:' must be followed by an importable package name, got {tokenizer!r}")
        return tokenizer

    @property
    def is_factory(self) -> bool:
        """``model`` names a ``module:function`` factory (see :mod:`sweeps.train.custom_models`)."""
        return is_factory_ref(self.model)

    @property
    def direction(self) -> str:
        """``maximize`` or ``minimize`` for :attr:`metric`."""
        return metric_direction(self.metric)


def _layers_tag(value: Any) -> str:
    return "list" if isinstance(value, list) else "path"


class LayersConfig(_Model):
    """``layers``: an explicit layer grouping for models the automatic discovery cannot map (see
    :class:`strategies.layers.LayerSpec`)."""

    layers: Annotated[
        Union[  # noqa: UP007
            Annotated[Annotated[str, Field(min_length=1)], Tag("path")],
            Annotated[Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)], Tag("list")],
        ],
        Discriminator(_layers_tag),
    ]
    embeddings: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    head: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    other: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)


def _cache_mode(value: Any) -> Any:
    """``cache: off`` is the *boolean* false in YAML 1.1; read it as the user meant it."""
    if value is False:
        return "off"
    if value is True:
        return "auto"
    return value


class TrainingConfig(_Model):
    """``training``: the fine-tune of one trial. ``batch_size``, ``learning_rate``, ``head_lr_scale``,
    ``weight_decay`` and ``warmup_ratio`` may be search entries. Every ``strategies[i]`` entry may override any field
    for that strategy alone (its ``training:`` block)."""

    epochs: Annotated[int, Ge(1), Le(1000)] = 3
    batch_size: SearchableBatchSize = 32
    eval_batch_size: Annotated[int, Ge(1)] = 64
    learning_rate: SearchableLearningRate = 5e-5
    head_lr_scale: SearchableHeadScale = 1.0
    weight_decay: SearchableWeightDecay = 0.01
    optimizer: str = "adamw"
    momentum: Annotated[Float, Ge(0)] = 0.9
    scheduler: Annotated[str, Field(min_length=1)] = "linear"
    warmup_ratio: SearchableWarmup = 0.0
    grad_accum_steps: Annotated[int, Ge(1)] = 1
    max_grad_norm: Annotated[Float, Gt(0)] | None = 1.0
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on a bf16 GPU, else fp32
    device: str = "auto"
    seed: Annotated[int, Ge(0), Lt(2**32)] = 42
    num_threads: Annotated[int, Ge(1)] | None = None
    early_stopping_patience: Annotated[int, Ge(1)] | None = None
    gradient_checkpointing: bool = False
    group_by_length: bool = False
    frozen_dropout: bool = False
    train_bn: bool = False
    cache: Annotated[Literal["auto", "off"], BeforeValidator(_cache_mode)] = "auto"
    cache_dtype: Literal["float32", "float16", "bfloat16"] = "float16"
    divergence_factor: Annotated[float, Field(allow_inf_nan=True), Gt(1), BeforeValidator(_yaml_float)] = 10.0

    SEARCHABLE: typing.ClassVar[dict[str, _Bounds]] = {
        "batch_size": _Bounds("int", ge=1),
        "learning_rate": _Bounds("float", gt=0),
        "head_lr_scale": _Bounds("float", gt=0),
        "weight_decay": _Bounds("float", ge=0),
        "warmup_ratio": _Bounds("float", ge=0, le=1),
    }
    """The fields that may be search entries, with the limits every value of their range must meet."""

    @field_validator("optimizer")
    @classmethod
    def _check_optimizer(cls, value: str) -> str:
        if value in BUILTIN_OPTIMIZERS:
            return value
        if _IMPORT_REF_RE.match(value):
            from strategies.optim import load_optimizer

            load_optimizer(value)  # at validate time: an optimizer class or a marked factory, not any callable
            return value
        tail = f"Use one of {', '.join(BUILTIN_OPTIMIZERS)} or 'package.module:ClassName'"
        raise ValueError(_hinted(f"unknown optimizer {value!r}", value.lower(), BUILTIN_OPTIMIZERS, tail))

    @field_validator("scheduler")
    @classmethod
    def _check_scheduler(cls, value: str) -> str:
        if value in KNOWN_SCHEDULERS:
            return value
        known = list(KNOWN_SCHEDULERS)
        try:  # a newer transformers may know more schedulers; only imported for a name not in the table
            from transformers import SchedulerType

            known = [s.value for s in SchedulerType]
        except Exception:  # no (usable) transformers: the table is all we know
            return value
        if value in known:
            return value
        raise ValueError(_hinted(f"unknown scheduler {value!r}", value, known, f"Known: {', '.join(known)}"))

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if _DEVICE_RE.match(value):
            return value
        raise ValueError(f"must be auto, cpu, cuda or cuda:N, got {value!r}")


def _strategy_shorthand(value: Any) -> Any:
    """``- bottom_n`` is short for ``- {name: bottom_n}``."""
    return {"name": value} if isinstance(value, str) else value


class StrategyEntry(_Model):
    """One item of ``strategies``: a (possibly composed ``a+b`` or ``module:Class``) strategy name, its
    hyperparameters (each a fixed value or a search entry) and ``training``: fields of the ``training`` section that
    this strategy trains with instead (fixed or searched; validated like ``training`` itself when the study loads).

    After loading, ``training`` also holds the strategy's own default search ranges (``Strategy.default_training``)
    for the fields the study file sets nowhere: a frozen encoder with a fresh head needs a far higher learning rate
    than full fine-tuning, and one shared default would judge every strategy at an LR that suits only one of them."""

    name: Annotated[str, Field(min_length=1)]
    params: dict[str, ParamValue] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _strip(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("must not be empty")
        return value


def _objective_shorthand(value: Any) -> Any:
    """``- accuracy`` is short for ``- {metric: accuracy}``."""
    if isinstance(value, list):
        return [{"metric": v} if isinstance(v, str) else v for v in value]
    return value


class Objective(_Model):
    """One optimised quantity. ``direction`` is derived from the metric when not given (resolved after load)."""

    metric: Literal[OBJECTIVE_METRICS]
    direction: Literal["maximize", "minimize"] | None = None


def _pruner_none(value: Any) -> Any:
    """``pruner: null`` means no pruner, like ``pruner: none``."""
    return "none" if value is None else value


class ConfirmConfig(_Model):
    """``optuna.confirm``: after the search, retrain the best configuration of each of the ``top_k`` best strategies
    (always including the best ``none``) until each has ``seeds`` seeds in all, so a difference can be told apart from
    seed noise. The retrained configurations are the finalists evaluated once on a labelled test split."""

    top_k: Annotated[int, Ge(1), Le(20)] = 3
    seeds: Annotated[int, Ge(2), Le(20)] = 3


class OptunaConfig(_Model):
    """``optuna``: the study's sampler, pruner, budget and storage."""

    n_trials: Annotated[int, Ge(1)] | None = 10
    timeout: Annotated[Float, Gt(0)] | None = None
    sampler: Literal["tpe", "random", "grid", "cmaes", "nsga2", "qmc"] = "tpe"
    sampler_seed: int | None = None
    pruner: Annotated[Literal["median", "successive_halving", "hyperband", "none"], BeforeValidator(_pruner_none)] = (
        "median"
    )
    pruner_warmup_epochs: Annotated[int, Ge(0)] = 0
    # trials per strategy before the sampler chooses strategies (enqueued in rounds: StudyRunner._cover_strategies)
    min_trials_per_strategy: Annotated[int, Ge(1), Le(100)] = 1
    # min_length on the list itself: applied to the ``| None`` union it raised TypeError for ``objectives: null``
    objectives: Annotated[
        Annotated[list[Objective], Field(min_length=1)] | None, BeforeValidator(_objective_shorthand)
    ] = None
    storage: str | None = None
    study_name: Annotated[str, Field(min_length=1)] | None = None
    retry_failed: Annotated[int, Ge(0)] = 0
    heartbeat_interval: Annotated[int, Ge(1)] = 30
    confirm: ConfirmConfig | None = None

    @field_validator("storage")
    @classmethod
    def _check_storage(cls, value: str | None) -> str | None:
        if value is None or "://" in value or (value.startswith("journal:") and len(value) > len("journal:")):
            return value
        raise ValueError(
            f"expected an Optuna storage URL such as 'sqlite:///optuna.db' or 'postgresql://user@host/db', "
            f"or 'journal:<path>', got {value!r}"
        )

    @property
    def directions(self) -> list[str]:
        """One direction per objective (after load, every objective has one)."""
        return [o.direction or metric_direction(o.metric) for o in self.objectives or []]


class TrackingConfig(_Model):
    """``tracking``: where MLflow logs runs."""

    uri: Annotated[str, Field(min_length=1)] | None = None
    experiment: Annotated[str, Field(min_length=1)] | None = None
    enabled: bool = True


class StudySpec(_Model):
    """A whole study file, validated, with defaults resolved (see :func:`parse_spec`)."""

    name: str
    output: str | None = None
    task: TaskConfig
    layers: LayersConfig | None = None
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    strategies: Annotated[list[Annotated[StrategyEntry, BeforeValidator(_strategy_shorthand)]], Field(min_length=1)]
    optuna: OptunaConfig = Field(default_factory=OptunaConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)
    _source_path: Path | None = PrivateAttr(default=None)

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        # the name becomes a folder (runs/<name>) and a study/experiment name: no separators, no '.'/'..'
        if not _NAME_RE.match(value) or set(value) == {"."}:
            raise ValueError(f"must use only letters, digits, '_', '.' and '-' (and not be only dots), got {value!r}")
        return value

    # -- locations ----------------------------------------------------------------------------------------------------

    @property
    def base_dir(self) -> Path:
        """The study file's folder (absolute); relative paths in the file are resolved against it."""
        return self._base_dir

    @property
    def source_path(self) -> Path | None:
        """The study file this spec was loaded from (``None`` for :func:`parse_spec` without one)."""
        return self._source_path

    @property
    def output_dir(self) -> Path:
        """The study folder (absolute)."""
        return Path(self.output or Path.cwd() / "runs" / self.name)

    def resolve_path(self, path: str | os.PathLike[str]) -> Path:
        """``path`` as written in the study file → an absolute path, relative ones against :attr:`base_dir` (so a
        study runs the same from any working directory). Hub ids are not paths: callers decide first."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else Path(os.path.abspath(self.base_dir / p))

    # -- derived ------------------------------------------------------------------------------------------------------

    @property
    def strategy_names(self) -> list[str]:
        return [s.name for s in self.strategies]

    @property
    def objectives(self) -> list[Objective]:
        """The resolved objectives (never empty after load)."""
        return list(self.optuna.objectives or [])

    @property
    def directions(self) -> list[str]:
        return self.optuna.directions

    @property
    def objective_metrics(self) -> list[str]:
        """The objectives' metric names, in order."""
        return [o.metric for o in self.objectives]

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    # -- serialisation ------------------------------------------------------------------------------------------------

    def to_dict(self, masked: bool = False) -> dict[str, Any]:
        """The resolved configuration as plain data; ``parse_spec(spec.to_dict(), spec.base_dir)`` gives an equal spec.
        ``masked=True`` hides passwords in every URL (storage, tracking URI) for logging."""
        data = self.model_dump(mode="json")
        return _mask_tree(data) if masked else data

    def dump_yaml(self, masked: bool = True) -> str:
        """The resolved configuration as YAML, masked by default because it is logged as an MLflow artifact."""
        return yaml.safe_dump(self.to_dict(masked=masked), sort_keys=False, allow_unicode=True)

    def fingerprint(self, kind: str = "comparability") -> str:
        """A short stable hash.

        ``comparability`` covers only what makes trial results comparable — the model (and revision), the data,
        ``max_length``, the metric, cross-validation and the objectives — so raising ``n_trials`` or changing the
        search space keeps a study resumable while a different dataset refuses to mix into it. ``data.test`` (the
        unlabeled prediction input) is left out: it never affects a trial. ``full`` covers the whole resolved config.
        """
        if kind == "comparability":
            task = self.task
            data = task.data.model_dump(mode="json", exclude={"test"})
            payload: Any = {
                "model": task.model,
                "revision": task.revision,
                # only when set, so studies written before these fields keep their fingerprint (and stay resumable)
                **({"tokenizer": task.tokenizer} if task.tokenizer else {}),
                # the fixed fields only: searched ones are the search space, which may change between runs
                **({"head": task.head.fixed()} if task.head else {}),
                "max_length": task.max_length,
                "metric": task.metric,
                "data": data,
                "cv_folds": task.cv.folds if task.cv.enabled else 0,
                "objectives": [[o.metric, o.direction or metric_direction(o.metric)] for o in self.objectives],
            }
        elif kind == "full":
            payload = self.to_dict()
        else:
            raise ValueError(f"unknown fingerprint kind {kind!r}; use 'comparability' or 'full'")
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]
