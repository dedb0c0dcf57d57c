"""From a :class:`~sweeps.spec.StudySpec` to Optuna suggestions.

The search space is *conditional*: a trial first picks a strategy (``"strategy"``, a categorical over the study's
strategy names, skipped when there is only one), then samples only that strategy's hyperparameters, named
``"<strategy>.<param>"`` so two strategies' ``n`` never share a distribution; searchable training fields are named
``"training.<field>"``. Keeping the names stable is what makes ``study.enqueue_trial``, resumed studies and the
MLflow params line up.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import optuna

from sweeps.errors import SpecError
from sweeps.spec import CategoricalSpace, FloatSpace, IntSpace, SearchSpace, StudySpec, is_search

__all__ = [
    "MAX_GRID_SIZE",
    "MAX_GRID_VALUES",
    "STRATEGY_PARAM",
    "TrialParams",
    "check_strategy_bounds",
    "grid_search_space",
    "param_name",
    "search_bounds",
    "suggest",
]

STRATEGY_PARAM = "strategy"
MAX_GRID_VALUES = 10_000  # values of one grid dimension
MAX_GRID_SIZE = 1_000_000  # combinations: Optuna's GridSampler materialises them all


def param_name(strategy: str, param: str) -> str:
    """The Optuna name of a strategy hyperparameter."""
    return f"{strategy}.{param}"


@dataclass
class TrialParams:
    """What one trial trains with.

    ``strategy_params`` holds every hyperparameter of the chosen strategy (defaults, fixed values and sampled values),
    ready for :func:`strategies.registry.build_strategy` and for logging; ``training`` is the complete training
    section with searched fields replaced by their sampled values; ``searched`` only the sampled values, by Optuna
    name (what the sampler actually chose).
    """

    strategy: str
    strategy_params: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    searched: dict[str, Any] = field(default_factory=dict)


def _suggest_one(trial: optuna.Trial, name: str, space: SearchSpace) -> Any:
    if isinstance(space, IntSpace):
        return trial.suggest_int(name, space.low, space.high, step=space.step, log=space.log)
    if isinstance(space, FloatSpace):
        return trial.suggest_float(name, space.low, space.high, step=space.step, log=space.log)
    return trial.suggest_categorical(name, list(space.choices))


def suggest(trial: optuna.Trial, spec: StudySpec) -> TrialParams:
    """Sample one trial's configuration (see the module docstring for the names)."""
    from strategies.registry import param_defaults

    searched: dict[str, Any] = {}
    names = spec.strategy_names
    if len(names) > 1:
        chosen = trial.suggest_categorical(STRATEGY_PARAM, names)
        searched[STRATEGY_PARAM] = chosen
    else:
        chosen = names[0]
    entry = spec.strategies[names.index(chosen)]
    params = {k: v for k, v in param_defaults(entry.name).items() if v is not dataclasses.MISSING}
    for key, value in entry.params.items():
        if is_search(value):
            name = param_name(entry.name, key)
            params[key] = searched[name] = _suggest_one(trial, name, value)
        else:
            params[key] = value
    training = spec.training.model_dump()
    for key in training:
        value = getattr(spec.training, key)
        if is_search(value):
            name = f"training.{key}"
            training[key] = searched[name] = _suggest_one(trial, name, value)
    return TrialParams(strategy=entry.name, strategy_params=params, training=training, searched=searched)


def search_bounds(spec: StudySpec) -> dict[str, tuple[Any, Any] | list[Any]]:
    """Every strategy hyperparameter the study sets, by Optuna name: ``(low, high)`` for a range, the list of choices
    for a categorical, ``[value]`` for a fixed value. Lets the runner check ranges against the model once it is
    loaded (the study file cannot know how many layers a model has)."""
    out: dict[str, tuple[Any, Any] | list[Any]] = {}
    for entry in spec.strategies:
        for key, value in entry.params.items():
            out[param_name(entry.name, key)] = _bounds_of(value)
    return out


