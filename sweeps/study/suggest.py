"""One trial's configuration, sampled from the study's conditional search space (names: see
:mod:`sweeps.config.search_space`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import optuna

from sweeps.config.schema import StudySpec, TrainingConfig
from sweeps.config.search_space import (
    STRATEGY_PARAM,
    head_param_name,
    param_name,
    strategy_training,
    training_param_name,
)
from sweeps.config.spaces import FloatSpace, IntSpace, SearchSpace, is_search


@dataclass
class TrialParams:
    """What one trial trains with.

    ``strategy_params`` holds every hyperparameter of the chosen strategy (defaults, fixed values and sampled values),
    ready for :func:`strategies.registry.build_strategy` and for logging; ``training`` is the study's training
    section with every searched field replaced by its sampled value (so the trial reads plain values, typed);
    ``head`` the trial's ``task.head`` as plain values (``None`` without one; see
    :meth:`~sweeps.config.HeadConfig.resolve`); ``searched`` only the sampled values, by Optuna name (what the sampler
    actually chose, as Optuna stores it: ``head.hidden`` is the JSON text of the list).
    """

    strategy: str
    training: TrainingConfig
    strategy_params: dict[str, Any] = field(default_factory=dict)
    searched: dict[str, Any] = field(default_factory=dict)
    head: dict[str, Any] | None = None

    def config_key(self) -> str:
        """A hash of everything the trial trains with (strategy, its params, the whole training section, seed
        included, and the head when the study declares one): two trials with the same key would train the same
        model, so the second is not trained again."""
        training = self.training.model_dump(mode="json")
        parts: list[Any] = [self.strategy, self.strategy_params, training]
        if self.head is not None:
            parts.append(self.head)
        text = json.dumps(parts, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _suggest_one(trial: optuna.Trial, name: str, space: SearchSpace) -> Any:
    """The value Optuna samples (and stores) for ``name``; a categorical's is decoded by the caller."""
    if isinstance(space, IntSpace):
        return trial.suggest_int(name, space.low, space.high, step=space.step, log=space.log)
    if isinstance(space, FloatSpace):
        return trial.suggest_float(name, space.low, space.high, step=space.step, log=space.log)
    return trial.suggest_categorical(name, space.optuna_choices())


def _suggest_value(trial: optuna.Trial, name: str, space: SearchSpace, searched: dict[str, Any]) -> Any:
    """Sample ``name``, record what Optuna stored in ``searched`` and return the value the trial uses."""
    stored = searched[name] = _suggest_one(trial, name, space)
    return space.decode(stored) if not isinstance(space, (IntSpace, FloatSpace)) else stored


def suggest_head(trial: optuna.Trial, spec: StudySpec, searched: dict[str, Any]) -> dict[str, Any] | None:
    """The trial's ``task.head`` as plain values, its searched fields sampled as ``head.<field>``."""
    head = spec.task.head
    if head is None:
        return None
    values = {}
    for key, space in head.searched().items():
        values[key] = _suggest_value(trial, head_param_name(key), space, searched)
    return head.resolve(values)


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
            params[key] = _suggest_value(trial, name, value, searched)
        else:
            params[key] = value
    sampled: dict[str, Any] = {}
    for key, value in strategy_training(spec, entry).items():
        if is_search(value):
            name = training_param_name(spec, entry, key)
            sampled[key] = _suggest_value(trial, name, value, searched)
        elif key in entry.training:  # the strategy's own fixed value
            sampled[key] = value
    training = spec.training.model_copy(update=sampled)
    head = suggest_head(trial, spec, searched)
    return TrialParams(strategy=entry.name, strategy_params=params, training=training, searched=searched, head=head)
