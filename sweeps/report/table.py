"""The trials table: one row per trial, best first, read from the Optuna study alone (no study file needed)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from sweeps.config import StudySpec
from sweeps.config.search_space import STRATEGY_PARAM
from sweeps.metrics import DIRECTIONS, MAXIMIZE, QUALITY_METRICS
from sweeps.records import StudyAttr, TrialAttr, trial_metrics

TABLE_METRICS = ("accuracy", "f1_macro", "epoch_time_s", "peak_memory_mb", "trainable_params", "epochs_run")


INTEGER_METRICS = ("trainable_params", "best_epoch", "epochs_run")


EVIDENCE_ATTRS = (
    TrialAttr.LEARNED,
    TrialAttr.DEGENERATE,
    TrialAttr.CHANCE_RATE,
    TrialAttr.DEAD_CLASSES,
    TrialAttr.CACHE_WARM,
    TrialAttr.CONFIRM_OF,
    TrialAttr.DUPLICATE_OF,
)
"""Trial attributes the verdict reads (:mod:`sweeps.report.verdict`): did it learn, is it a seed of another trial's
configuration or a skipped duplicate, and was its activation cache warm."""


_STATES = {
    TrialState.COMPLETE: "complete",
    TrialState.PRUNED: "pruned",
    TrialState.FAIL: "failed",
    TrialState.RUNNING: "running",
    TrialState.WAITING: "waiting",
}


TEST_METRICS = ("accuracy", "f1_macro", "f1_weighted")
TEST_ATTR = StudyAttr.TEST_PREFIX
"""Study user attribute prefix: ``test.<trial number>`` holds that finalist's held-out test metrics (a finished
Optuna trial cannot take new attributes; one key per trial keeps workers from overwriting each other)."""


def test_metrics_of(study: optuna.Study, number: int) -> dict[str, float] | None:
    value = study.user_attrs.get(f"{TEST_ATTR}{number}")
    return dict(value) if isinstance(value, dict) else None


def all_test_metrics(study: optuna.Study) -> dict[int, dict[str, float]]:
    """Trial number → its test metrics, for every finalist evaluated so far."""
    out = {}
    for key, value in study.user_attrs.items():
        if key.startswith(TEST_ATTR) and key[len(TEST_ATTR) :].isdigit() and isinstance(value, dict):
            out[int(key[len(TEST_ATTR) :])] = dict(value)
    return out


# -- the table ----------------------------------------------------------------------------------------------------
def _direction_of(metric: str) -> str:
    """A recorded metric's direction; a name this version does not know is taken as higher-is-better."""
    return DIRECTIONS.get(metric, MAXIMIZE)


def _study_metric(study: optuna.Study) -> tuple[str, str]:
    """The optimised metric as recorded in the study itself (so ``trials_table`` needs no study file)."""
    names = study.user_attrs.get(StudyAttr.OBJECTIVES) or []
    dirs = [d.name.lower() for d in study.directions]
    for i, name in enumerate(names):
        if name in QUALITY_METRICS:
            return name, dirs[i] if i < len(dirs) else _direction_of(name)
    if names:
        return names[0], dirs[0]
    return "accuracy", dirs[0] if len(dirs) == 1 else "maximize"


def _trials(study: optuna.Study) -> list[FrozenTrial]:
    """Every trial except the surplus ones (asked and closed at once when other workers had used up the budget)."""
    return [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get(TrialAttr.SURPLUS)]


def _strategy(trial: FrozenTrial) -> str:
    return str(trial.user_attrs.get(TrialAttr.STRATEGY) or trial.params.get(STRATEGY_PARAM) or "?")


def _metrics(trial: FrozenTrial) -> dict[str, float]:
    out = {}
    for name, value in trial_metrics(trial.user_attrs).items():
        try:
            out[name] = float(value)
        except (TypeError, ValueError):
            continue
    return out


def _short_name(name: str, strategy: str) -> str:
    if name.startswith(f"{strategy}."):
        name = name[len(strategy) + 1 :]
    elif not name.startswith("training.") and "." in name:
        name = name.split(".", 1)[1]
    return name[len("training.") :] if name.startswith("training.") else name


def _param_columns(trials: Sequence[FrozenTrial]) -> dict[str, str]:
    """Full Optuna parameter name → table column. ``bottom_n.n`` becomes ``n``; a short name stays dotted when it
    would be ambiguous within one trial (e.g. a strategy parameter and a training field of the same name), because
    one column must never mix two quantities of the same row."""
    per_short: dict[str, set[str]] = {}
    clash: set[str] = set()
    for t in trials:
        seen: dict[str, str] = {}
        for name in t.params:
            if name == "strategy":
                continue
            short = _short_name(name, _strategy(t))
            if short in seen and seen[short] != name:
                clash.add(short)
            seen[short] = name
            per_short.setdefault(short, set()).add(name)
    reserved = {"number", "state", "strategy", "frozen_params_verified", "fail_reason", "duration_s", *TABLE_METRICS,
                *EVIDENCE_ATTRS}
    out = {}
    for short, names in per_short.items():
        for name in names:
            out[name] = name if short in clash or short in reserved else short
    return dict(sorted(out.items(), key=lambda kv: (kv[0].startswith("training."), kv[0])))


def _duration(trial: FrozenTrial) -> float:
    if trial.datetime_start is None or trial.datetime_complete is None:
        return math.nan
    return (trial.datetime_complete - trial.datetime_start).total_seconds()


