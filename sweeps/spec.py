"""The study file: YAML → typed, validated, defaults-resolved :class:`StudySpec`.

Why this module is strict: a study runs for hours, so every mistake that can be found from the file alone is found
before the first trial, and reported as one :class:`~sweeps.errors.SpecError` whose ``path`` is the YAML path a user
can search for (``training.batch_size``, ``strategies[1].params.n``). Nothing else escapes :func:`parse_spec` or
:func:`load_spec` for a bad file: pydantic errors, YAML errors, bad ``--set`` overrides and unknown strategies are
all converted.

The pipeline is ``yaml.safe_load`` (never an unsafe loader: a ``!!python/object`` tag is an error) → ``--set``
overrides on the plain data → pydantic v2 models (``extra="forbid"``, strict types) → cross-field checks and default
resolution with explicit paths. Strategy names are resolved through :mod:`strategies.registry` only for the names the
study uses, so a ``my_pkg.mod:MyStrategy`` reference imports the user's module only when named.

``docs/yaml-reference.md`` is the user-facing reference of every field; keep the two in sync.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import json
import math
import os
import re
import types
import typing
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from annotated_types import Ge, Gt, Le, Lt
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from sweeps.errors import SpecError

__all__ = [
    "METRIC_DIRECTIONS",
    "TASK_METRICS",
    "CVConfig",
    "CategoricalSpace",
    "DataConfig",
    "FloatSpace",
    "IntSpace",
    "LayersConfig",
    "Objective",
    "OptunaConfig",
    "SearchSpace",
    "StrategyEntry",
    "StudySpec",
    "TaskConfig",
    "TrackingConfig",
    "TrainingConfig",
    "apply_overrides",
    "is_search",
    "load_spec",
    "mask_secrets",
    "parse_spec",
]

# --------------------------------------------------------------------------------------------------------------------
# Vocabulary

TASK_METRICS = ("accuracy", "f1_macro", "f1_weighted", "eval_loss")
METRIC_DIRECTIONS: dict[str, str] = {
    "accuracy": "maximize",
    "f1_macro": "maximize",
    "f1_weighted": "maximize",
    "eval_loss": "minimize",
    "epoch_time_s": "minimize",
    "peak_memory_mb": "minimize",
    "trainable_params": "minimize",  # the efficiency objective: fewer trainable parameters is better
    "samples_per_s": "maximize",
}
"""Every metric an objective may name, with the direction used when the study file gives none."""

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
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".zip")

# Guards against documents that would make validation hang: YAML aliases can expand a few lines into billions of
# nodes (the "billion laughs" document), and recursive aliases into cycles.
MAX_NODES = 200_000
MAX_DEPTH = 60

_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")
_IMPORT_REF_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_PACKAGE_RE = re.compile(r"^[A-Za-z_][\w.]*$")
_NUMBER_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


# --------------------------------------------------------------------------------------------------------------------
# Small helpers used by the models


def _yaml_float(value: Any) -> Any:
    """Accept ``5e-5`` written without a dot: PyYAML (YAML 1.1) reads it as the *string* ``"5e-5"``, the most common
    surprise in ML config files. Anything else is left for the strict float check to judge."""
    if isinstance(value, str) and _NUMBER_RE.match(value.strip()):
        return float(value)
    return value


Float = Annotated[float, BeforeValidator(_yaml_float)]
"""A float field that also accepts the numeric strings PyYAML produces for ``1e-5``."""


def _did_you_mean(word: Any, choices: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` when ``word`` is close to one of ``choices`` (empty otherwise)."""
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _hinted(main: str, word: Any, choices: Iterable[str], tail: str = "") -> str:
    """``main`` + the did-you-mean hint + ``tail`` as one readable message."""
    hint = _did_you_mean(word, choices)
    if not tail:
        return main + hint
    return f"{main}{hint} {tail}" if hint else f"{main}. {tail}"


def _describe(value: Any) -> str:
    """A short, type-revealing rendering of an input value for error messages (``got str '5'`` tells a user the
    value was quoted)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_scalar(value: Any) -> bool:
    """The values Optuna can store as a categorical choice and MLflow can log as a param."""
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or isinstance(value, (bool, int, str))


class _Model(BaseModel):
    """Base of every study-file model: unknown keys are errors (a typo must not silently fall back to a default),
    types are strict (``true`` is not a batch size, ``"32"`` is not an integer) and floats must be finite."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


# --------------------------------------------------------------------------------------------------------------------
# Search entries


class IntSpace(_Model):
    """``{type: int, low, high, step: 1, log: false}`` → ``trial.suggest_int``."""

    type: Literal["int"] = "int"
    low: int
    high: int
    step: Annotated[int, Gt(0)] = 1
    log: bool = False

    @model_validator(mode="after")
    def _check(self) -> IntSpace:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must be <= high ({self.high})")
        if self.log and self.low < 1:
            raise ValueError(f"log: true needs low > 0, got low {self.low}")
        if self.log and self.step != 1:
            raise ValueError("log: true needs step 1 (Optuna samples log ranges without a step)")
        if (self.high - self.low) % self.step:
            raise ValueError(f"high - low ({self.high - self.low}) must be a multiple of step ({self.step})")
        return self


