"""What a finished trial leaves behind: its final metrics and attributes, MLflow artifacts, files in the study folder,
and (for the best trial only) its saved model.

Names and paths come from :mod:`sweeps.records`; the report and ``predict`` read them from there too.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
import pandas as pd

from sweeps.health import trial_health
from sweeps.records import (
    Artifact,
    Tag,
    TrialAttr,
    best_model_pointer,
    epochs_file,
    metric_attr,
    predictions_file,
    trial_metrics,
    trial_model_dir,
)
from sweeps.report.verdict import best_trial_number
from sweeps.track import Tracker

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from sweeps.train import EpochResult, TrialOutcome


def remove_dir(path: Path | None) -> None:
    """Delete a trial's saved model folder (a pruned, failed or not-best trial keeps none)."""
    if path is not None and path.exists():
        shutil.rmtree(path, ignore_errors=True)


def write_epochs(out: Path, number: int, results: list[EpochResult]) -> list[dict[str, Any]]:
    """Per-epoch series in the study folder (the report's learning curves; pruned trials too)."""
    epochs = [
        {"epoch": e.epoch, **e.metrics, **{f"lr/{k}": v for k, v in e.learning_rates.items()}} for e in results
    ]
    path = epochs_file(out, number)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(epochs, indent=1))
    return epochs


def record_outcome(
    trial: optuna.Trial,
    tracker: Tracker,
    run_id: str | None,
    outcome: TrialOutcome,
    *,
    out: Path,
    label_names: list[str],
    out_of_fold: bool,
) -> None:
    """Final metrics (MLflow and the trial's attributes), the freeze proof, cache statistics, the layer table, the
    confusion matrix, the per-epoch series and the predictions of a completed trial."""
    last = len(outcome.epochs) - 1
    final = dict(outcome.metrics)
    tracker.log_metrics(run_id, final, step=max(last, 0))
    for k, v in outcome.metrics.items():
        trial.set_user_attr(metric_attr(k), v)
    trial.set_user_attr(TrialAttr.FROZEN_VERIFIED, outcome.frozen_params_verified)
    health = trial_health(outcome.eval_labels, outcome.eval_probs.argmax(-1), len(label_names))
    trial.set_user_attr(TrialAttr.LEARNED, health.learned)
    trial.set_user_attr(TrialAttr.DEGENERATE, health.degenerate)
    trial.set_user_attr(TrialAttr.CHANCE_RATE, health.majority_rate)
    trial.set_user_attr(TrialAttr.DEAD_CLASSES, ", ".join(label_names[i] for i in health.dead_classes))
    trial.set_user_attr(TrialAttr.CACHE_WARM, outcome.cache_stats.get("cache_hit") is True)
    tags = {
        Tag.FROZEN_VERIFIED: str(outcome.frozen_params_verified).lower(),
        Tag.LEARNED: str(health.learned).lower(),
        Tag.DEGENERATE: str(health.degenerate).lower(),
    }
    for k, v in outcome.cache_stats.items():
        if isinstance(v, (int, float, str, bool)):
            tags[Tag.CACHE_PREFIX + k] = v
    tracker.set_tags(run_id, tags)
    tracker.log_text(run_id, outcome.layer_table_text, Artifact.LAYER_GROUPS_TEXT)
    tracker.log_json(run_id, outcome.layer_table, Artifact.LAYER_GROUPS_JSON)
    tracker.log_json(run_id, {"labels": label_names, "matrix": outcome.confusion.tolist()}, Artifact.CONFUSION_MATRIX)
    epochs = write_epochs(out, trial.number, outcome.epochs)
    tracker.log_json(run_id, epochs, Artifact.EPOCHS)
    path = predictions_file(out, trial.number, out_of_fold)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_predictions(path, outcome, label_names)
    tracker.log_file(run_id, path, Artifact.PREDICTIONS)


def keep_if_best(
    study: optuna.Study, tracker: Tracker, number: int, run_id: str | None, *, out: Path, max_length: int
) -> None:
    """Keep the saved model of the best trial only (by the report's one ranking rule,
    :func:`sweeps.report.verdict.best_trial_number`); remove the others."""
    model_dir = trial_model_dir(out, number)
    best = best_trial_number(study)
    if best is None:
        return
    pointer = best_model_pointer(out)
    previous = json.loads(pointer.read_text()).get("trial") if pointer.exists() else None
    if best != number:
        remove_dir(model_dir)
        return
    tmp = pointer.with_suffix(".tmp")
    tmp.write_text(
        json.dumps({"trial": number, "path": model_dir.name, "mlflow_run_id": run_id, "max_length": max_length})
    )
    os.replace(tmp, pointer)
    if previous is not None and previous != number:
        remove_dir(trial_model_dir(out, previous))
    if run_id and model_dir.exists():
        tracker.set_tags(run_id, {Tag.BEST_MODEL: "true"})
        _log_model(tracker, run_id, model_dir)


def _log_model(tracker: Tracker, run_id: str, model_dir: Path) -> None:
    """The best model as an MLflow transformers model (a Logged Model); the plain folder if the flavour fails
    (CV trials save one folder per fold, which is no single pipeline)."""
    try:
        if (model_dir / "config.json").exists():
            uri = tracker.log_transformers_model(run_id, model_dir, Artifact.MODEL)
            tracker.set_tags(run_id, {Tag.MODEL_URI: uri or ""})
            return
    except Exception as exc:
        log.warning("best model not logged with the MLflow transformers flavour (%s); logging the folder", exc)
    tracker.log_dir(run_id, model_dir, Artifact.MODEL)


def log_best_to_parent(study: optuna.Study, tracker: Tracker, parent_run_id: str | None) -> None:
    """The best trial's metrics, number, strategy and parameters on the parent run, refreshed after each trial."""
    if not parent_run_id:
        return
    number = best_trial_number(study)
    if number is None:
        return
    best = study.trials[number]
    complete = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.get_trials(deepcopy=False))
    try:
        tracker.log_best(
            parent_run_id, number, str(best.user_attrs.get(TrialAttr.STRATEGY, "?")),
            {k: v for k, v in best.params.items() if k != "strategy"}, trial_metrics(best.user_attrs), step=complete,
        )
    except Exception as exc:  # the study's record is Optuna's; the parent run is a view of it
        log.warning("best trial %s not logged to the MLflow parent run: %s", number, exc)


def _write_predictions(path: Path, outcome: TrialOutcome, label_names: list[str]) -> None:
    probs = outcome.eval_probs
    frame = pd.DataFrame(probs, columns=[f"prob_{n}" for n in label_names])
    frame.insert(0, "example_id", outcome.oof_index if outcome.oof_index is not None else np.arange(len(probs)))
    frame.insert(1, "label", [label_names[i] for i in outcome.eval_labels])
    frame.insert(2, "prediction", [label_names[i] for i in probs.argmax(-1)])
    frame.to_csv(path, index=False)
