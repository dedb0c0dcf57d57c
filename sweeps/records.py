"""Where a study's facts are recorded: Optuna user attributes, MLflow tags and artifacts, files in the study folder.

One owner for every name, because the runner writes them and recovery, the report, the CLI summary, the notebook API
and the tests read them; a name spelled in two places drifts. The MLflow tags and the metric names are also a
documented contract (README, "Looking at results in the MLflow UI").
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


class TrialAttr:
    """User attributes of an Optuna trial."""

    STRATEGY = "strategy"
    HOST = "host"
    PID = "pid"
    MLFLOW_RUN = "mlflow_run_id"
    FAIL_REASON = "fail_reason"  # always recorded before our own FAIL: a FAIL without it was failed from outside
    INTERRUPTED = "interrupted"  # Ctrl-C: does not use up n_trials
    WORKER_DIED = "worker_died"  # recovered from a dead worker: does not use up n_trials
    SURPLUS = "surplus"  # asked after other workers had used up n_trials, closed at once: not a trial
    RETRY_OF = "retry_of"  # on a re-enqueued trial: the number of the trial whose worker died
    ATTEMPT = "attempt"  # on a re-enqueued trial: 1 for the first retry
    FROZEN_VERIFIED = "frozen_params_verified"
    METRIC_PREFIX = "metric."  # final metrics: ``metric.accuracy``, ...
    SEED = "seed"  # the training.seed the trial trained with
    PRECISION = "precision"  # the compute precision it trained at (``auto`` resolved on its machine)
    CONFIG_KEY = "config_key"  # hash of everything it trained with: equal keys train the same model
    DUPLICATE_OF = "duplicate_of"  # not trained: the same configuration as that completed trial
    CONFIRM_OF = "confirm_of"  # confirmation phase: retrains that search trial's configuration ...
    CONFIRM_SEED = "confirm_seed"  # ... with this seed
    LEARNED = "learned"  # accuracy above the chance band (sweeps.health)
    DEGENERATE = "degenerate"  # some validation class never predicted correctly
    CHANCE_RATE = "chance_rate"  # majority-class rate of the evaluation rows
    DEAD_CLASSES = "dead_classes"  # names of the classes with zero recall
    CACHE_WARM = "cache_warm"  # the activation cache was already built when the trial started


class StudyAttr:
    """User attributes of the Optuna study."""

    FINGERPRINT = "spec_fingerprint"  # what makes trials comparable; a different one refuses to resume
    OBJECTIVES = "objectives"  # metric names, so the report needs no study file
    MLFLOW_PARENT = "mlflow_parent_run_id"
    LAST_SURPLUS = "_last_surplus"
    LABELS = "labels"  # label names in id order (the report reads predictions files with them)
    PHASES_PREFIX = "phases."  # ``phases.<trial number>``: that trial's wall seconds by phase (sweeps.phases)
    TEST_PREFIX = "test."  # ``test.<trial number>``: a finalist's held-out test metrics (finished trials are frozen)


class Tag:
    """MLflow run tags (a documented contract: users filter and group by them)."""

    STUDY = "sweeps.study"
    STRATEGY = "sweeps.strategy"
    STATUS = "sweeps.status"  # running | complete | pruned | failed | duplicate
    HOST = "sweeps.host"
    ROLE = "sweeps.role"  # study | trial
    FAIL_REASON = "sweeps.fail_reason"
    PRUNE_REASON = "sweeps.prune_reason"
    BEST_MODEL = "sweeps.best_model"
    MODEL_URI = "sweeps.model_uri"  # the best trial's MLflow Logged Model (models:/<id>)
    BEST_PREFIX = "sweeps.best."  # on the parent run: trial, strategy, param.<name> of the best trial so far
    TRIAL_NUMBER = "optuna.trial_number"
    FROZEN_VERIFIED = "frozen_params_verified"
    DUPLICATE_OF = "sweeps.duplicate_of"  # status duplicate: not trained, the same configuration as that trial
    LEARNED = "sweeps.learned"  # false: at or below chance, never evidence against its strategy
    DEGENERATE = "sweeps.degenerate"  # true: some class is never predicted
    PARENT_RUN = "mlflow.parentRunId"  # MLflow's own tag for nested runs
    CACHE_PREFIX = "cache."  # activation-cache statistics of the trial


class Artifact:
    """MLflow artifact paths of the study's parent run and of each trial run."""

    STUDY_YAML = "study.yaml"
    LAYER_GROUPS_TEXT = "layer_groups.txt"
    LAYER_GROUPS_JSON = "layer_groups.json"
    CONFUSION_MATRIX = "confusion_matrix.json"
    EPOCHS = "epochs.json"
    PREDICTIONS = "predictions"
    MODEL = "model"
    REPORT = "report"


def metric_attr(name: str) -> str:
    """The trial user attribute holding the final value of metric ``name``."""
    return TrialAttr.METRIC_PREFIX + name


def trial_metrics(user_attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The final metrics recorded on a trial, by metric name (values as stored)."""
    prefix = TrialAttr.METRIC_PREFIX
    return {k[len(prefix) :]: v for k, v in user_attrs.items() if k.startswith(prefix)}


# -- the study folder ----------------------------------------------------------------------------------------------
def models_dir(out: Path) -> Path:
    return out / "models"


def trial_model_dir(out: Path, number: int) -> Path:
    """Where trial ``number`` saves its model (with cross-validation: one ``fold_<k>/`` per fold)."""
    return models_dir(out) / f"trial_{number}"


class SavedModel:
    """Files of a saved factory / ``task.head`` model (rebuilt by :mod:`sweeps.train.custom_models`)."""

    MANIFEST = "sweeps_model.json"  # how to rebuild it: the factory or the head, and the labels
    WEIGHTS = "model.safetensors"  # its state_dict


def best_model_pointer(out: Path) -> Path:
    """``best.json``: which trial's model is the best one (written by the runner, read by ``predict``)."""
    return models_dir(out) / "best.json"


def epochs_file(out: Path, number: int) -> Path:
    """Trial ``number``'s per-epoch series (the report's learning curves; pruned trials too)."""
    return out / "trials" / f"trial_{number}_epochs.json"


def predictions_file(out: Path, number: int, out_of_fold: bool) -> Path:
    """Trial ``number``'s predictions on the validation split, or out-of-fold with cross-validation."""
    return out / "predictions" / f"trial_{number}_{'oof' if out_of_fold else 'validation'}.csv"


def report_dir(out: Path) -> Path:
    return out / "report"


def phases_file(out: Path, host: str, pid: int) -> Path:
    """One process's time by phase (:mod:`sweeps.phases`); several workers write one file each."""
    return out / "phases" / f"{host}-{pid}.json"


def tokenized_cache_dir(out: Path) -> Path:
    return out / "cache" / "tokenized"


def activation_cache_dir(out: Path) -> Path:
    return out / "cache" / "activations"


def default_storage_url(out: Path) -> str:
    """The Optuna storage when the study file names none: SQLite in the study folder."""
    return f"sqlite:///{out / 'optuna.db'}"


def default_tracking_uri(out: Path) -> str:
    """The MLflow tracking store when the study file names none: SQLite in the study folder."""
    return f"sqlite:///{out / 'mlflow.db'}"