class FloatSpace(_Model):
    """``{type: float, low, high, step: null, log: false}`` → ``trial.suggest_float``."""

    type: Literal["float"] = "float"
    low: Float
    high: Float
    step: Annotated[Float, Gt(0)] | None = None
    log: bool = False

    @model_validator(mode="after")
    def _check(self) -> FloatSpace:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must be <= high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"log: true needs low > 0, got low {self.low}")
        if self.log and self.step is not None:
            raise ValueError("log: true cannot be combined with step (Optuna does not support it)")
        return self


class CategoricalSpace(_Model):
    """``{type: categorical, choices: [...]}`` (or the shorthand ``{choices: [...]}``) → ``trial.suggest_categorical``.
    Choices are scalars because Optuna stores them in its database and MLflow logs them as params."""

    type: Literal["categorical"] = "categorical"
    choices: Annotated[list[Any], Field(min_length=1)]

    @field_validator("choices")
    @classmethod
    def _check_choices(cls, choices: list[Any]) -> list[Any]:
        seen: set[tuple[str, Any]] = set()
        for i, choice in enumerate(choices):
            if not _is_scalar(choice):
                raise ValueError(f"choices[{i}] must be a string, number, boolean or null, got {_describe(choice)}")
            key = (type(choice).__name__, choice)
            if key in seen:
                raise ValueError(f"choices[{i}] {choice!r} is listed twice")
            seen.add(key)
        return choices


SearchSpace = Union[IntSpace, FloatSpace, CategoricalSpace]  # noqa: UP007 - used with isinstance
_SPACE_TYPES = ("int", "float", "categorical")


def is_search(value: Any) -> bool:
    """True for a parsed search entry (as opposed to a fixed value)."""
    return isinstance(value, (IntSpace, FloatSpace, CategoricalSpace))


def _search_tag(value: Any) -> str | None:
    """Pydantic discriminator: a mapping is a search entry (by its ``type``, or categorical when it only has
    ``choices``); anything else is a fixed value. Choosing the branch up front keeps one clear error per field instead
    of one per union member."""
    if isinstance(value, dict):
        kind = value.get("type")
        if kind is None and "choices" in value:
            return "categorical"
        return kind if isinstance(kind, str) and kind in _SPACE_TYPES else None
    if is_search(value):
        return value.type
    return "value"


def _plain_value(value: Any) -> Any:
    """A fixed strategy hyperparameter: a scalar or a list of scalars, so it can be logged and compared."""
    if _is_scalar(value) or (isinstance(value, list) and all(_is_scalar(v) for v in value)):
        return value
    raise ValueError(f"must be a string, number, boolean, null or a list of those, got {_describe(value)}")


def _searchable(value_type: Any) -> Any:
    """``value_type`` or a search entry (see :data:`SearchSpace`)."""
    return Annotated[
        Union[  # noqa: UP007 - Annotated members need the Union form
            Annotated[value_type, Tag("value")],
            Annotated[IntSpace, Tag("int")],
            Annotated[FloatSpace, Tag("float")],
            Annotated[CategoricalSpace, Tag("categorical")],
        ],
        Discriminator(_search_tag),
    ]


SearchableBatchSize = _searchable(Annotated[int, Ge(1)])
SearchableLearningRate = _searchable(Annotated[Float, Gt(0)])
SearchableWeightDecay = _searchable(Annotated[Float, Ge(0)])
SearchableWarmup = _searchable(Annotated[Float, Ge(0), Le(1)])
ParamValue = _searchable(Annotated[Any, AfterValidator(_plain_value)])


@dataclasses.dataclass(frozen=True)
class _Bounds:
    """Constraints a value must meet, shared by the fixed-value check and the check of a search entry's range."""

    kind: str = "any"  # int | float | bool | str | any
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    nullable: bool = False

    def problem(self, value: Any) -> str | None:
        """Why ``value`` does not fit, or ``None``."""
        if value is None:
            return None if self.nullable or self.kind == "any" else "null is not allowed"
        if self.kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
            return f"expected an integer, got {_describe(value)}"
        if self.kind == "float" and not _is_number(value):
            return f"expected a number, got {_describe(value)}"
        if self.kind == "bool" and not isinstance(value, bool):
            return f"expected true or false, got {_describe(value)}"
        if self.kind == "str" and not isinstance(value, str):
            return f"expected a string, got {_describe(value)}"
        if _is_number(value):
            if self.ge is not None and value < self.ge:
                return f"must be >= {self.ge}, got {value}"
            if self.gt is not None and value <= self.gt:
                return f"must be > {self.gt}, got {value}"
            if self.le is not None and value > self.le:
                return f"must be <= {self.le}, got {value}"
        return None