def trials_table(study: optuna.Study, metric: str | None = None, direction: str | None = None) -> pd.DataFrame:
    """One row per trial, best first by the optimised metric (trials without it — pruned, failed, running — last).

    Final metrics exist only for completed trials, so a pruned trial's row shows its parameters and state but no
    accuracy: comparing a metric measured after fewer epochs with final ones would flatter nobody fairly.
    """
    if metric is None:
        metric, study_direction = _study_metric(study)
        direction = direction or study_direction
    direction = direction or _direction_of(metric)
    trials = _trials(study)
    columns = _param_columns(trials)
    metric_cols = list(TABLE_METRICS)
    for name in [metric, *(study.user_attrs.get(StudyAttr.OBJECTIVES) or [])]:
        if name not in metric_cols:
            metric_cols.insert(2, name)
    rows = []
    for t in trials:
        metrics = _metrics(t)
        state = _STATES.get(t.state, t.state.name.lower())
        row: dict[str, Any] = {"number": t.number, "state": state, "strategy": _strategy(t)}
        for col in columns.values():
            row.setdefault(col, None)
        for name, value in t.params.items():
            if name in columns:
                row[columns[name]] = value
        for name in metric_cols:
            row[name] = metrics.get(name, math.nan)
        verified = t.user_attrs.get(TrialAttr.FROZEN_VERIFIED)
        row["frozen_params_verified"] = None if verified is None else bool(verified)
        for key in EVIDENCE_ATTRS:
            row[key] = t.user_attrs.get(key)
        row["fail_reason"] = t.user_attrs.get(TrialAttr.FAIL_REASON) or ""
        row["duration_s"] = _duration(t)
        rows.append(row)
    ordered = ["number", "state", "strategy", *dict.fromkeys(columns.values()), *metric_cols,
               "frozen_params_verified", *EVIDENCE_ATTRS, "fail_reason", "duration_s"]
    tests = all_test_metrics(study)
    test_cols = [f"test/{k}" for k in TEST_METRICS if any(k in m for m in tests.values())]
    for row in rows:  # the finalists' held-out scores: shown, never used to rank
        for col in test_cols:
            row[col] = tests.get(row["number"], {}).get(col[len("test/") :], math.nan)
    ordered[ordered.index("frozen_params_verified"):ordered.index("frozen_params_verified")] = test_cols
    table = pd.DataFrame(rows, columns=ordered)
    if table.empty:
        return table
    for col in dict.fromkeys(columns.values()):  # int params stay ints next to blanks: "n=4", not "4.0"
        values = [r[col] for r in rows if r[col] is not None]
        if values and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
            table[col] = table[col].astype("Int64")
        elif all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in values):
            table[col] = pd.to_numeric(table[col])
    for col in INTEGER_METRICS:
        if col in table and table[col].dropna().map(float.is_integer).all():
            table[col] = table[col].astype("Int64")
    table["_time"] = table["epoch_time_s"].fillna(math.inf) if "epoch_time_s" in table else 0.0
    table = table.sort_values(
        [metric, "_time", "number"], ascending=[direction == "minimize", True, True], na_position="last", kind="stable"
    ).drop(columns="_time")
    return table.reset_index(drop=True)


def best_per_strategy(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The best completed trial of each strategy (the table is already sorted best first), with how many of that
    strategy's trials completed — one good trial out of twenty is a different finding from one out of one."""
    done = table[(table["state"] == "complete") & table[metric].notna()] if len(table) else table
    if done.empty:
        return done.assign(complete_trials=pd.Series(dtype="int64"))
    best = done.drop_duplicates("strategy", keep="first").copy()
    best.insert(3, "complete_trials", best["strategy"].map(done["strategy"].value_counts()).astype("int64"))
    return best.reset_index(drop=True)


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub markdown table without ``tabulate`` (which ``DataFrame.to_markdown`` needs and the project does not
    depend on)."""
    display = _display(table)
    header = [str(c) for c in display.columns]

    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(c) for c in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in display.itertuples(index=False):
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    """Readable cell text: thousands separators for counts, 4 significant digits otherwise, blanks for missing."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}" if abs(int(value)) >= 10000 else str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if v.is_integer() and abs(v) >= 1000:
            return f"{int(v):,}"
        return f"{v:.4g}"
    return str(value)


def _display(table: pd.DataFrame) -> pd.DataFrame:
    return table.astype(object).map(_fmt) if len(table) else table.astype(object)


# -- what the report is about -------------------------------------------------------------------------------------
def objectives_of(spec: StudySpec) -> list[tuple[str, str]]:
    """(metric, direction) per objective, as resolved by :mod:`sweeps.config` (the task metric when the file lists
    none)."""
    return [(o.metric, o.direction or _direction_of(o.metric)) for o in spec.objectives]


def primary_metric(spec: StudySpec) -> tuple[str, str]:
    """The quality metric the report ranks by: the first quality objective, else the task metric (an objective list
    such as ``[peak_memory_mb, accuracy]`` still ranks by accuracy — ranking by memory alone would recommend a model
    that learned nothing)."""
    objs = objectives_of(spec)
    for metric, direction in objs:
        if metric in QUALITY_METRICS:
            return metric, direction
    return spec.task.metric, _direction_of(spec.task.metric)


def trial_labels(study: optuna.Study) -> dict[int, str]:
    """``trial 5, bottom_n (n=4)``: number, strategy and the strategy's own searched values."""
    out = {}
    for t in _trials(study):
        strategy = _strategy(t)
        own = {k[len(strategy) + 1 :]: v for k, v in t.params.items() if k.startswith(f"{strategy}.")}
        desc = strategy + (f" ({', '.join(f'{k}={_fmt(v)}' for k, v in sorted(own.items()))})" if own else "")
        out[t.number] = f"trial {t.number}, {desc}"
    return out
