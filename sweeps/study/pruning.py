"""Pruning that judges each trial against its own strategy's trials.

Optuna's median and successive-halving pruners compare a trial's intermediate value with every other trial's at the
same epoch. In a freezing study that is unfair by construction: a frozen-body trial (a fresh head on a frozen encoder)
typically trails full fine-tuning after epoch 1 and catches up later, so a shared median prunes it for what it freezes,
not for how well it was tuned. :class:`PerStrategyPruner` hands the inner pruner a view of the study that holds only
the trials of the same strategy, so "worse than the median" means worse than *its own kind*.

Hyperband builds its bracket studies from the storage itself and cannot be given a filtered view; with it, trials are
compared across strategies as before (documented in the README).
"""

from __future__ import annotations

from collections.abc import Container

import optuna
from optuna.trial import FrozenTrial, TrialState

STRATEGY_ATTR = "strategy"


def strategy_of(trial: FrozenTrial) -> str | None:
    """The strategy a trial trains (user attribute set before training; the sampled param as a fallback)."""
    return trial.user_attrs.get(STRATEGY_ATTR) or trial.params.get(STRATEGY_ATTR)


class _StrategyView(optuna.study.Study):
    """The study as the pruner should see it: only trials of one strategy."""

    def __init__(self, study: optuna.Study, strategy: str | None) -> None:
        super().__init__(study_name=study.study_name, storage=study._storage, sampler=study.sampler)
        self._strategy = strategy

    def get_trials(
        self, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        trials = super().get_trials(deepcopy=deepcopy, states=states)
        return [t for t in trials if strategy_of(t) == self._strategy]


class PerStrategyPruner(optuna.pruners.BasePruner):
    """Wrap ``inner`` so that it only compares trials of the same strategy (see the module docstring)."""

    def __init__(self, inner: optuna.pruners.BasePruner) -> None:
        self._inner = inner

    @property
    def inner(self) -> optuna.pruners.BasePruner:
        return self._inner

    def __repr__(self) -> str:
        return f"PerStrategyPruner({self._inner!r})"

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        if isinstance(self._inner, optuna.pruners.HyperbandPruner):
            return self._inner.prune(study, trial)
        return self._inner.prune(_StrategyView(study, strategy_of(trial)), trial)