def _check_space(space: SearchSpace, path: str, bounds: _Bounds) -> None:
    """A search entry fits the field it searches: an integer field cannot take a float range or string choices, and
    the whole range must satisfy the field's own limits (a batch size range starting at 0 fails here, not in trial
    37)."""
    if isinstance(space, FloatSpace) and bounds.kind == "int":
        raise SpecError(path, "a float range cannot search an integer field; use type: int")
    if isinstance(space, (IntSpace, FloatSpace)):
        if bounds.kind in ("bool", "str"):
            raise SpecError(path, f"a numeric range cannot search a {bounds.kind} field; use choices: [...]")
        for end in ("low", "high"):
            problem = bounds.problem(getattr(space, end))
            if problem:
                raise SpecError(f"{path}.{end}", problem)
        return
    for i, choice in enumerate(space.choices):
        if bounds.kind == "float" and isinstance(choice, str) and _NUMBER_RE.match(choice.strip()):
            space.choices[i] = choice = float(choice)
        problem = bounds.problem(choice)
        if problem:
            raise SpecError(f"{path}.choices[{i}]", problem)


# --------------------------------------------------------------------------------------------------------------------
# The study file's sections


class DataConfig(_Model):
    """``task.data``: where the examples come from and which columns hold what."""

    source: Literal["auto", "csv", "tsv", "json", "jsonl", "parquet", "hub"] = "auto"
    train: Annotated[str, Field(min_length=1)]
    validation: str | None = None
    test: str | None = None
    hub_id: str | None = None
    hub_config: str | None = None
    text_column: Annotated[str, Field(min_length=1)] = "text"
    text_pair_column: str | None = None
    label_column: Annotated[str, Field(min_length=1)] = "label"
    id_column: str | None = None
    validation_fraction: Annotated[Float, Gt(0), Lt(1)] = 0.1
    max_train_rows: Annotated[int, Ge(1)] | None = None
    max_eval_rows: Annotated[int, Ge(1)] | None = None
    shuffle_seed: Annotated[int, Ge(0), Lt(2**32)] = 0

    def source_for(self, location: str) -> str:
        """The reader for ``location`` (one of train/validation/test): ``source`` itself, or with ``auto`` the one
        its file extension names. One rule, used by the validation here and by the data loader."""
        if self.source != "auto":
            return self.source
        return source_from_extension(location) or "auto"


def source_from_extension(location: str) -> str | None:
    """``csv``/``tsv``/``json``/``jsonl``/``parquet`` from a file name (``train.csv.gz`` → ``csv``), else ``None``."""
    name = location.lower()
    for suffix in _COMPRESSION_SUFFIXES:
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
    revision: str | None = None
    max_length: Annotated[int, Ge(8), Le(8192)] = 128
    metric: Literal["accuracy", "f1_macro", "f1_weighted", "eval_loss"] = "accuracy"
    data: DataConfig
    cv: CVConfig = Field(default_factory=CVConfig)

    @field_validator("model")
    @classmethod
    def _check_model(cls, model: str) -> str:
        if model.startswith("package:") and not _PACKAGE_RE.match(model.split(":", 1)[1]):
            raise ValueError(f"'package:' must be followed by an importable package name, got {model!r}")
        return model

    @property
    def direction(self) -> str:
        """``maximize`` or ``minimize`` for :attr:`metric`."""
        return METRIC_DIRECTIONS[self.metric]


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

    def to_layer_spec(self) -> Any:
        """The :class:`strategies.layers.LayerSpec` (imported here, not at module level: it pulls in torch)."""
        from strategies.layers import LayerSpec

        layers = self.layers if isinstance(self.layers, str) else tuple(self.layers)
        return LayerSpec(
            layers=layers, embeddings=tuple(self.embeddings), head=tuple(self.head), other=tuple(self.other)
        )


def _cache_mode(value: Any) -> Any:
    """``cache: off`` is the *boolean* false in YAML 1.1; read it as the user meant it."""
    if value is False:
        return "off"
    if value is True:
        return "auto"
    return value


class TrainingConfig(_Model):
    """``training``: the fine-tune of one trial. ``batch_size``, ``learning_rate``, ``weight_decay`` and
    ``warmup_ratio`` may be search entries."""

    epochs: Annotated[int, Ge(1), Le(1000)] = 3
    batch_size: SearchableBatchSize = 32
    eval_batch_size: Annotated[int, Ge(1)] = 64
    learning_rate: SearchableLearningRate = 5e-5
    weight_decay: SearchableWeightDecay = 0.01
    optimizer: str = "adamw"
    momentum: Annotated[Float, Ge(0)] = 0.9
    scheduler: Annotated[str, Field(min_length=1)] = "linear"
    warmup_ratio: SearchableWarmup = 0.0
    grad_accum_steps: Annotated[int, Ge(1)] = 1
    max_grad_norm: Annotated[Float, Gt(0)] | None = 1.0
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
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
        "weight_decay": _Bounds("float", ge=0),
        "warmup_ratio": _Bounds("float", ge=0, le=1),
    }
    """The fields that may be search entries, with the limits every value of their range must meet."""

    @field_validator("optimizer")
    @classmethod
    def _check_optimizer(cls, value: str) -> str:
        if value in BUILTIN_OPTIMIZERS or _IMPORT_REF_RE.match(value):
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
    """One item of ``strategies``: a (possibly composed ``a+b`` or ``module:Class``) strategy name and its
    hyperparameters, each a fixed value or a search entry."""

    name: Annotated[str, Field(min_length=1)]
    params: dict[str, ParamValue] = Field(default_factory=dict)

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

    metric: Literal[
        "accuracy",
        "f1_macro",
        "f1_weighted",
        "eval_loss",
        "epoch_time_s",
        "peak_memory_mb",
        "trainable_params",
        "samples_per_s",
    ]
    direction: Literal["maximize", "minimize"] | None = None


