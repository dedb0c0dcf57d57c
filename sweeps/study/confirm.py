"""The confirmation phase: retrain the finalists with further seeds, so a difference can be told from seed noise.

After the search budget is used, the best configuration of each of the ``optuna.confirm.top_k`` best strategies (and
always the best ``none``: the baseline must be as well measured as what it is compared with) is enqueued again with
new seeds until it has ``seeds`` completed seeds in all. Confirmation trials are ordinary Optuna trials — so they
survive kills, are shared by workers and are recorded in MLflow like any other — marked with the user attributes
below; they do not count toward ``n_trials``. Selection of finalists happens once per study, under the storage lock,
from the search trials only (a lucky confirmation seed cannot promote its own configuration).
"""

from __future__ import annotations

from typing import Any

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from sweeps.records import TrialAttr

CONFIRM_OF = TrialAttr.CONFIRM_OF
CONFIRM_SEED = TrialAttr.CONFIRM_SEED
BASELINE = "none"


def is_confirmation(trial: FrozenTrial | optuna.Trial) -> bool:
    return trial.user_attrs.get(CONFIRM_OF) is not None


def confirmation_seed(trial: FrozenTrial | optuna.Trial) -> int | None:
    seed = trial.user_attrs.get(CONFIRM_SEED)
    return None if seed is None else int(seed)


def choose_finalists(
    trials: list[FrozenTrial], metric_of: Any, direction: str, top_k: int, strategy_of: Any
) -> list[FrozenTrial]:
    """The best completed search trial of each of the ``top_k`` best strategies, plus the best ``none``.

    ``metric_of(trial)`` gives the ranked metric (or None), ``strategy_of(trial)`` the strategy. Ties within a
    strategy go to the earlier trial; the strategies are ordered by their best trial.
    """
    rows = []
    for t in trials:
        value = metric_of(t)
        if t.state != TrialState.COMPLETE or is_confirmation(t) or value is None:
            continue
        if t.user_attrs.get(TrialAttr.DUPLICATE_OF) is not None:
            continue
        rows.append({"number": t.number, "strategy": strategy_of(t), "value": float(value)})
    if not rows:
        return []
    table = pd.DataFrame(rows).sort_values(["value", "number"], ascending=[direction == "minimize", True])
    best = table.drop_duplicates("strategy", keep="first")
    chosen = list(best["number"].head(top_k))
    baseline = best[best["strategy"] == BASELINE]
    if len(baseline) and int(baseline["number"].iloc[0]) not in chosen:
        chosen.append(int(baseline["number"].iloc[0]))
    by_number = {t.number: t for t in trials}
    return [by_number[int(n)] for n in chosen]


def missing_seeds(trials: list[FrozenTrial], finalist: FrozenTrial, seeds: int, base_seed: int) -> list[int]:
    """Seeds still to train for ``finalist``: ``seeds`` in all, the search trial's own seed included. A
    confirmation trial that is waiting, running or complete holds its seed; a failed or interrupted one does not."""
    held = {
        confirmation_seed(t)
        for t in trials
        if t.user_attrs.get(CONFIRM_OF) == finalist.number
        and t.state in (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE)
    }
    wanted = [base_seed + k for k in range(1, seeds)]
    return [s for s in wanted if s not in held]


def enqueue_confirmations(study: optuna.Study, finalists: list[FrozenTrial], seeds: int) -> int:
    """Enqueue the missing confirmation trials; returns how many were added. Call under the study's storage lock.
    Seeds follow the finalist's own (recorded as its ``seed`` attribute): seed + 1, seed + 2, ..."""
    trials = study.get_trials(deepcopy=False)
    added = 0
    for finalist in finalists:
        base_seed = int(finalist.user_attrs.get(TrialAttr.SEED, 0))
        for seed in missing_seeds(trials, finalist, seeds, base_seed):
            study.enqueue_trial(dict(finalist.params), user_attrs={CONFIRM_OF: finalist.number, CONFIRM_SEED: seed})
            added += 1
    return added
