"""Metric names and their directions (a contract), and the classification metrics themselves (scikit-learn).

The names below are what users build MLflow dashboards on; they are documented in the README and tested. This module
is their one owner: the study file's allowed ``task.metric`` and ``optuna.objectives``, the loop's best-epoch choice,
the pruner's direction and the report's ranking all read them from here.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

MAXIMIZE = "maximize"
MINIMIZE = "minimize"

QUALITY_METRICS = ("accuracy", "f1_macro", "f1_weighted", "eval_loss")
"""How good a model is: the metrics a study may optimise as ``task.metric`` (the rest measure what it costs)."""

DIRECTIONS: dict[str, str] = {
    "accuracy": MAXIMIZE,
    "f1_macro": MAXIMIZE,
    "f1_weighted": MAXIMIZE,
    "eval_loss": MINIMIZE,
    "train_loss": MINIMIZE,
    "epoch_time_s": MINIMIZE,
    "eval_time_s": MINIMIZE,
    "samples_per_s": MAXIMIZE,
    "peak_memory_mb": MINIMIZE,
    "trainable_params": MINIMIZE,  # the efficiency objective: fewer trainable parameters is better
}
"""Every per-epoch metric (besides ``lr/<group>``) with the direction in which it is better."""

OBJECTIVE_METRICS = (
    "accuracy",
    "f1_macro",
    "f1_weighted",
    "eval_loss",
    "epoch_time_s",
    "peak_memory_mb",
    "trainable_params",
    "samples_per_s",
)
"""The metrics an entry of ``optuna.objectives`` may name."""

BEST_EPOCH_METRICS = (*QUALITY_METRICS, "train_loss")
"""Final values taken at the best epoch (by the task metric); costs are averaged or maximised over epochs."""


def direction(metric: str) -> str:
    """Optuna direction of a metric name."""
    try:
        return DIRECTIONS[metric]
    except KeyError:
        raise KeyError(f"unknown metric {metric!r}; known: {sorted(DIRECTIONS)}") from None


def is_better(metric: str, new: float, old: float) -> bool:
    """Whether ``new`` is strictly better than ``old`` for ``metric``."""
    return new > old if direction(metric) == MAXIMIZE else new < old


def classification_metrics(labels: np.ndarray, preds: np.ndarray, num_labels: int) -> dict[str, float]:
    """accuracy, macro-F1 and weighted-F1 (weighted matters for imbalanced data)."""
    label_ids = list(range(num_labels))
    return {
        "accuracy": float(accuracy_score(labels, preds)),
        "f1_macro": float(f1_score(labels, preds, average="macro", labels=label_ids, zero_division=0)),
        "f1_weighted": float(f1_score(labels, preds, average="weighted", labels=label_ids, zero_division=0)),
    }


def confusion(labels: np.ndarray, preds: np.ndarray, num_labels: int) -> np.ndarray:
    return confusion_matrix(labels, preds, labels=list(range(num_labels)))