def _pruner_none(value: Any) -> Any:
    """``pruner: null`` means no pruner, like ``pruner: none``."""
    return "none" if value is None else value


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
    # min_length on the list itself: applied to the ``| None`` union it raised TypeError for ``objectives: null``
    objectives: Annotated[
        Annotated[list[Objective], Field(min_length=1)] | None, BeforeValidator(_objective_shorthand)
    ] = None
    storage: str | None = None
    study_name: Annotated[str, Field(min_length=1)] | None = None
    retry_failed: Annotated[int, Ge(0)] = 0
    heartbeat_interval: Annotated[int, Ge(1)] = 30

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
        return [o.direction or METRIC_DIRECTIONS[o.metric] for o in self.objectives or []]


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
                "max_length": task.max_length,
                "metric": task.metric,
                "data": data,
                "cv_folds": task.cv.folds if task.cv.enabled else 0,
                "objectives": [[o.metric, o.direction or METRIC_DIRECTIONS[o.metric]] for o in self.objectives],
            }
        elif kind == "full":
            payload = self.to_dict()
        else:
            raise ValueError(f"unknown fingerprint kind {kind!r}; use 'comparability' or 'full'")
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------------------------------
# Secrets

_URL_PASSWORD_RE = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@]*):(?P<pw>[^\s/]*)@")
_QUERY_SECRET_RE = re.compile(r"(?P<key>[?&;](?:password|passwd|pwd|token|secret|api_key|access_token)=)[^&;\s]*", re.I)


def mask_secrets(text: str) -> str:
    """Replace passwords in URLs (``scheme://user:pw@host`` and ``?password=``-style query parameters) with ``***``,
    so a resolved config or an error message can be logged."""
    text = _URL_PASSWORD_RE.sub(lambda m: f"{m.group('head')}:***@", text)
    return _QUERY_SECRET_RE.sub(lambda m: f"{m.group('key')}***", text)


def _mask_tree(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _mask_tree(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_mask_tree(v) for v in data]
    return mask_secrets(data) if isinstance(data, str) else data


# --------------------------------------------------------------------------------------------------------------------
# pydantic errors → SpecError


def _unwrap_annotated(tp: Any) -> tuple[Any, list[Any]]:
    metadata: list[Any] = []
    while typing.get_origin(tp) is Annotated:
        args = typing.get_args(tp)
        tp, metadata = args[0], [*metadata, *args[1:]]
    return tp, metadata


def _union_members(tp: Any) -> list[Any] | None:
    if typing.get_origin(tp) in (Union, types.UnionType):
        return list(typing.get_args(tp))
    return None


def _step_type(tp: Any, element: Any) -> Any:
    """The annotation reached from ``tp`` by one element of a pydantic error location (field name, list index,
    dict key or union tag); ``None`` when unknown."""
    tp, _ = _unwrap_annotated(tp)
    members = _union_members(tp)
    if members is not None:
        for member in members:  # a tag names its member
            if any(isinstance(m, Tag) and m.tag == element for m in _unwrap_annotated(member)[1]):
                return member
        for member in members:
            found = _step_type(member, element)
            if found is not None:
                return found
        return None
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        field = tp.model_fields.get(element) if isinstance(element, str) else None
        if field is None:
            return None
        return Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
    origin = typing.get_origin(tp)
    if origin is list and isinstance(element, int):
        return typing.get_args(tp)[0]
    if origin is dict:
        return typing.get_args(tp)[1]
    return None


def _type_at(root: Any, loc: Sequence[Any]) -> Any:
    tp = root
    for element in loc:
        tp = _step_type(tp, element)
        if tp is None:
            return None
    return tp


def _models_in(tp: Any) -> list[type[BaseModel]]:
    tp, _ = _unwrap_annotated(tp)
    members = _union_members(tp)
    if members is not None:
        return [m for member in members for m in _models_in(member)]
    return [tp] if isinstance(tp, type) and issubclass(tp, BaseModel) else []


def _literal_values(tp: Any) -> list[str]:
    tp, _ = _unwrap_annotated(tp)
    members = _union_members(tp)
    if members is not None:
        return [v for member in members for v in _literal_values(member)]
    if typing.get_origin(tp) is Literal:
        return [str(v) for v in typing.get_args(tp)]
    return []


def _format_path(parts: Sequence[tuple[Any, bool]]) -> str:
    out = ""
    for key, in_list in parts:
        if in_list:
            out += f"[{key}]"
        else:
            out += f".{key}" if out else str(key)
    return out


def _yaml_path(loc: Sequence[Any], data: Any, key_error: bool = False) -> str:
    """The YAML path of a pydantic error location: union tags and other elements that are not keys of the input are
    dropped. For a missing or unknown key (``key_error``) the last element is the key and is kept."""
    parts: list[tuple[Any, bool]] = []
    node = data
    for i, element in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(node, dict) and element in node:
            parts.append((element, False))
            node = node[element]
        elif isinstance(node, list) and isinstance(element, int) and 0 <= element < len(node):
            parts.append((element, True))
            node = node[element]
        elif isinstance(node, dict) and last and key_error:
            parts.append((element, False))
    return _format_path(parts)


_EXPECTED = {
    "int_type": "expected an integer",
    "int_parsing": "expected an integer",
    "int_from_float": "expected an integer",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "string_type": "expected a string",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "list_type": "expected a list",
    "dict_type": "expected a mapping",
    "model_type": "expected a mapping",
    "model_attributes_type": "expected a mapping",
    "none_required": "expected null",
}


def _error_message(err: dict[str, Any], root: Any) -> str:
    """One pydantic error as a sentence a user can act on."""
    kind, loc, value, ctx = err["type"], err["loc"], err.get("input"), err.get("ctx") or {}
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        allowed = sorted({f for model in _models_in(_type_at(root, loc[:-1])) for f in model.model_fields})
        return _hinted(f"unknown key {loc[-1]!r}", loc[-1], allowed, f"Allowed here: {', '.join(allowed)}")
    if kind == "invalid_key":
        return f"keys must be strings, got {_describe(value)}"
    if kind in ("union_tag_not_found", "union_tag_invalid"):
        given = value.get("type") if isinstance(value, dict) else None
        if given is not None:
            return _hinted(f"unknown search type {given!r}", str(given), _SPACE_TYPES, "Use int, float or categorical")
        return "a search entry needs 'type: int', 'type: float' or 'type: categorical' (or just 'choices: [...]')"
    if kind in _EXPECTED:
        return f"{_EXPECTED[kind]}, got {_describe(value)}"
    if kind == "literal_error":
        allowed = _literal_values(_type_at(root, loc)) or [ctx.get("expected", "")]
        return f"must be one of {', '.join(allowed)}, got {_describe(value)}{_did_you_mean(value, allowed)}"
    bounds = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}
    if kind in bounds:
        limit = next(iter(ctx.values()), "?")
        return f"must be {bounds[kind]} {limit}, got {_describe(value)}"
    if kind == "finite_number":
        return f"must be a finite number, got {_describe(value)}"
    if kind == "too_short":
        return f"must have at least {ctx.get('min_length', 1)} item(s)"
    if kind == "string_too_short":
        return "must not be empty"
    msg = str(err.get("msg", kind))
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    return msg


