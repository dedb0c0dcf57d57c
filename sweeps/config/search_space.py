"""The search space as Optuna sees it: parameter names, the grid, and the layer-count check.

The space is *conditional*: a trial first picks a strategy (``"strategy"``, a categorical over the
study's strategy names, skipped when there is only one), then samples only that strategy's
hyperparameters, named ``"<strategy>.<param>"`` so two strategies' ``n`` never share a distribution.
Searched training fields are per strategy too, ``"<strategy>.training.<field>"`` (``"training.<field>"``
in a one-strategy study): each strategy's learning rate is learned from its own trials only, so a
frozen-body strategy is never sampled at the LR that suits full fine-tuning. Searched ``task.head`` fields are
``"head.<field>"`` (a list-valued ``hidden`` choice is stored as its JSON text). Keeping the names stable
is what makes ``study.enqueue_trial``, resumed studies and the MLflow params line up.
"""

from __future__ import annotations

import math
from typing import Any

from sweeps.config.schema import StudySpec
from sweeps.config.spaces import CategoricalSpace, FloatSpace, IntSpace, SearchSpace, is_search
from sweeps.errors import SpecError

STRATEGY_PARAM = "strategy"


MAX_GRID_VALUES = 10_000  # values of one grid dimension


MAX_GRID_SIZE = 1_000_000  # combinations: Optuna's GridSampler materialises them all


def param_name(strategy: str, param: str) -> str:
    """The Optuna name of a strategy hyperparameter."""
    return f"{strategy}.{param}"


def training_param_name(spec: StudySpec, entry: Any, field: str) -> str:
    """The Optuna name of a searched training field for one strategy entry (see the module docstring). The grid
    sampler enumerates every combination anyway, so there a field the strategy does not override keeps the shared
    name ``training.<field>`` (one grid dimension, not one per strategy)."""
    if len(spec.strategies) == 1 or (spec.optuna.sampler == "grid" and field not in entry.training):
        return f"training.{field}"
    return f"{entry.name}.training.{field}"


def head_param_name(field: str) -> str:
    """The Optuna name of a searched ``task.head`` field: ``head.<field>``, shared by every strategy (the head is the
    task's model, not a strategy's setting; the per-strategy TPE groups still learn it from their own trials)."""
    return f"head.{field}"


def strategy_training(spec: StudySpec, entry: Any) -> dict[str, Any]:
    """Every training field one strategy trains with: the top-level section with the strategy's resolved
    ``training:`` block (its own values and defaults, see :mod:`sweeps.config.load`) on top."""
    fields = {key: getattr(spec.training, key) for key in type(spec.training).model_fields}
    return {**fields, **entry.training}


_LAYER_BOUNDED_FALLBACK = ("n", "start_frozen")
"""The built-ins' layer-bounded parameters (``bottom_n.n``, ``gradual.start_frozen``), assumed for a strategy class
that does not declare ``layer_bounded_params`` yet."""


def layer_bounded_params(name: str) -> tuple[str, ...]:
    """The hyperparameters of strategy ``name`` (possibly composed) whose values count layers, as each class declares
    them in ``layer_bounded_params``; a class without that declaration gets the built-ins' names it has."""
    from strategies import registry

    out: list[str] = []
    for cls in registry.resolve(name):
        declared = getattr(cls, "layer_bounded_params", None)
        if declared is None:
            declared = tuple(p for p in _LAYER_BOUNDED_FALLBACK if p in cls.param_defaults())
        out.extend(p for p in declared if p not in out)
    return tuple(out)


def check_strategy_bounds(spec: StudySpec, num_layers: int) -> None:
    """Raise :class:`SpecError` when a layer-count hyperparameter (:func:`layer_bounded_params`: ``n``,
    ``start_frozen``, ...) can exceed the model's ``num_layers`` anywhere in its range, before any trial starts —
    otherwise only the trials that happen to sample the bad values fail, which looks like flakiness."""
    for i, entry in enumerate(spec.strategies):
        for key in layer_bounded_params(entry.name):
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
        return space.optuna_choices()
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
    for i, entry in enumerate(spec.strategies):
        for key, value in strategy_training(spec, entry).items():
            if is_search(value):
                where = f"strategies[{i}].training.{key}" if key in entry.training else f"training.{key}"
                grid[training_param_name(spec, entry, key)] = _grid_values(value, where)
    if spec.task.head is not None:
        for key, value in spec.task.head.searched().items():
            grid[head_param_name(key)] = _grid_values(value, f"task.head.{key}")
    size = math.prod(len(v) for v in grid.values())
    if size > MAX_GRID_SIZE:
        raise SpecError("optuna.sampler", f"the grid has {size} combinations (max {MAX_GRID_SIZE}); narrow it")
    return grid