def _bounds_of(value: Any) -> tuple[Any, Any] | list[Any]:
    if isinstance(value, (IntSpace, FloatSpace)):
        return (value.low, value.high)
    if isinstance(value, CategoricalSpace):
        return list(value.choices)
    return [value]


def check_strategy_bounds(
    spec: StudySpec, num_layers: int, layer_params: tuple[str, ...] = ("n", "start_frozen")
) -> None:
    """Raise :class:`SpecError` when a layer-count hyperparameter (``n``, ``start_frozen``) can exceed the model's
    ``num_layers`` anywhere in its range, before any trial starts — otherwise only the trials that happen to sample
    the bad values fail, which looks like flakiness."""
    for i, entry in enumerate(spec.strategies):
        for key in layer_params:
            if key not in entry.params:
                continue
            path = f"strategies[{i}].params.{key}"
            value = entry.params[key]
            if isinstance(value, (IntSpace, FloatSpace)):
                if value.high > num_layers:
                    raise SpecError(path, f"high {value.high} > {num_layers} layers in the model")
                if value.low < 0:
                    raise SpecError(path, f"low {value.low} < 0")
                continue
            candidates = value.choices if isinstance(value, CategoricalSpace) else [value]
            label = "choice " if isinstance(value, CategoricalSpace) else ""
            for candidate in candidates:
                if isinstance(candidate, bool) or not isinstance(candidate, (int, float)):
                    continue  # None (e.g. start_frozen: all layers) and non-numbers are the strategy's to check
                if candidate > num_layers:
                    raise SpecError(path, f"{label}{candidate} > {num_layers} layers in the model")
                if candidate < 0:
                    raise SpecError(path, f"{label}{candidate} < 0")


def _grid_values(space: SearchSpace, path: str) -> list[Any]:
    if isinstance(space, CategoricalSpace):
        return list(space.choices)
    if isinstance(space, IntSpace):
        count = (space.high - space.low) // space.step + 1  # log ranges have step 1
        if count > MAX_GRID_VALUES:
            raise SpecError(
                path,
                f"the grid sampler would enumerate {count} values (max {MAX_GRID_VALUES}); "
                "use a larger step or choices: [...]",
            )
        return list(range(space.low, space.high + 1, space.step))
    if space.step is None:
        raise SpecError(path, "the grid sampler needs a step for a float range (or use choices: [...])")
    count = math.floor((space.high - space.low) / space.step + 1e-9) + 1
    if count > MAX_GRID_VALUES:
        raise SpecError(
            path,
            f"the grid sampler would enumerate {count} values (max {MAX_GRID_VALUES}); "
            "use a larger step or choices: [...]",
        )
    return [round(space.low + k * space.step, 12) for k in range(count)]


def grid_search_space(spec: StudySpec) -> dict[str, list[Any]]:
    """The ``search_space`` for :class:`optuna.samplers.GridSampler`, under the names :func:`suggest` uses.

    Every strategy's parameters are in the grid, even though a trial only suggests its own strategy's: GridSampler
    accepts that (those grid points are then simply repeated), and it keeps the grid a plain product.
    """
    grid: dict[str, list[Any]] = {}
    if len(spec.strategies) > 1:
        grid[STRATEGY_PARAM] = spec.strategy_names
    for i, entry in enumerate(spec.strategies):
        for key, value in entry.params.items():
            if is_search(value):
                grid[param_name(entry.name, key)] = _grid_values(value, f"strategies[{i}].params.{key}")
    for key in type(spec.training).model_fields:
        value = getattr(spec.training, key)
        if is_search(value):
            grid[f"training.{key}"] = _grid_values(value, f"training.{key}")
    size = math.prod(len(v) for v in grid.values())
    if size > MAX_GRID_SIZE:
        raise SpecError("optuna.sampler", f"the grid has {size} combinations (max {MAX_GRID_SIZE}); narrow it")
    return grid