def _spec_error_from(exc: ValidationError, data: Any, root: Any, prefix: str = "") -> SpecError:
    """The first problem as a :class:`SpecError`; the others are named so a user can fix them in one go."""
    # an unknown key first: a typo ('lo') explains the "missing" error ('low') it causes
    errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
    if not errors:
        return SpecError(prefix, str(exc))
    paths: list[str] = []
    for err in errors:
        path = _yaml_path(err["loc"], data, key_error=err["type"] in ("missing", "extra_forbidden"))
        full = f"{prefix}.{path}" if prefix and path else (prefix or path)
        if full not in paths:
            paths.append(full)
    message = _error_message(errors[0], root)
    if len(paths) > 1:
        others = paths[1:6]
        message += f" (also {len(paths) - 1} more problem(s) at: {', '.join(p or '<top>' for p in others)})"
    return SpecError(paths[0], message)


# --------------------------------------------------------------------------------------------------------------------
# YAML


def _mark_error(exc: yaml.YAMLError, source: str) -> SpecError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    if isinstance(exc, yaml.constructor.ConstructorError) and "tag" in str(problem):
        problem = f"{problem} (YAML tags are not allowed in a study file)"
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "unknown position"
    detail = problem
    if context and context not in problem:
        started = getattr(exc, "context_mark", None)
        since = f" (from line {started.line + 1})" if started is not None and started is not mark else ""
        detail = f"{context}{since}: {problem}"
    return _positioned(f"{source}: invalid YAML at {where}: {detail}", mark)


def _positioned(message: str, mark: Any) -> SpecError:
    """A file-level :class:`SpecError` that also carries ``line``/``column`` (1-based) for editors and tests."""
    error = SpecError("", message)
    error.line = mark.line + 1 if mark is not None else None  # type: ignore[attr-defined]
    error.column = mark.column + 1 if mark is not None else None  # type: ignore[attr-defined]
    return error


