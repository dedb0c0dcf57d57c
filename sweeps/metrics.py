"""Classification metrics (scikit-learn) and the metric-name contract.

The names below are what users build MLflow dashboards on; they are documented in the README and tested.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

MAXIMIZE = {"accuracy", "f1_macro", "f1_weighted", "samples_per_s"}
MINIMIZE = {"eval_loss", "train_loss", "epoch_time_s", "eval_time_s", "peak_memory_mb", "trainable_params"}
OBJECTIVE_METRICS = MAXIMIZE | MINIMIZE


def direction(metric: str) -> str:
    """Optuna direction of a metric name."""
    if metric in MAXIMIZE:
        return "maximize"
    if metric in MINIMIZE:
        return "minimize"
    raise KeyError(f"unknown metric {metric!r}; known: {sorted(OBJECTIVE_METRICS)}")


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
