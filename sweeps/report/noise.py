"""Is a difference between two trials real? Two rules, both stated in the words the report prints.

* **Seeds** (after the confirmation phase): each configuration was trained with several seeds. Two configurations tie
  when their mean ± one standard deviation intervals overlap, i.e. ``|mean_a - mean_b| <= std_a + std_b``.
* **Evaluation sample** (a single seed): the two trials' predictions on the same validation rows are resampled together
  (a paired bootstrap). They tie when the 95% interval of the metric difference contains 0.

One seed can only speak to the second kind of noise (which rows happened to be in validation), never to the first
(which seed happened to be drawn); the report says which rule it used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BOOTSTRAP_SAMPLES = 1000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Difference:
    """``a − b`` in the metric, with the interval a rule put around it and its verdict."""

    delta: float
    low: float
    high: float
    tie: bool
    rule: str  # "seeds" or "bootstrap"

    def describe(self, metric: str) -> str:
        """E.g. "+0.0120 accuracy (95% interval −0.0040…+0.0280): a tie within evaluation noise"."""
        if self.rule == "seeds":
            span = f"seed spread ±{(self.high - self.low) / 2:.4f}"
            within = "within seed noise"
        else:
            span = f"{CONFIDENCE:.0%} interval {self.low:+.4f}…{self.high:+.4f}"
            within = "within evaluation noise"
        verdict = f"a tie {within}" if self.tie else ("better" if self.delta > 0 else "worse")
        return f"{self.delta:+.4f} {metric} ({span}): {verdict}"


def _metric(labels: np.ndarray, preds: np.ndarray, metric: str, num_labels: int) -> np.ndarray:
    """The metric over a batch of resamples: ``labels``/``preds`` have shape (samples, rows)."""
    if metric == "accuracy":
        return (labels == preds).mean(axis=1)
    if metric not in ("f1_macro", "f1_weighted"):
        raise ValueError(f"no bootstrap rule for metric {metric!r}")
    f1s, supports = [], []
    for c in range(num_labels):
        tp = ((preds == c) & (labels == c)).sum(axis=1)
        fp = ((preds == c) & (labels != c)).sum(axis=1)
        fn = ((preds != c) & (labels == c)).sum(axis=1)
        denom = 2 * tp + fp + fn
        f1s.append(np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0))
        supports.append((labels == c).sum(axis=1))
    f1 = np.stack(f1s, axis=1)
    if metric == "f1_macro":
        return f1.mean(axis=1)
    support = np.stack(supports, axis=1)
    return (f1 * support).sum(axis=1) / np.maximum(support.sum(axis=1), 1)


def bootstrap_difference(
    labels: Sequence[int],
    preds_a: Sequence[int],
    preds_b: Sequence[int],
    metric: str,
    *,
    num_labels: int | None = None,
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
) -> Difference:
    """Paired bootstrap of ``metric(a) − metric(b)`` over the shared evaluation rows (same resampled rows for both)."""
    labels_arr = np.asarray(labels, dtype=np.int64)
    a = np.asarray(preds_a, dtype=np.int64)
    b = np.asarray(preds_b, dtype=np.int64)
    if not (labels_arr.shape == a.shape == b.shape) or labels_arr.size == 0:
        raise ValueError("bootstrap needs the two trials' predictions on the same, non-empty evaluation rows")
    k = int(num_labels or max(labels_arr.max(), a.max(), b.max()) + 1)
    observed = float(
        _metric(labels_arr[None], a[None], metric, k)[0] - _metric(labels_arr[None], b[None], metric, k)[0]
    )
    rng = np.random.default_rng(seed)
    deltas = []
    for start in range(0, samples, 200):  # chunks keep memory flat for large validation sets
        idx = rng.integers(0, labels_arr.size, size=(min(200, samples - start), labels_arr.size))
        deltas.append(_metric(labels_arr[idx], a[idx], metric, k) - _metric(labels_arr[idx], b[idx], metric, k))
    spread = np.concatenate(deltas)
    tail = (1.0 - CONFIDENCE) / 2
    low, high = (float(x) for x in np.quantile(spread, [tail, 1.0 - tail]))
    return Difference(observed, low, high, tie=low <= 0.0 <= high, rule="bootstrap")


def seed_difference(values_a: Sequence[float], values_b: Sequence[float]) -> Difference:
    """Compare two configurations trained with several seeds each: a tie when mean ± std intervals overlap."""
    if len(values_a) < 2 or len(values_b) < 2:
        raise ValueError("the seed rule needs at least two seeds per configuration")
    mean_a, mean_b = float(np.mean(values_a)), float(np.mean(values_b))
    spread = float(np.std(values_a, ddof=1) + np.std(values_b, ddof=1))
    delta = mean_a - mean_b
    return Difference(delta, delta - spread, delta + spread, tie=abs(delta) <= spread, rule="seeds")


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value; NaN for none)."""
    if not len(values):
        return math.nan, math.nan
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
