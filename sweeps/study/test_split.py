"""The held-out test split: touched once, by the finalists only, never used to select anything.

The finalists are the best trial (evaluated from its saved model at the end of the run) and every confirmation trial
(evaluated right after it trains). Results are stored as study user attributes ``test.<trial number>`` — a finished
Optuna trial cannot take new attributes, and one key per trial keeps workers from overwriting each other — and logged
to the trial's MLflow run as ``test/<metric>``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sweeps.metrics import classification_metrics
from sweeps.report.table import TEST_ATTR, all_test_metrics, test_metrics_of

__all__ = ["TEST_ATTR", "all_test_metrics", "evaluate_test_split", "test_metrics_of", "test_rows"]

def test_rows(data: Any, limit: int | None, seed: int) -> Any:
    """The labelled test rows evaluated: all, or ``max_test_rows`` of them after a seeded shuffle (the same rows for
    every finalist, so their test scores are comparable)."""
    test = data.test
    if limit is None or limit >= len(test):
        return test
    order = np.random.default_rng(seed).permutation(len(test))[:limit]
    return test.select(sorted(order.tolist()))


def evaluate_test_split(model: Any, data: Any, spec: Any) -> dict[str, float]:
    """accuracy, macro-F1 and weighted-F1 of a saved model (see :func:`sweeps.predict.load_model_folder`) on the
    labelled test rows."""
    from sweeps.predict import predict_proba

    rows = test_rows(data, spec.task.data.max_test_rows, spec.task.data.shuffle_seed)
    pairs = rows["text_pair"] if "text_pair" in rows.column_names else None
    probs = predict_proba(model, rows["text"], pairs, batch_size=int(spec.training.eval_batch_size))
    labels = np.asarray(rows["label"])
    metrics = classification_metrics(labels, probs.argmax(-1), len(data.label_names))
    metrics["rows"] = float(len(labels))
    return metrics