def _check_nodes(root: yaml.Node, source: str) -> None:
    """Duplicate keys (PyYAML silently keeps the last: a second ``training:`` section would replace the first) and
    alias bombs / recursive aliases (which would make validation hang), found on the composed node graph."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def where(node: yaml.Node) -> str:
        return f"line {node.start_mark.line + 1}, column {node.start_mark.column + 1}"

    def size(node: yaml.Node, depth: int) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise _positioned(f"{source}: recursive YAML alias at {where(node)}", node.start_mark)
        if depth > MAX_DEPTH:
            raise _positioned(f"{source}: nested more than {MAX_DEPTH} levels deep at {where(node)}", node.start_mark)
        active.add(key)
        total = 1
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, yaml.Node] = {}
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.tag == "tag:yaml.org,2002:str":
                    if k.value in seen and k.value != "<<":
                        first = where(seen[k.value])
                        message = f"{source}: duplicate key {k.value!r} at {where(k)} (first at {first})"
                        raise _positioned(message, k.start_mark)
                    seen[k.value] = k
                total += size(k, depth + 1) + size(v, depth + 1)
        elif isinstance(node, yaml.SequenceNode):
            for v in node.value:
                total += size(v, depth + 1)
        active.discard(key)
        sizes[key] = total
        if total > MAX_NODES:
            raise SpecError("", f"{source}: the document expands to more than {MAX_NODES} values (YAML aliases?)")
        return total

    size(root, 0)


def _parse_yaml(text: str, source: str) -> Any:
    """``yaml.safe_load`` with YAML problems (syntax, tags, duplicate keys, alias bombs) as :class:`SpecError`."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)  # parse only: nothing is constructed
        if node is not None:
            _check_nodes(node, source)
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise _mark_error(exc, source) from None
    except RecursionError:
        raise SpecError("", f"{source}: the YAML document is nested too deeply") from None


# --------------------------------------------------------------------------------------------------------------------
# --set overrides

_SEGMENT_RE = re.compile(r"([^.\[\]]+)|\[(-?\d+)\]")


def _split_key(key: str) -> list[str | int]:
    """``strategies[1].params.n`` / ``strategies.1.params.n`` → ``['strategies', 1, 'params', 'n']``."""
    parts: list[str | int] = []
    pos = 0
    key = key.strip()
    while pos < len(key):
        if key[pos] == "." and parts:
            pos += 1
        m = _SEGMENT_RE.match(key, pos)
        if not m:
            raise ValueError(f"cannot parse key {key!r} at {key[pos:]!r}")
        if m.group(2) is not None:
            parts.append(int(m.group(2)))
        else:
            parts.append(int(m.group(1)) if m.group(1).isdigit() else m.group(1))
        pos = m.end()
    if not parts or not isinstance(parts[0], str):
        raise ValueError(f"cannot parse key {key!r}")
    return parts


