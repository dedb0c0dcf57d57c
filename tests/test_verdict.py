"""The answer's rules: one ranking, the best-tuned baseline, ties within noise, and health before ranking."""

from __future__ import annotations

import numpy as np
import pandas as pd

from sweeps.report.verdict import Verdict, best_row, rank

COLUMNS = ["number", "state", "strategy", "accuracy", "epoch_time_s", "peak_memory_mb", "trainable_params"]


def _table(rows, **extra):
    table = pd.DataFrame(rows, columns=COLUMNS)
    for key, values in extra.items():
        table[key] = values
    return table


def _preds(correct: dict[int, int], n: int = 500, seed: int = 0):
    """Trial number → (labels, preds) with exactly ``correct[number]`` right answers on shared rows."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    order = rng.permutation(n)

    def get(number: int):
        if number not in correct:
            return None
        preds = labels.copy()
        wrong = order[correct[number] :]
        preds[wrong] = 1 - preds[wrong]
        return labels, preds

    return get


def test_one_ranking_rule_metric_then_epoch_time_then_number():
    table = _table(
        [
            [0, "complete", "none", 0.90, 40.0, 1700, 22_000_000],
            [1, "complete", "bottom_n", 0.90, 12.0, 1300, 5_000_000],
            [2, "complete", "bottom_n", 0.90, 12.0, 1300, 5_000_000],
            [3, "pruned", "gradual", np.nan, np.nan, np.nan, np.nan],
        ]
    )
    assert list(rank(table, "accuracy", "maximize")["number"]) == [1, 2, 0]
    assert int(best_row(table, "accuracy", "maximize")["number"]) == 1
    assert best_row(table, "eval_loss", "minimize") is None  # no such column: nothing to rank


def test_baseline_is_the_best_none_trial_not_the_first():
    table = _table(
        [
            [0, "complete", "none", 0.46, 40.0, 1700, 22_000_000],  # drew a bad LR
            [1, "complete", "embeddings", 0.88, 38.0, 1600, 21_000_000],
            [2, "complete", "none", 0.86, 41.0, 1700, 22_000_000],
        ]
    )
    verdict = Verdict(table, "accuracy", "maximize", predictions=_preds({0: 230, 1: 440, 2: 430}))
    text = " ".join(verdict.sentences())
    assert "Against the best full fine-tuning, trial 2, none" in text
    assert "190" not in text and "trial 0, none (accuracy" not in text


def test_a_small_difference_is_a_tie_and_worded_as_one():
    table = _table(
        [
            [0, "complete", "none", 0.862, 40.0, 1700, 22_000_000],
            [1, "complete", "bottom_n", 0.866, 13.0, 1350, 5_000_000],
        ]
    )
    verdict = Verdict(table, "accuracy", "maximize", predictions=_preds({0: 431, 1: 433}))
    text = " ".join(verdict.sentences())
    assert "a tie within evaluation noise" in text and "Call it a tie" in text
    assert ": better" not in text


def test_a_large_difference_is_a_win():
    table = _table(
        [
            [0, "complete", "none", 0.80, 40.0, 1700, 22_000_000],
            [1, "complete", "discriminative", 0.90, 40.0, 1700, 22_000_000],
        ]
    )
    verdict = Verdict(table, "accuracy", "maximize", predictions=_preds({0: 400, 1: 450}))
    text = " ".join(verdict.sentences())
    assert "+0.1000 accuracy" in text and ": better" in text and "tie" not in text


def test_cheapest_strategy_that_ties_with_the_best_is_named():
    table = _table(
        [
            [0, "complete", "none", 0.870, 40.0, 1700, 22_000_000],
            [1, "complete", "bottom_n", 0.866, 10.0, 1350, 5_000_000],
            [2, "complete", "gradual", 0.700, 20.0, 1400, 9_000_000],
        ]
    )
    verdict = Verdict(table, "accuracy", "maximize", predictions=_preds({0: 435, 1: 433, 2: 350}))
    text = " ".join(verdict.sentences())
    assert "Cheapest strategy that ties with the best: trial 1, bottom_n" in text
    assert "25% of the best trial’s epoch time" in text


def test_no_learning_is_said_first_with_the_likely_cause():
    table = _table(
        [
            [0, "complete", "none", 0.51, 40.0, 1700, 22_000_000],
            [1, "complete", "embeddings", 0.52, 38.0, 1600, 21_000_000],
        ],
        learned=[False, False],
        chance_rate=[0.51, 0.51],
    )
    sentences = Verdict(table, "accuracy", "maximize").sentences()
    assert sentences[0].startswith("Warning: no trial learned")
    assert "learning rate" in sentences[0] and "epochs" in sentences[0]
    assert not any(s.startswith("Best:") for s in sentences)


def test_degenerate_best_is_flagged_before_the_ranking():
    table = _table([[0, "complete", "embeddings", 0.595, 38.0, 1600, 21_000_000]], learned=[True], degenerate=[True],
                   dead_classes=["anger, fear, love, surprise"])
    sentences = Verdict(table, "accuracy", "maximize").sentences()
    assert sentences[0].startswith("Warning: the best trial") and "anger, fear" in sentences[0]


def test_not_learned_trials_do_not_count_against_their_strategy_and_missing_evidence_is_listed():
    table = _table(
        [
            [0, "complete", "none", 0.86, 40.0, 1700, 22_000_000],
            [1, "complete", "bottom_n", 0.50, 1.0, 1300, 5_000],
            [2, "pruned", "gradual", np.nan, np.nan, np.nan, np.nan],
        ],
        learned=[True, False, None],
    )
    text = " ".join(Verdict(table, "accuracy", "maximize").sentences())
    assert "The best trial is full fine-tuning" in text
    assert "bottom_n: 1 complete, 1 did not learn" in text
    assert "gradual: no completed trial, 1 pruned" in text
    assert "Did not learn (at or below chance; not counted against their strategy): trial 1." in text


def test_seed_rule_replaces_bootstrap_for_confirmed_configurations():
    table = _table(
        [
            [0, "complete", "none", 0.870, 40.0, 1700, 22_000_000],
            [1, "complete", "bottom_n", 0.874, 10.0, 1350, 5_000_000],
            [2, "complete", "none", 0.860, 40.0, 1700, 22_000_000],
            [3, "complete", "bottom_n", 0.862, 10.0, 1350, 5_000_000],
        ],
        confirm_of=[None, None, 0, 1],
    )
    verdict = Verdict(table, "accuracy", "maximize", labels={0: "trial 0, none", 1: "trial 1, bottom_n"})
    text = " ".join(verdict.sentences())
    assert "accuracy 0.8680 ± 0.0085 over 2 seeds" in text
    assert "seed spread" in text and "a tie within seed noise" in text


def test_duplicates_are_not_evidence():
    table = _table(
        [
            [0, "complete", "none", 0.86, 40.0, 1700, 22_000_000],
            [1, "complete", "none", 0.86, 5.0, 1700, 22_000_000],
        ],
        duplicate_of=[None, 0],
    )
    assert list(rank(table, "accuracy", "maximize")["number"]) == [0]


def test_a_win_against_a_baseline_tried_once_comes_with_a_caution():
    rows = [
        [0, "complete", "none", 0.61, 14.0, 1300, 22_000_000],  # one LR draw, too low
        [1, "complete", "gradual", 0.87, 7.0, 1390, 22_000_000],
        [2, "complete", "gradual", 0.86, 8.0, 1380, 22_000_000],
    ]
    verdict = Verdict(_table(rows), "accuracy", "maximize", predictions=_preds({0: 305, 1: 435, 2: 430}))
    text = " ".join(verdict.sentences())
    assert "better" in text
    assert "Caution: full fine-tuning (none) was tried at 1 configuration, gradual at 2" in text
    # as many baseline configurations as the winner's (confirmation seeds are one configuration): no caution
    rows += [[3, "complete", "none", 0.80, 14.0, 1300, 22_000_000], [4, "complete", "none", 0.79, 14.0, 1300, 1]]
    table = _table(rows, confirm_of=[None, None, None, None, 3])
    verdict = Verdict(table, "accuracy", "maximize", predictions=_preds({0: 305, 1: 435, 2: 430, 3: 400, 4: 395}))
    assert "Caution" not in " ".join(verdict.sentences())  # none: configurations 0 and 3, as many as gradual
