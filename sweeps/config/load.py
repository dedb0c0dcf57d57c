"""Loading: a study file (or plain data) → a validated :class:`~sweeps.config.StudySpec` with every default
resolved, once.

Why strict: a study runs for hours, so every mistake that can be found from the file alone is found before
the first trial. The pipeline is YAML (:mod:`~sweeps.config.yaml_io`) → ``--set`` overrides on the plain
data → pydantic models (``extra="forbid"``, strict types) → cross-field checks and default resolution
with explicit paths. Strategy names are resolved through :mod:`strategies.registry` only for the names the
study uses, so a ``my_pkg.mod:MyStrategy`` reference imports the user's module only when named.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from sweeps.config.fields import _NUMBER_RE, _Bounds, _describe, _hinted
from sweeps.config.model_fields import HeadConfig
from sweeps.config.overrides import apply_overrides
from sweeps.config.pydantic_errors import _spec_error_from, _union_members, _unwrap_annotated
from sweeps.config.schema import (
    EXTENSION_SOURCES,
    Objective,
    StudySpec,
    TrainingConfig,
    source_from_extension,
)
from sweeps.config.spaces import _check_space, is_search
from sweeps.config.yaml_io import _parse_yaml
from sweeps.errors import SpecError
from sweeps.metrics import direction
from sweeps.records import default_storage_url, default_tracking_uri


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
    _resolve_strategy_training(spec)
    _resolve_optuna(spec)
    _resolve_locations(spec, output)
    if spec.optuna.sampler == "grid":
        from sweeps.config.search_space import grid_search_space

        grid_search_space(spec)
    return spec


def _check_task(spec: StudySpec) -> None:
    _check_model_fields(spec)
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
    if spec.task.modality == "text" and data.has_images:
        key = "image_column" if data.image_column is not None else "source"
        raise SpecError(f"task.data.{key}", "configures images, but task.modality is text")
    if data.augment and not data.has_images and spec.task.modality != "image":
        raise SpecError("task.data.augment", "augments images; this task has no image_column or imagefolder source")
    if data.has_images:
        columns = {"image_column": data.image_column or "image", "label_column": data.label_column}
    else:
        columns = {"text_column": data.text_column, "label_column": data.label_column}
    for key in ("text_pair_column", "id_column"):
        if getattr(data, key) is not None:
            columns[key] = getattr(data, key)
    seen: dict[str, str] = {}
    for key, column in columns.items():
        if column in seen:
            raise SpecError(f"task.data.{key}", f"column {column!r} is already used as {seen[column]}")
        seen[column] = key


def _check_model_fields(spec: StudySpec) -> None:
    """A factory brings its own head and cannot name a tokenizer; a head needs a checkpoint's encoder."""
    task = spec.task
    if task.is_factory:
        if task.tokenizer is None:
            raise SpecError(
                "task.tokenizer",
                f"is required when task.model is a factory ({task.model!r}): a hub id, a local folder or "
                "'package:<name>' whose tokenizer turns the texts into the factory model's input_ids",
            )
        if task.head is not None:
            raise SpecError("task.head", "builds a head on a checkpoint's encoder; a factory model has its own head")
        if task.revision is not None:
            raise SpecError("task.revision", "is a hub revision of task.model; a factory has none")
    if task.head is not None:
        for field, bounds in HeadConfig.SEARCHABLE.items():
            value = getattr(task.head, field)
            if is_search(value):
                _check_space(value, f"task.head.{field}", bounds)


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


def _resolve_strategy_training(spec: StudySpec) -> None:
    """Each strategy's ``training:`` block, validated like ``training`` itself, with the strategy's own default
    search ranges (``Strategy.default_training``) filled in for the fields the study file sets nowhere.

    Precedence, most specific first: ``strategies[i].training`` > fields written in the top-level ``training`` >
    the strategy class's ``default_training`` > :class:`TrainingConfig`'s defaults. The result replaces
    ``entry.training`` (typed values and search entries), so resolution happens once, here.
    """
    from strategies import registry

    fields = TrainingConfig.model_fields
    explicit = spec.training.model_fields_set
    base = spec.training.model_dump(mode="json")
    for i, entry in enumerate(spec.strategies):
        path = f"strategies[{i}].training"
        for key in entry.training:
            if key not in fields:
                raise SpecError(f"{path}.{key}", _hinted(f"unknown training field {key!r}", key, fields))
        # the grid sampler enumerates fixed steps: log-range defaults have none, so a grid study uses its own
        defaults = {
            k: v
            for k, v in registry.default_training(entry.name).items()
            if k not in explicit and k in fields and spec.optuna.sampler != "grid"
        }
        raw = {**defaults, **entry.training}
        if not raw:
            continue
        try:
            merged = TrainingConfig.model_validate({**base, **raw})
        except ValidationError as exc:
            raise _spec_error_from(exc, {**base, **raw}, TrainingConfig, prefix=path) from None
        for field, bounds in TrainingConfig.SEARCHABLE.items():
            if field in raw and is_search(getattr(merged, field)):
                _check_space(getattr(merged, field), f"{path}.{field}", bounds)
        for key in raw:
            value = getattr(merged, key)
            if is_search(value) and key not in TrainingConfig.SEARCHABLE:
                raise SpecError(f"{path}.{key}", "cannot be searched")
        entry.training = {key: getattr(merged, key) for key in raw}


def shared_fixed_lr_warning(spec: StudySpec) -> str | None:
    """A warning when several strategies, some of them frozen-body ones, all train at one fixed learning rate: that
    LR suits at most one of them, so the comparison would judge the others at the wrong LR (lesson 6)."""
    if len(spec.strategies) < 2 or is_search(spec.training.learning_rate):
        return None
    shared = [e.name for e in spec.strategies if "learning_rate" not in e.training]
    if len(shared) < 2:
        return None
    return (
        f"training.learning_rate is fixed at {spec.training.learning_rate:g} for {', '.join(shared)}: a frozen "
        "encoder with a fresh head usually needs a far higher LR than full fine-tuning, so one fixed LR judges some "
        "of them at an LR that suits another. Remove it to use each strategy's default range, or give each strategy "
        "its own (strategies[i].training.learning_rate)."
    )


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
            objective.direction = direction(objective.metric)  # type: ignore[assignment]
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
        spec.optuna.storage = default_storage_url(out)
    else:
        spec.optuna.storage = _absolutize_url(spec.optuna.storage, spec.base_dir)
    if spec.tracking.uri is None:
        spec.tracking.uri = default_tracking_uri(out)
    else:
        spec.tracking.uri = _absolutize_url(spec.tracking.uri, spec.base_dir)
