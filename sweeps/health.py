"""Did a trial learn anything? Chance level, "learned" and "degenerate" flags, computed once per trial.

A trial that ends at the majority-class rate, or that never predicts some class, is not evidence about its freezing
strategy: it is evidence that its learning rate, epochs or class balance were wrong. These flags let the study say so
instead of ranking it (the MLflow tags ``sweeps.learned`` / ``sweeps.degenerate`` and the report read them from here).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Two standard errors of the majority rate: an accuracy inside this band is indistinguishable from always answering
# the most frequent class on a validation set of this size.
CHANCE_MARGIN_SE = 2.0


@dataclass(frozen=True)
class TrialHealth:
    """What one trial's validation predictions say about whether it trained at all."""

    majority_rate: float
    """Accuracy of always predicting the most frequent validation class."""
    chance_band: float
    """Accuracy at or below this is "at chance" (majority rate + ``CHANCE_MARGIN_SE`` standard errors)."""
    learned: bool
    """Accuracy above :attr:`chance_band`."""
    degenerate: bool
    """Some class present in validation is never predicted correctly (zero recall)."""
    dead_classes: tuple[int, ...]
    """Label ids present in validation with zero recall."""


def majority_rate(labels: np.ndarray) -> float:
    """Share of the most frequent label (0.0 for no labels)."""
    labels = np.asarray(labels)
    if labels.size == 0:
        return 0.0
    return float(np.bincount(labels).max() / labels.size)


def chance_band(labels: np.ndarray) -> float:
    """The accuracy a trial must beat to count as having learned: the majority rate plus two standard errors of a
    binomial proportion at that rate on ``len(labels)`` examples."""
    n = len(labels)
    rate = majority_rate(labels)
    if n == 0:
        return rate
    return rate + CHANCE_MARGIN_SE * math.sqrt(rate * (1.0 - rate) / n)


def dead_classes(confusion: np.ndarray) -> tuple[int, ...]:
    """Classes with at least one validation example and zero recall (rows of the confusion matrix: true labels)."""
    confusion = np.asarray(confusion)
    support = confusion.sum(axis=1)
    correct = np.diag(confusion)
    return tuple(int(i) for i in np.flatnonzero((support > 0) & (correct == 0)))


def trial_health(labels: np.ndarray, preds: np.ndarray, num_labels: int) -> TrialHealth:
    """Flags for one trial's evaluation predictions (validation, or out-of-fold under cross-validation)."""
    labels = np.asarray(labels, dtype=np.int64)
    preds = np.asarray(preds, dtype=np.int64)
    confusion = np.zeros((num_labels, num_labels), dtype=np.int64)
    np.add.at(confusion, (labels, preds), 1)
    accuracy = float((labels == preds).mean()) if labels.size else 0.0
    band = chance_band(labels)
    dead = dead_classes(confusion)
    return TrialHealth(
        majority_rate=majority_rate(labels),
        chance_band=band,
        learned=accuracy > band,
        degenerate=bool(dead),
        dead_classes=dead,
    )
