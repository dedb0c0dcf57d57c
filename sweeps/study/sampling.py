"""The Optuna sampler and pruner a study file asks for.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from sweeps.config import StudySpec
from sweeps.errors import SpecError
from sweeps.study.pruning import PerStrategyPruner


def make_sampler(spec: StudySpec) -> optuna.samplers.BaseSampler:
    seed = spec.optuna.sampler_seed  # resolved by sweeps.config: training.seed unless given
    assert seed is not None
    name = spec.optuna.sampler
    if name == "tpe":
        startup = tpe_startup_trials(spec)
        return TrialSeededSampler(lambda s: _tpe(s, startup), seed)
    if name == "random":
        return TrialSeededSampler(lambda s: optuna.samplers.RandomSampler(seed=s), seed)
    if name == "grid":
        from sweeps.config.search_space import grid_search_space

        space = grid_search_space(spec)
        # one seed for every trial: GridSampler shuffles its grid with its seed and gives trial n the n-th point of that
        # order, so a per-trial seed gave each trial another order and proposed grid points already trained
        return TrialSeededSampler(lambda _: optuna.samplers.GridSampler(space, seed=seed), seed)
    if name == "cmaes":
        return TrialSeededSampler(lambda s: optuna.samplers.CmaEsSampler(seed=s), seed)
    if name == "nsga2":
        return TrialSeededSampler(lambda s: optuna.samplers.NSGAIISampler(seed=s), seed)
    if name == "qmc":  # its sequence position is kept in the study, so one seed (scramble) for every worker is right
        return optuna.samplers.QMCSampler(seed=seed)
    raise SpecError("optuna.sampler", f"unknown sampler {name!r}")


def tpe_startup_trials(spec: Any) -> int:
    """Random trials before TPE models: every strategy's first trial (the runner enqueues one each), and at least 5."""
    return max(len(spec.strategies), 5)


def _tpe(seed: int, startup: int) -> optuna.samplers.TPESampler:
    """Multivariate TPE with ``group=True``: the search space decomposes into one group per strategy (its own
    params and its own ``<strategy>.training.*`` fields), so each strategy's LR is modelled from that strategy's
    trials, jointly with its other hyperparameters (``n`` and LR are not independent)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # group=True is "experimental"
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=startup)


def trial_seed(seed: int, number: int) -> int:
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """A sampler re-created for every trial with a seed derived from (``seed``, trial number).

    A sampler seeded once per process replays the same random draws in every process: two workers on one study (or a
    resumed run) proposed identical parameters for different trial numbers — TPE's random start-up trials, the random
    sampler's every trial. Seeding from the trial number keeps a study reproducible (same file, same seed, same
    trials) while every trial of every worker gets its own draws. The samplers' state lives in the study storage, so
    building a fresh one per trial loses nothing.
    """

    def __init__(self, build: Callable[[int], optuna.samplers.BaseSampler], seed: int) -> None:
        self._build = build
        self._seed = seed
        self._sampler = build(seed)

    def __repr__(self) -> str:
        return f"TrialSeededSampler({self._sampler!r}, seed={self._seed})"

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self._sampler = self._build(trial_seed(self._seed, trial.number))
        self._sampler.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
        return self._sampler.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, search_space: Any) -> dict:
        return self._sampler.sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: optuna.trial.FrozenTrial, param_name: str, param_distribution: Any
    ) -> Any:
        return self._sampler.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, state: TrialState, values: Any) -> None:
        try:
            self._sampler.after_trial(study, trial, state, values)
        except RuntimeError as exc:
            # GridSampler calls study.stop() once the grid is exhausted, which raises outside study.optimize (the
            # runner uses ask/tell). The trial is already recorded; the runner stops on its own budget, and a grid
            # point asked again is skipped as a duplicate (several in a row end the search).
            if "Study.stop" not in str(exc):
                raise

    def reseed_rng(self) -> None:
        self._sampler.reseed_rng()


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    """The study file's pruner; with several strategies it judges each trial against its own strategy's trials only
    (:class:`~sweeps.study.pruning.PerStrategyPruner`): a frozen-body trial trails full fine-tuning after epoch 1 by
    construction, and a shared median would prune it for what it freezes."""
    pruner = _base_pruner(spec)
    if len(spec.strategies) > 1 and not isinstance(pruner, optuna.pruners.NopPruner):
        return PerStrategyPruner(pruner)
    return pruner


def _base_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    name = spec.optuna.pruner
    warmup = spec.optuna.pruner_warmup_epochs
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=warmup)
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, warmup))
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=spec.training.epochs)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise SpecError("optuna.pruner", f"unknown pruner {name!r}")
