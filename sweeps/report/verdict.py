"""The study's answer in words: which strategy, against which baseline, and whether the difference is real.

Rules, each written once here and used by the CLI summary, the report and ``best.json``:

* **One ranking** (:func:`rank`): the quality metric, then the median epoch time, then the trial number. A tie in the
  metric goes to the cheaper trial, and the same trial is "best" everywhere.
* **The baseline is the best-tuned full fine-tune**: the best ``none`` trial, never the first one.
* **Evidence**: a trial that did not learn (at or below chance) or a duplicate of an earlier trial is never counted
  against its strategy; a strategy with only pruned, failed or not-learned trials is listed as having no evidence.
* **Noise**: differences are called wins only outside the noise rule of :mod:`sweeps.report.noise` — seed spread
  when the confirmation phase retrained the configurations, a paired bootstrap over the validation rows otherwise.
* **Health first**: when the best trial did not learn or never predicts some class, the answer says so, with the
  likely cause, before any ranking.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from sweeps.report.noise import Difference, bootstrap_difference, mean_std, seed_difference

BASELINE = "none"
BOOTSTRAP_METRICS = ("accuracy", "f1_macro", "f1_weighted")
STATES = ("complete", "pruned", "failed", "running", "waiting")

Predictions = Callable[[int], "tuple[np.ndarray, np.ndarray] | None"]
"""Trial number → (labels, predicted label ids) on the evaluation rows, or None when not stored."""


def _false(value: object) -> bool:
    return value is False or value is np.False_


def _true(value: object) -> bool:
    return value is True or value is np.True_


def rank(table: pd.DataFrame, metric: str, direction: str) -> pd.DataFrame:
    """Completed trials with the metric, best first: metric, then median epoch time, then trial number."""
    if table.empty or metric not in table:
        return table.iloc[0:0]
    done = table[(table["state"] == "complete") & table[metric].notna()]
    if "duplicate_of" in done:
        done = done[done["duplicate_of"].isna()]
    time = done["epoch_time_s"] if "epoch_time_s" in done else pd.Series(0.0, index=done.index)
    return (
        done.assign(_time=time.fillna(math.inf))
        .sort_values([metric, "_time", "number"], ascending=[direction == "minimize", True, True], kind="stable")
        .drop(columns="_time")
    )


def best_row(table: pd.DataFrame, metric: str, direction: str) -> pd.Series | None:
    """The best trial by :func:`rank` (search and confirmation trials alike), or None."""
    ranked = rank(table, metric, direction)
    return None if ranked.empty else ranked.iloc[0]


def best_trial_number(study: Any) -> int | None:
    """The best trial of a study by :func:`rank` on its primary quality metric (the number ``best.json``, the CLI
    summary and the report all use), or None before any trial completed."""
    from sweeps.report.table import _study_metric, trials_table

    metric, direction = _study_metric(study)
    row = best_row(trials_table(study, metric, direction), metric, direction)
    return None if row is None else int(row["number"])


def config_id(row: pd.Series) -> int:
    """Trials of one configuration share an id: the search trial's number (confirmation trials point at it)."""
    of = row.get("confirm_of")
    return int(of) if of is not None and not pd.isna(of) else int(row["number"])


@dataclass
class Finalist:
    """One configuration with every seed it was trained with."""

    config: int
    strategy: str
    values: list[float]
    epoch_times: list[float]
    label: str

    @property
    def mean(self) -> float:
        return mean_std(self.values)[0]

    @property
    def std(self) -> float:
        return mean_std(self.values)[1]


def finalists(ranked: pd.DataFrame, metric: str, labels: dict[int, str]) -> list[Finalist]:
    """Configurations trained with two or more seeds (search trial + confirmation trials), from :func:`rank`'s
    output."""
    done = ranked
    if done.empty or "confirm_of" not in done or done["confirm_of"].isna().all():
        return []
    groups: dict[int, list[pd.Series]] = {}
    for _, row in done.iterrows():
        groups.setdefault(config_id(row), []).append(row)
    out = []
    for cid, rows in groups.items():
        if len(rows) < 2:
            continue
        out.append(
            Finalist(
                config=cid,
                strategy=str(rows[0]["strategy"]),
                values=[float(r[metric]) for r in rows],
                epoch_times=[float(r["epoch_time_s"]) for r in rows if pd.notna(r.get("epoch_time_s"))],
                label=labels.get(cid, f"trial {cid}, {rows[0]['strategy']}"),
            )
        )
    return out


