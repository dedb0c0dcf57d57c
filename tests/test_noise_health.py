"""Noise rules and trial-health flags: the report's "tie" and "did not learn" words rest on these."""

from __future__ import annotations

import numpy as np
import pytest

from sweeps.health import chance_band, dead_classes, majority_rate, trial_health
from sweeps.report.noise import bootstrap_difference, mean_std, seed_difference


def test_majority_rate_and_chance_band_grow_with_imbalance_and_shrink_with_size():
    labels = np.array([0] * 70 + [1] * 30)
    assert majority_rate(labels) == pytest.approx(0.7)
    assert chance_band(labels) == pytest.approx(0.7 + 2 * np.sqrt(0.7 * 0.3 / 100))
    assert chance_band(np.repeat(labels, 100)) < chance_band(labels)


def test_trial_at_majority_rate_did_not_learn_and_is_degenerate():
    labels = np.array([0] * 60 + [1] * 40)
    always_zero = np.zeros(100, dtype=int)
    health = trial_health(labels, always_zero, 2)
    assert not health.learned and health.degenerate and health.dead_classes == (1,)


def test_good_trial_learned_and_not_degenerate():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    preds = labels.copy()
    preds[:30] = (preds[:30] + 1) % 3
    health = trial_health(labels, preds, 3)
    assert health.learned and not health.degenerate


def test_class_absent_from_validation_is_not_dead():
    confusion = np.array([[5, 0, 0], [1, 4, 0], [0, 0, 0]])
    assert dead_classes(confusion) == ()
    assert dead_classes(np.array([[5, 0], [3, 0]])) == (1,)


def test_bootstrap_identical_predictions_tie_at_zero():
    labels = np.arange(200) % 2
    preds = labels.copy()
    preds[:40] = 1 - preds[:40]
    diff = bootstrap_difference(labels, preds, preds, "accuracy")
    assert diff.delta == 0 and diff.tie


def test_bootstrap_eleven_disagreements_in_500_rows_is_a_tie_but_a_large_gap_is_not():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 6, 500)
    b = labels.copy()
    wrong = rng.choice(500, 40, replace=False)
    b[wrong] = (b[wrong] + 1) % 6
    a = b.copy()
    fixed = wrong[:6]  # a is right on 6 rows where b is wrong, and wrong on 5 rows where b is right
    a[fixed] = labels[fixed]
    right = np.setdiff1d(np.arange(500), wrong)[:5]
    a[right] = (a[right] + 1) % 6
    small = bootstrap_difference(labels, a, b, "accuracy", num_labels=6)
    assert small.delta == pytest.approx(1 / 500) and small.tie
    far = labels.copy()
    far[:10] = (far[:10] + 1) % 6
    big = bootstrap_difference(labels, far, b, "accuracy", num_labels=6)
    assert big.delta > 0 and not big.tie and big.low > 0
    assert "better" in big.describe("accuracy") and "tie" in small.describe("accuracy")


@pytest.mark.parametrize("metric", ["f1_macro", "f1_weighted"])
def test_bootstrap_f1_matches_sklearn_on_the_observed_rows(metric):
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(2)
    labels = rng.integers(0, 4, 300)
    a = np.where(rng.random(300) < 0.8, labels, rng.integers(0, 4, 300))
    b = np.where(rng.random(300) < 0.6, labels, rng.integers(0, 4, 300))
    diff = bootstrap_difference(labels, a, b, metric, num_labels=4)
    average = metric.split("_")[1]
    expected = f1_score(labels, a, average=average) - f1_score(labels, b, average=average)
    assert diff.delta == pytest.approx(expected)
    assert diff.low < diff.delta < diff.high


def test_bootstrap_refuses_mismatched_rows():
    with pytest.raises(ValueError, match="same"):
        bootstrap_difference([0, 1], [0, 1, 1], [0, 1], "accuracy")


def test_seed_rule_overlapping_spreads_tie_separated_do_not():
    tie = seed_difference([0.90, 0.91, 0.89], [0.905, 0.895, 0.90])
    assert tie.tie and tie.rule == "seeds"
    win = seed_difference([0.95, 0.951, 0.949], [0.90, 0.901, 0.899])
    assert not win.tie and win.delta == pytest.approx(0.05)
    with pytest.raises(ValueError):
        seed_difference([0.9], [0.8, 0.7])


def test_mean_std():
    assert mean_std([1.0]) == (1.0, 0.0)
    mean, std = mean_std([1.0, 3.0])
    assert mean == 2.0 and std == pytest.approx(np.sqrt(2))
