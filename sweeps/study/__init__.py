"""The Optuna study: storage, sampler and pruner, dead-trial recovery, and the runner that asks trials, hands them to
:mod:`sweeps.train` and records how each ended in Optuna and MLflow.

Pruning and tracking decisions are made here, from the epochs the training loop reports; the loop never raises
``optuna.TrialPruned`` and never logs.
"""

from sweeps.study.recovery import budget_used, close_orphan_runs, counts_toward_budget, recover_dead_trials
from sweeps.study.runner import StudyRunner, TrialReport
from sweeps.study.storage import database_url, open_storage, open_study, storage_lock, storage_url
from sweeps.study.suggest import TrialParams, suggest

__all__ = [
    "StudyRunner",
    "TrialParams",
    "TrialReport",
    "budget_used",
    "close_orphan_runs",
    "counts_toward_budget",
    "database_url",
    "open_storage",
    "open_study",
    "recover_dead_trials",
    "storage_lock",
    "storage_url",
    "suggest",
]