class Verdict:
    """Builds the answer's sentences from the trials table (see the module docstring for the rules)."""

    def __init__(
        self,
        table: pd.DataFrame,
        metric: str,
        direction: str,
        *,
        labels: dict[int, str] | None = None,
        predictions: Predictions | None = None,
        num_labels: int | None = None,
    ) -> None:
        self.table = table
        self.metric = metric
        self.direction = direction
        self.labels = labels or {}
        self.predictions = predictions or (lambda number: None)
        self.num_labels = num_labels
        self.ranked = rank(table, metric, direction)
        self.finalists = {f.config: f for f in finalists(self.ranked, metric, self.labels)}

    # -- names ----------------------------------------------------------------------------------------------------
    def name(self, row: pd.Series) -> str:
        number = int(row["number"])
        text = self.labels.get(config_id(row), f"trial {number}, {row['strategy']}")
        if config_id(row) != number:
            text = f"trial {number} (seed of {text})"
        if _false(row.get("frozen_params_verified")):
            text += " [frozen parameters not verified]"
        return text

    def _value(self, row: pd.Series) -> str:
        fin = self.finalists.get(config_id(row))
        if fin is not None:
            return f"{self.metric} {fin.mean:.4f} ± {fin.std:.4f} over {len(fin.values)} seeds"
        return f"{self.metric} {float(row[self.metric]):.4f}"

    # -- evidence -------------------------------------------------------------------------------------------------
    def evidence(self) -> pd.DataFrame:
        """Ranked trials that count as evidence: completed, not duplicates, and learned."""
        if "learned" not in self.ranked:
            return self.ranked
        return self.ranked[~self.ranked["learned"].map(_false)]

    def best_per_strategy(self) -> dict[str, pd.Series]:
        out: dict[str, pd.Series] = {}
        for _, row in self.evidence().iterrows():
            out.setdefault(str(row["strategy"]), row)
        return out

    def compare(self, a: pd.Series, b: pd.Series) -> Difference | None:
        """``a − b`` with the noise rule that applies: seeds when both were confirmed, else a paired bootstrap."""
        fa, fb = self.finalists.get(config_id(a)), self.finalists.get(config_id(b))
        if fa is not None and fb is not None:
            return seed_difference(fa.values, fb.values)
        pa, pb = self.predictions(int(a["number"])), self.predictions(int(b["number"]))
        if pa is None or pb is None or len(pa[0]) != len(pb[0]) or not np.array_equal(pa[0], pb[0]):
            return None
        if self.metric not in BOOTSTRAP_METRICS:  # eval_loss needs probabilities, not labels: no rule for it
            return None
        return bootstrap_difference(pa[0], pa[1], pb[1], self.metric, num_labels=self.num_labels)

    # -- sentences ------------------------------------------------------------------------------------------------
    def counts(self) -> str:
        """"Trials per strategy: none 3 complete; bottom_n 1 complete, 2 pruned; gradual none complete (1 failed)"."""
        if self.table.empty:
            return "No trials yet."
        parts = []
        for strategy in dict.fromkeys(self.table["strategy"]):
            rows = self.table[self.table["strategy"] == strategy]
            if "duplicate_of" in rows:
                rows = rows[rows["duplicate_of"].isna()]
            states = rows["state"].value_counts()
            bits = [f"{int(states[s])} {s}" for s in STATES if s in states]
            if "learned" in rows:
                flat = rows[(rows["state"] == "complete") & rows["learned"].map(_false)]
                if len(flat):
                    bits.append(f"{len(flat)} did not learn")
            if "complete" not in states:
                bits.insert(0, "no completed trial")
            parts.append(f"{strategy}: {', '.join(bits)}")
        return "Trials per strategy: " + "; ".join(parts) + "."

    def health(self, best: pd.Series) -> list[str]:
        """Warnings that must come before any ranking."""
        out = []
        if _false(best.get("learned")):
            chance = best.get("chance_rate")
            at = f" (majority-class rate {float(chance):.4f})" if chance is not None and pd.notna(chance) else ""
            out.append(
                f"Warning: no trial learned: the best, {self.name(best)}, reaches {self._value(best)}, at chance{at}. "
                "Nothing here is evidence about freezing. Likely cause: the learning rate is too low or there are "
                "too few epochs for this data (raise training.learning_rate or training.epochs), or the classes are "
                "too imbalanced for the metric."
            )
        elif _true(best.get("degenerate")):
            dead = best.get("dead_classes") or ""
            out.append(
                f"Warning: the best trial, {self.name(best)}, never predicts some classes correctly"
                + (f" ({dead})" if dead else "")
                + ": it has not learned the task yet. Likely cause: too few epochs or too low a learning rate, or "
                "classes too rare in the training data; read the ranking below with that in mind."
            )
        return out

    def sentences(self) -> list[str]:
        out: list[str] = []
        if self.ranked.empty:
            out.append(f"No trial completed with a {self.metric}, so there is nothing to compare or recommend yet.")
            out.append(self.counts())
            return out
        best = self.ranked.iloc[0]
        out.extend(self.health(best))
        evidence = self.evidence()
        if evidence.empty:
            out.append(self.counts())
            return out
        best = evidence.iloc[0]
        out.append(f"Best: {self.name(best)}: {self._value(best)}{self._cost(best)}.")
        if len(evidence) == 1:
            out.append("Only one trial completed: there is nothing to compare it with yet.")
        out.extend(self._against_baseline(best))
        out.extend(self._cheapest_tie(best))
        out.append(self.counts())
        flat = self._not_learned()
        if flat:
            out.append(flat)
        return out

    def _cost(self, row: pd.Series) -> str:
        parts = []
        if pd.notna(row.get("epoch_time_s")):
            parts.append(f"{float(row['epoch_time_s']):.2f} s/epoch")
        if pd.notna(row.get("peak_memory_mb")):
            parts.append(f"{float(row['peak_memory_mb']):.0f} MB peak memory")
        if pd.notna(row.get("trainable_params")):
            parts.append(f"{int(row['trainable_params']):,} trainable parameters")
        if _true(row.get("cache_warm")):
            parts.append("warm activation cache")
        return f" ({', '.join(parts)})" if parts else ""

    def _costs_relative(self, row: pd.Series, ref: pd.Series, whose: str) -> str:
        parts = []
        for col, what in (("epoch_time_s", "epoch time"), ("peak_memory_mb", "peak memory")):
            try:
                value, base = float(row.get(col)), float(ref.get(col))
            except (TypeError, ValueError):
                continue
            if math.isfinite(value) and math.isfinite(base) and base > 0:
                parts.append(f"{value / base:.0%} of {whose if not parts else 'its'} {what}")
        if not parts:
            return ""
        warm = [_true(r.get("cache_warm")) for r in (row, ref)]
        note = " (one of the two ran with a warm activation cache)" if warm[0] != warm[1] else ""
        return " at " + " and ".join(parts) + note

    def _against_baseline(self, best: pd.Series) -> list[str]:
        base = self.best_per_strategy().get(BASELINE)
        if base is None:
            has_any = len(self.table) and (self.table["strategy"] == BASELINE).any()
            why = "none of its trials completed and learned" if has_any else "the study has no such trial"
            return [f"No full fine-tuning ({BASELINE}) baseline to compare with: {why}."]
        if int(base["number"]) == int(best["number"]):
            return [f"The best trial is full fine-tuning ({BASELINE}): no freezing strategy beat it."]
        diff = self.compare(best, base)
        head = f"Against the best full fine-tuning, {self.name(base)} ({self._value(base)}): {self.name(best)} "
        if diff is None:
            why = (
                "predictions not stored" if self.metric in BOOTSTRAP_METRICS
                else f"no evaluation-noise rule for {self.metric}; optuna.confirm measures seed noise"
            )
            return [head + f"differs by {float(best[self.metric]) - float(base[self.metric]):+.4f} {self.metric} "
                    f"(no noise estimate: {why})" + self._costs_relative(best, base, "its") + "."]
        sentence = head + diff.describe(self.metric) + self._costs_relative(best, base, "its") + "."
        if diff.tie:
            sentence += f" Call it a tie: {best['strategy']} is as good as full fine-tuning here, not better."
        return [sentence, *self._baseline_tuning(best)]

    def _baseline_tuning(self, best: pd.Series) -> list[str]:
        """A baseline tried at fewer settings than the winner is the worst-tuned arm: a win against it may be the
        learning rate it drew, not what the winner freezes (one configuration is one draw of its LR range)."""
        evidence = self.evidence()
        configs = evidence.assign(_config=[config_id(r) for _, r in evidence.iterrows()]).drop_duplicates("_config")
        tried = configs["strategy"].value_counts()
        ours, theirs = int(tried.get(BASELINE, 0)), int(tried.get(best["strategy"], 0))
        if ours >= 2 and ours >= theirs:
            return []
        return [
            f"Caution: full fine-tuning ({BASELINE}) was tried at {ours} configuration{'s' if ours != 1 else ''}, "
            f"{best['strategy']} at {theirs}: a better-tuned baseline may close the gap (more trials, or a "
            f"narrower learning-rate range for {BASELINE})."
        ]

    def _cheapest_tie(self, best: pd.Series) -> list[str]:
        """The cheapest strategy whose best trial ties with the overall best (what freezing buys for free)."""
        if "epoch_time_s" not in self.ranked or pd.isna(best.get("epoch_time_s")):
            return []
        candidates = []
        for strategy, row in self.best_per_strategy().items():
            if int(row["number"]) == int(best["number"]) or pd.isna(row.get("epoch_time_s")):
                continue
            if float(row["epoch_time_s"]) >= float(best["epoch_time_s"]):
                continue
            diff = self.compare(row, best)
            if diff is not None and diff.tie:
                candidates.append((float(row["epoch_time_s"]), strategy, row, diff))
        if not candidates:
            return []
        _, _, row, diff = min(candidates, key=lambda c: c[0])
        return [
            f"Cheapest strategy that ties with the best: {self.name(row)}: {diff.describe(self.metric)}"
            f"{self._costs_relative(row, best, 'the best trial’s')}."
        ]

    def _not_learned(self) -> str:
        if "learned" not in self.ranked:
            return ""
        flat = self.ranked[self.ranked["learned"].map(_false)]
        if flat.empty:
            return ""
        numbers = ", ".join(str(int(n)) for n in sorted(flat["number"]))
        return (
            f"Did not learn (at or below chance; not counted against their strategy): trial"
            f"{'s' if len(flat) > 1 else ''} {numbers}."
        )