def _allowed_keys(tp: Any) -> list[str] | None:
    """Field names when ``tp`` is (a union of) models; ``None`` for free-form mappings such as strategy params."""
    models = _models_in(tp)
    if not models:
        return None
    return sorted({f for m in models for f in m.model_fields})


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``dotted.key=value`` overrides to raw study data (a copy is returned). Values are parsed as YAML, so
    ``training.epochs=3`` is an int and ``optuna.pruner=none`` a string; keys are checked against the schema here so
    a typo is reported as the override it came from, with a suggestion."""
    data = copy.deepcopy(data)
    for override in overrides:
        where = f"--set {override}"
        if "=" not in override:
            raise SpecError("", f"{where}: expected dotted.key=value")
        key, _, raw = override.partition("=")
        try:
            parts = _split_key(key)
        except ValueError as exc:
            raise SpecError(key.strip(), f"{where}: {exc}") from None
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise SpecError(key.strip(), f"{where}: value is not valid YAML: {getattr(exc, 'problem', exc)}") from None
        _set_path(data, parts, value, where)
    return data


def _set_path(data: dict[str, Any], parts: list[str | int], value: Any, where: str) -> None:
    node: Any = data
    tp: Any = StudySpec
    done: list[tuple[Any, bool]] = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        here = _format_path([*done, (part, isinstance(node, list) and isinstance(part, int))])
        if isinstance(node, list):
            if not isinstance(part, int):
                raise SpecError(here, f"{where}: {_format_path(done)} is a list; use an index such as [0]")
            if not -len(node) <= part <= len(node):
                raise SpecError(here, f"{where}: index {part!r} is out of range (the list has {len(node)} item(s))")
            part = part + len(node) if part < 0 else part  # -1 is the last item; len(node) appends
            item_tp = _step_type(tp, 0)
            if part == len(node):
                node.append(None)
        else:
            allowed = _allowed_keys(tp)
            if isinstance(part, int):
                part = str(part)
            if allowed is not None and part not in allowed:
                raise SpecError(here, f"{where}: unknown key {part!r}{_did_you_mean(part, allowed)}")
            item_tp = _step_type(tp, part)
        if last:
            node[part] = value
            return
        child = node[part] if isinstance(node, list) else node.get(part)
        if child is None:
            if not _is_container_type(item_tp):
                raise SpecError(here, f"{where}: {here} is a single value; there is no key inside it to set")
            child = [] if isinstance(parts[i + 1], int) and _is_list_type(item_tp) else {}
            node[part] = child
        if not isinstance(child, (dict, list)):
            raise SpecError(here, f"{where}: cannot set a key inside {_describe(child)}")
        done.append((part, isinstance(node, list)))
        node, tp = child, item_tp


def _is_container_type(tp: Any) -> bool:
    """Whether keys can be set below a value of type ``tp`` (a section, a list, a mapping or a search entry)."""
    if tp is None or _models_in(tp):
        return True
    tp, _ = _unwrap_annotated(tp)
    members = _union_members(tp)
    if members is not None:
        return any(_is_container_type(m) for m in members if m is not type(None))
    return typing.get_origin(tp) in (list, dict)


def _is_list_type(tp: Any) -> bool:
    tp, _ = _unwrap_annotated(tp)
    members = _union_members(tp)
    if members is not None:
        return any(_is_list_type(m) for m in members)
    return typing.get_origin(tp) is list


# --------------------------------------------------------------------------------------------------------------------
# Loading


def load_spec(path: str | os.PathLike[str], overrides: Sequence[str] = (), output: str | None = None) -> StudySpec:
    """Read, override (``--set``), validate and resolve a study file. ``output`` (the CLI's ``--output``, relative
    to the current directory) replaces the file's ``output``."""
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError("", f"study file not found: {source}") from None
    except IsADirectoryError:
        raise SpecError("", f"{source} is a folder, not a study file") from None
    except UnicodeDecodeError as exc:
        raise SpecError("", f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise SpecError("", f"cannot read study file {source}: {exc.strerror or exc}") from None
    data = _parse_yaml(text, str(source))
    if data is None:
        raise SpecError("", f"{source}: the study file is empty")
    if not isinstance(data, dict):
        raise SpecError(
            "", f"{source}: the study file must be a mapping of sections (name, task, ...), got {_describe(data)}"
        )
    if overrides:
        data = apply_overrides(data, overrides)
    base_dir = Path(os.path.abspath(source)).parent
    return parse_spec(data, base_dir, output=output, source_path=Path(os.path.abspath(source)))


def parse_spec(
    data: dict[str, Any],
    base_dir: str | os.PathLike[str],
    *,
    output: str | None = None,
    source_path: Path | None = None,
) -> StudySpec:
    """Validate plain study data (as from YAML) into a resolved :class:`StudySpec`; every problem is a
    :class:`SpecError` naming its YAML path."""
    if not isinstance(data, dict):
        raise SpecError("", f"the study must be a mapping of sections (name, task, ...), got {_describe(data)}")
    try:
        spec = StudySpec.model_validate(data)
    except ValidationError as exc:
        raise _spec_error_from(exc, data, StudySpec) from None
    except RecursionError:
        raise SpecError("", "the study data is nested too deeply (or recursive)") from None
    spec._base_dir = Path(os.path.abspath(base_dir))
    spec._source_path = source_path
    _check_task(spec)
    _check_training(spec)
    _check_strategies(spec)
    _resolve_optuna(spec)
    _resolve_locations(spec, output)
    if spec.optuna.sampler == "grid":
        from sweeps.search import grid_search_space

        grid_search_space(spec)
    return spec


def _check_task(spec: StudySpec) -> None:
    data = spec.task.data
    if data.source == "hub":
        if not data.hub_id:
            raise SpecError("task.data.hub_id", "is required when task.data.source is hub")
    else:
        if data.hub_id is not None or data.hub_config is not None:
            key = "hub_id" if data.hub_id is not None else "hub_config"
            raise SpecError(f"task.data.{key}", "is only used with task.data.source: hub")
        if data.source == "auto":
            for key in ("train", "validation", "test"):
                location = getattr(data, key)
                if location is not None and source_from_extension(location) is None:
                    raise SpecError(
                        f"task.data.{key}",
                        f"cannot tell the format of {location!r} from its extension "
                        f"({', '.join(sorted(EXTENSION_SOURCES))}); set task.data.source",
                    )
    columns = {"text_column": data.text_column, "label_column": data.label_column}
    for key in ("text_pair_column", "id_column"):
        if getattr(data, key) is not None:
            columns[key] = getattr(data, key)
    seen: dict[str, str] = {}
    for key, column in columns.items():
        if column in seen:
            raise SpecError(f"task.data.{key}", f"column {column!r} is already used as {seen[column]}")
        seen[column] = key


def _check_training(spec: StudySpec) -> None:
    training = spec.training
    for field, bounds in TrainingConfig.SEARCHABLE.items():
        value = getattr(training, field)
        if is_search(value):
            _check_space(value, f"training.{field}", bounds)
    if training.precision == "fp16" and training.device == "cpu":
        raise SpecError("training.precision", "fp16 needs CUDA; use bf16 or fp32 with device: cpu")


def _param_bounds(classes: Sequence[type], name: str) -> _Bounds:
    """The kind of a strategy hyperparameter from its dataclass annotation (``int``, ``float``, ``bool``, ``str``,
    optionally ``| None``); anything else is not checked here (the strategy's own ``check`` does it)."""
    for cls in classes:
        try:
            hints = typing.get_type_hints(cls)
        except Exception:  # unresolvable annotations: no type check
            continue
        if name not in hints:
            continue
        tp, _ = _unwrap_annotated(hints[name])
        nullable = False
        members = _union_members(tp)
        if members is not None:
            rest = [m for m in members if m is not type(None)]
            nullable = len(rest) < len(members)
            if len(rest) != 1:
                return _Bounds("any", nullable=True)
            tp = rest[0]
        kinds = {bool: "bool", int: "int", float: "float", str: "str"}
        return _Bounds(kinds.get(tp, "any"), nullable=nullable or tp not in kinds)
    return _Bounds("any", nullable=True)


def _check_strategies(spec: StudySpec) -> None:
    """Names unique and resolvable; params known (did-you-mean), required ones present, values of the right kind.
    The registry (and through it torch and any user module) is imported only here, for the names the study uses."""
    from strategies import registry

    first_seen: dict[str, int] = {}
    for i, entry in enumerate(spec.strategies):
        path = f"strategies[{i}]"
        if entry.name in first_seen:
            raise SpecError(
                f"{path}.name", f"duplicate strategy {entry.name!r} (also strategies[{first_seen[entry.name]}])"
            )
        first_seen[entry.name] = i
        try:
            classes = registry.resolve(entry.name)
            defaults = registry.param_defaults(entry.name)
        except registry.UnknownStrategyError as exc:
            raise SpecError(f"{path}.name", str(exc)) from None
        except Exception as exc:  # a user module failing at import is a study-file problem too
            raise SpecError(
                f"{path}.name", f"cannot load strategy {entry.name!r}: {type(exc).__name__}: {exc}"
            ) from None
        for key, value in entry.params.items():
            if key not in defaults:
                known = ", ".join(sorted(defaults)) or "none"
                main = f"strategy {entry.name!r} has no parameter {key!r}"
                raise SpecError(f"{path}.params.{key}", _hinted(main, key, defaults, f"Its parameters: {known}"))
            bounds = _param_bounds(classes, key)
            if is_search(value):
                _check_space(value, f"{path}.params.{key}", bounds)
                continue
            if bounds.kind == "float" and isinstance(value, str) and _NUMBER_RE.match(value.strip()):
                entry.params[key] = value = float(value)
            problem = bounds.problem(value)
            if problem:
                raise SpecError(f"{path}.params.{key}", problem)
        for key, default in defaults.items():
            if default is dataclasses.MISSING and key not in entry.params:
                raise SpecError(f"{path}.params.{key}", f"is required by strategy {entry.name!r}")


def _resolve_optuna(spec: StudySpec) -> None:
    cfg = spec.optuna
    explicit = "objectives" in cfg.model_fields_set and cfg.objectives is not None
    objectives = cfg.objectives if explicit else [Objective(metric=spec.task.metric)]
    assert objectives is not None
    seen: dict[str, int] = {}
    for i, objective in enumerate(objectives):
        if objective.metric in seen:
            raise SpecError(f"optuna.objectives[{i}]", f"metric {objective.metric!r} is listed twice")
        seen[objective.metric] = i
        if objective.direction is None:
            objective.direction = METRIC_DIRECTIONS[objective.metric]  # type: ignore[assignment]
    cfg.objectives = list(objectives)
    if len(objectives) > 1:
        # Optuna cannot prune multi-objective studies (trial.report raises): the resolved config says so honestly
        cfg.pruner = "none"
        if cfg.sampler == "cmaes":
            raise SpecError("optuna.sampler", "cmaes supports one objective only; use nsga2, tpe, random or qmc")
    if cfg.sampler_seed is None:
        cfg.sampler_seed = spec.training.seed
    if cfg.study_name is None:
        cfg.study_name = spec.name
    if spec.tracking.experiment is None:
        spec.tracking.experiment = spec.name


def _absolutize_url(url: str, base_dir: Path) -> str:
    """Relative ``sqlite:///x.db``, ``journal:x.log`` and plain paths → absolute against the study file's folder, so
    resuming from another working directory finds the same study instead of silently starting a new one."""
    if url.startswith("journal:"):
        path = url[len("journal:") :]
        return "journal:" + os.path.abspath(base_dir / Path(path).expanduser())
    if url.startswith("sqlite:///"):
        rest, sep, query = url[len("sqlite:///") :].partition("?")
        if rest and not rest.startswith("/") and rest != ":memory:":
            return "sqlite:///" + os.path.abspath(base_dir / rest) + sep + query
        return url
    if "://" not in url and ":" not in url.split("/", 1)[0]:
        return os.path.abspath(base_dir / Path(url).expanduser())
    return url


def _resolve_locations(spec: StudySpec, output: str | None) -> None:
    if output is not None:
        spec.output = os.path.abspath(Path(output).expanduser())  # CLI: relative to the current directory
    elif spec.output is not None:
        spec.output = str(spec.resolve_path(spec.output))
    else:
        spec.output = os.path.abspath(Path("runs") / spec.name)
    out = Path(spec.output)
    if spec.optuna.storage is None:
        spec.optuna.storage = f"sqlite:///{out / 'optuna.db'}"
    else:
        spec.optuna.storage = _absolutize_url(spec.optuna.storage, spec.base_dir)
    if spec.tracking.uri is None:
        spec.tracking.uri = f"sqlite:///{out / 'mlflow.db'}"
    else:
        spec.tracking.uri = _absolutize_url(spec.tracking.uri, spec.base_dir)


SEARCHABLE_TRAINING_FIELDS: tuple[str, ...] = tuple(TrainingConfig.SEARCHABLE)
"""The ``training`` fields that may be search entries."""
