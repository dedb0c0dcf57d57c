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
from sweeps.config.search_space import STRATEGY_PARAM, param_name, strategy_training, training_param_name
from sweeps.config.spaces import FloatSpace, IntSpace, SearchSpace, is_search


@dataclass
class TrialParams:
    """What one trial trains with.

    ``strategy_params`` holds every hyperparameter of the chosen strategy (defaults, fixed values and sampled values),
    ready for :func:`strategies.registry.build_strategy` and for logging; ``training`` is the study's training
    section with every searched field replaced by its sampled value (so the trial reads plain values, typed);
    ``searched`` only the sampled values, by Optuna name (what the sampler actually chose).
    """

    strategy: str
    training: TrainingConfig
    strategy_params: dict[str, Any] = field(default_factory=dict)
    searched: dict[str, Any] = field(default_factory=dict)

    def config_key(self) -> str:
        """A hash of everything the trial trains with (strategy, its params, the whole training section, seed
        included): two trials with the same key would train the same model, so the second is not trained again."""
        training = self.training.model_dump(mode="json")
        text = json.dumps([self.strategy, self.strategy_params, training], sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


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
    sampled: dict[str, Any] = {}
    for key, value in strategy_training(spec, entry).items():
        if is_search(value):
            name = training_param_name(spec, entry, key)
            sampled[key] = searched[name] = _suggest_one(trial, name, value)
        elif key in entry.training:  # the strategy's own fixed value
            sampled[key] = value
    training = spec.training.model_copy(update=sampled)
    return TrialParams(strategy=entry.name, strategy_params=params, training=training, searched=searched)
