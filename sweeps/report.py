"""The study report: comparison table, plots and a recommendation computed from the measured numbers.

The question a freezing sweep answers is "how much quality do I give up for how much less compute?", so everything here
is organised around one quality metric (the optimised one) against the two costs every trial measures: epoch time and
peak memory. The written recommendation is *computed* — every number in it comes from the trials — because a template
that talks about unmeasured things would be worse than no recommendation.

Outputs (``<study folder>/report/``): ``index.html`` (inline CSS; plots as PNG files next to it, so the folder opens
from disk and logs to MLflow as it is), ``trials.csv``, ``trials.md``, ``best_per_strategy.csv``,
``recommendation.txt`` and the PNGs.

Plots are drawn on :class:`matplotlib.figure.Figure` objects directly, never through ``pyplot``: no global backend
switch, no figure registry that leaks memory across reports, and safe to call from a process that also uses pyplot.
"""

from __future__ import annotations

import html
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

log = logging.getLogger(__name__)

QUALITY_METRICS = ("accuracy", "f1_macro", "f1_weighted", "eval_loss")
"""Metrics that measure how good a model is (the rest of the objectives measure what it costs)."""

TABLE_METRICS = ("accuracy", "f1_macro", "epoch_time_s", "peak_memory_mb", "trainable_params", "epochs_run")
INTEGER_METRICS = ("trainable_params", "best_epoch", "epochs_run")
THRESHOLDS = (0.99, 0.98)
"""Quality levels, relative to the best trial, at which the cheapest trial is named in the recommendation."""

BASELINE = "none"
"""Full fine-tuning: the reference a freezing strategy has to beat on cost."""

PLOT_FILES = (
    "metric_vs_epoch_time.png",
    "metric_vs_peak_memory.png",
    "metric_by_strategy.png",
    "metric_vs_bottom_n.png",
    "learning_curves.png",
    "optimization_history.png",
    "param_importances.png",
    "pareto_front.png",
)

_STATES = {
    TrialState.COMPLETE: "complete",
    TrialState.PRUNED: "pruned",
    TrialState.FAIL: "failed",
    TrialState.RUNNING: "running",
    TrialState.WAITING: "waiting",
}


# -- the table ----------------------------------------------------------------------------------------------------
def _direction_of(metric: str) -> str:
    from sweeps.metrics import direction

    try:
        return direction(metric)
    except KeyError:
        return "maximize"


def _study_metric(study: optuna.Study) -> tuple[str, str]:
    """The optimised metric as recorded in the study itself (so ``trials_table`` needs no study file)."""
    names = study.user_attrs.get("objectives") or []
    dirs = [d.name.lower() for d in study.directions]
    for i, name in enumerate(names):
        if name in QUALITY_METRICS:
            return name, dirs[i] if i < len(dirs) else _direction_of(name)
    if names:
        return names[0], dirs[0]
    return "accuracy", dirs[0] if len(dirs) == 1 else "maximize"


def _trials(study: optuna.Study) -> list[FrozenTrial]:
    """Every trial except the surplus ones (asked and closed at once when other workers had used up the budget)."""
    return [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("surplus")]


def _strategy(trial: FrozenTrial) -> str:
    return str(trial.user_attrs.get("strategy") or trial.params.get("strategy") or "?")


def _metrics(trial: FrozenTrial) -> dict[str, float]:
    out = {}
    for key, value in trial.user_attrs.items():
        if key.startswith("metric."):
            try:
                out[key[len("metric.") :]] = float(value)
            except (TypeError, ValueError):
                continue
    return out


def _short_name(name: str, strategy: str) -> str:
    if name.startswith("training."):
        return name[len("training.") :]
    if name.startswith(f"{strategy}."):
        return name[len(strategy) + 1 :]
    return name.split(".", 1)[1] if "." in name else name


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
    reserved = {"number", "state", "strategy", "frozen_params_verified", "fail_reason", "duration_s", *TABLE_METRICS}
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
    for name in [metric, *(study.user_attrs.get("objectives") or [])]:
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
        verified = t.user_attrs.get("frozen_params_verified")
        row["frozen_params_verified"] = None if verified is None else bool(verified)
        row["fail_reason"] = t.user_attrs.get("fail_reason") or ""
        row["duration_s"] = _duration(t)
        rows.append(row)
    ordered = ["number", "state", "strategy", *dict.fromkeys(columns.values()), *metric_cols,
               "frozen_params_verified", "fail_reason", "duration_s"]
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
    table = table.sort_values("number", kind="stable")
    table = table.sort_values(metric, ascending=direction == "minimize", na_position="last", kind="stable")
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
def objectives_of(spec: Any) -> list[tuple[str, str]]:
    """(metric, direction) per objective of the study file; the task metric when the file lists none."""
    items = list(getattr(spec.optuna, "objectives", None) or [spec.task.metric])
    out = []
    for item in items:
        if isinstance(item, str):
            out.append((item, _direction_of(item)))
        else:
            out.append((item.metric, getattr(item, "direction", None) or _direction_of(item.metric)))
    return out


def primary_metric(spec: Any) -> tuple[str, str]:
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


# -- the recommendation -------------------------------------------------------------------------------------------
def _quality(value: float, best: float, direction: str) -> float:
    """How close ``value`` is to ``best``, as a fraction (1.0 = as good). For losses the reciprocal keeps "higher is
    better" so one threshold test serves both directions."""
    if value == best:
        return 1.0
    if direction == "maximize":
        return value / best if best > 0 else -math.inf
    return best / value if value > 0 else -math.inf


def _within(value: float, best: float, direction: str, level: float) -> bool:
    """Is ``value`` within ``level`` of ``best``: ≥ 99% of the best accuracy, or ≤ 1% above the best loss."""
    if direction == "maximize":
        return _quality(value, best, direction) >= level - 1e-12
    return value <= best * (2 - level) + 1e-12


def _ratio(value: Any, ref: Any) -> float | None:
    try:
        value, ref = float(value), float(ref)
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(value) and math.isfinite(ref)) or ref <= 0:
        return None
    return value / ref


def _costs(row: pd.Series, ref: pd.Series, whose: str = "its") -> str:
    """"at 46% of its epoch time and 61% of its peak memory" — only the costs measured for both trials."""
    parts = []
    for col, what in (("epoch_time_s", "epoch time"), ("peak_memory_mb", "peak memory")):
        r = _ratio(row.get(col), ref.get(col))
        if r is not None:
            parts.append(f"{r:.0%} of {'its' if parts else whose} {what}")
    return "at " + " and ".join(parts) if parts else "(no cost measured)"


def _cost_text(row: pd.Series) -> str:
    parts = []
    if pd.notna(row.get("epoch_time_s")):
        parts.append(f"{row['epoch_time_s']:.2f} s/epoch")
    if pd.notna(row.get("peak_memory_mb")):
        parts.append(f"{row['peak_memory_mb']:.0f} MB peak memory")
    if pd.notna(row.get("trainable_params")):
        parts.append(f"{int(row['trainable_params']):,} trainable parameters")
    return ", ".join(parts)


def _relative(value: float, best: float, metric: str, direction: str) -> str:
    if direction == "maximize":
        return f"{_quality(value, best, direction):.1%} of the best {metric}"
    return f"{(value / best - 1) if best > 0 else 0:.1%} above the best {metric}"


def recommendation(
    table: pd.DataFrame,
    metric: str,
    direction: str,
    labels: dict[int, str] | None = None,
    *,
    epochs: int | None = None,
    pareto: Sequence[int] = (),
    objectives: Sequence[str] = (),
) -> list[str]:
    """Sentences computed from the table: the best trial, the cheapest trial (by epoch time) within 99% and 98% of
    its quality, both against full fine-tuning, what ended how, and warnings the numbers raise."""
    labels = labels or {}

    def name(row: pd.Series) -> str:
        text = labels.get(int(row["number"]), f"trial {int(row['number'])}, {row['strategy']}")
        verified = row.get("frozen_params_verified")
        return text + (" [frozen parameters not verified]" if verified is False or verified is np.False_ else "")

    out: list[str] = []
    counts = Counter(table["state"]) if len(table) else Counter()
    states = ", ".join(f"{counts[s]} {s}" for s in ("complete", "pruned", "failed", "running", "waiting") if counts[s])
    out.append(f"{len(table)} trial{'s' if len(table) != 1 else ''}" + (f": {states}." if states else "."))
    failed = table[table["state"] == "failed"] if len(table) else table
    if len(failed):
        reasons = Counter(str(r).split("\n")[0][:160] or "no reason recorded" for r in failed["fail_reason"])
        out.append("Failure reasons: " + "; ".join(f"{r} ({n}×)" for r, n in reasons.most_common(5)) + ".")

    done = table[(table["state"] == "complete") & table[metric].notna()] if len(table) else table
    if done.empty:
        out.append(f"No trial completed with a {metric}, so there is nothing to compare or recommend yet.")
        return out
    ascending = direction == "minimize"
    done = done.sort_values([metric, "epoch_time_s", "number"], ascending=[ascending, True, True], na_position="last")
    best = done.iloc[0]
    best_value = float(best[metric])
    cost = _cost_text(best)
    out.append(f"Best: {name(best)}: {metric} {best_value:.4f}" + (f" ({cost})." if cost else "."))
    if len(done) == 1:
        out.append("Only one trial completed: there is nothing to compare it with yet.")

    picks: list[pd.Series] = []
    if len(done) > 1:
        timed = done[done["epoch_time_s"].notna()]
        for level in THRESHOLDS:
            what = f"{level if direction == 'maximize' else 1 - level:.0%} of the best {metric}"
            close = timed[[_within(float(v), best_value, direction, level) for v in timed[metric]]]
            if close.empty:
                continue
            pick = close.sort_values(["epoch_time_s", metric, "number"], ascending=[True, ascending, True]).iloc[0]
            if any(int(p["number"]) == int(pick["number"]) for p in picks):
                continue
            if int(pick["number"]) == int(best["number"]):
                out.append(f"No trial within {what} is faster per epoch than the best trial itself.")
                picks.append(pick)
                continue
            picks.append(pick)
            whose = "the best trial's"
            out.append(
                f"Cheapest within {what}: {name(pick)}: {metric} {float(pick[metric]):.4f} "
                f"({_relative(float(pick[metric]), best_value, metric, direction)}) {_costs(pick, best, whose)}."
            )

    base = done[done["strategy"] == BASELINE]
    if base.empty:
        out.append(f"No completed full fine-tuning ({BASELINE}) trial to compare with.")
    else:
        ref = base.iloc[0]
        ref_value = float(ref[metric])
        others = [best, *picks]
        compared = []
        for row in others:
            if int(row["number"]) == int(ref["number"]) or any(int(row["number"]) == n for n in compared):
                continue
            compared.append(int(row["number"]))
            value = float(row[metric])
            if direction == "maximize":
                rel = f"reaches {_quality(value, ref_value, direction):.1%} of its {metric}"
            else:
                change = (value / ref_value - 1) if ref_value > 0 else 0.0
                rel = f"has a {abs(change):.1%} {'lower' if change <= 0 else 'higher'} {metric}"
            out.append(
                f"Against full fine-tuning ({name(ref)}: {metric} {ref_value:.4f}): {name(row)} {rel} "
                f"{_costs(row, ref)}."
            )
        if int(best["number"]) == int(ref["number"]):
            out.append(f"Full fine-tuning ({BASELINE}) is the best trial: no freezing strategy beat its {metric}.")

    if len(pareto) and len(objectives) > 1:
        out.append(
            f"{len(pareto)} trial{'s are' if len(pareto) != 1 else ' is'} Pareto-optimal for "
            f"({', '.join(objectives)}): trials {', '.join(str(n) for n in sorted(pareto))}."
        )
    if "frozen_params_verified" in table:
        bad = table[table["frozen_params_verified"].map(lambda v: v is False or v is np.False_)]
        if len(bad):
            out.append(
                f"Warning: frozen parameters changed during training in trial{'s' if len(bad) > 1 else ''} "
                f"{', '.join(str(n) for n in sorted(bad['number']))} (frozen_params_verified is false): their "
                "freezing did not hold, so their costs and quality do not measure the strategy."
            )
    if epochs and "epochs_run" in table:
        early = done[done["epochs_run"].notna() & (done["epochs_run"] < epochs)]
        if len(early):
            out.append(
                f"Stopped early (fewer than {epochs} epochs): trial{'s' if len(early) > 1 else ''} "
                f"{', '.join(str(int(n)) for n in sorted(early['number']))}."
            )
    return out


# -- plots --------------------------------------------------------------------------------------------------------
@dataclass
class _Plot:
    file: str | None
    title: str
    note: str = ""


@dataclass
class _Context:
    study: optuna.Study
    table: pd.DataFrame
    metric: str
    direction: str
    objectives: list[tuple[str, str]]
    epochs: int
    out: Path
    colors: dict[str, Any] = field(default_factory=dict)

    @property
    def done(self) -> pd.DataFrame:
        t = self.table
        return t[(t["state"] == "complete") & t[self.metric].notna()] if len(t) else t


def _integer_ticks(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _figure(width: float = 7.5, height: float = 4.8) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _finish_metric_plot(fig: Any, ax: Any, ctx: Any, file: str, title: str, xlabel: str) -> None:
    """The common tail of the plots whose x axis counts something (n, epoch, trial) and whose y axis is the metric."""
    _integer_ticks(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ctx.metric)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, ctx.out / file)


def _save(fig: Any, path: Path) -> None:
    fig.savefig(path, dpi=110)


def _colors(strategies: Iterable[str]) -> dict[str, Any]:
    import matplotlib

    names = sorted(set(strategies))
    cmap = matplotlib.colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {s: cmap(i % cmap.N) for i, s in enumerate(names)}


def pareto_front(costs: Sequence[float], values: Sequence[float], direction: str) -> list[int]:
    """Indices of the non-dominated points: no other point is at least as cheap and at least as good, and strictly
    better in one of the two. Ordered by cost."""
    sign = 1.0 if direction == "maximize" else -1.0
    order = sorted(range(len(costs)), key=lambda i: (costs[i], -sign * values[i]))
    front: list[int] = []
    best = -math.inf
    for i in order:
        v = sign * values[i]
        if v > best:
            front.append(i)
            best = v
    return front


def _plot_cost(ctx: _Context, cost: str, what: str, file: str) -> _Plot:
    title = f"{ctx.metric} vs {what}"
    done = ctx.done[ctx.done[cost].notna()] if len(ctx.done) else ctx.done
    if done.empty:
        return _Plot(None, title, f"No completed trial with {ctx.metric} and {cost}.")
    fig = _figure()
    ax = fig.add_subplot()
    for strategy, part in done.groupby("strategy"):
        ax.scatter(part[cost], part[ctx.metric], color=ctx.colors[strategy], label=strategy, s=40, alpha=0.85)
    costs, values = done[cost].astype(float).tolist(), done[ctx.metric].astype(float).tolist()
    front = pareto_front(costs, values, ctx.direction)
    ax.step([costs[i] for i in front], [values[i] for i in front], where="post", color="black", lw=1, alpha=0.6)
    ax.scatter([costs[i] for i in front], [values[i] for i in front], s=140, facecolors="none", edgecolors="black",
               lw=1.2, label="Pareto front")
    for c, v, n in zip(costs, values, done["number"]):
        ax.annotate(str(int(n)), (c, v), textcoords="offset points", xytext=(4, 4), fontsize=7, color="0.3")
    ax.set_xlabel(f"{cost} (lower is cheaper)")
    ax.set_ylabel(f"{ctx.metric} ({'higher' if ctx.direction == 'maximize' else 'lower'} is better)")
    ax.set_title(title + " (numbers: trial)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    _save(fig, ctx.out / file)
    front_trials = ", ".join(str(int(done.iloc[i]["number"])) for i in front)
    note = f"Pareto front (no other trial is both at least as cheap and at least as good): trials {front_trials}."
    return _Plot(file, title, note)


def _plot_by_strategy(ctx: _Context) -> _Plot:
    file, title = "metric_by_strategy.png", f"{ctx.metric} by strategy"
    done = ctx.done
    if done.empty:
        return _Plot(None, title, "No completed trial.")
    names = sorted(done["strategy"].unique())
    data = [done.loc[done["strategy"] == s, ctx.metric].astype(float).to_numpy() for s in names]
    fig = _figure(max(5.0, 1.2 * len(names) + 2), 4.5)
    ax = fig.add_subplot()
    ax.boxplot(data, positions=range(1, len(names) + 1), widths=0.5, showfliers=False, medianprops={"color": "black"})
    rng = np.random.default_rng(0)  # fixed jitter: the same study gives the same picture
    for i, (s, values) in enumerate(zip(names, data), start=1):
        ax.scatter(i + rng.uniform(-0.12, 0.12, len(values)), values, color=ctx.colors[s], s=30, zorder=3, alpha=0.9)
    ax.set_xticks(range(1, len(names) + 1))
    ax.set_xticklabels([f"{s}\n(n={len(v)})" for s, v in zip(names, data)], fontsize=8)
    ax.set_ylabel(ctx.metric)
    ax.set_title(f"{title} (completed trials)")
    ax.grid(axis="y", alpha=0.3)
    _save(fig, ctx.out / file)
    return _Plot(file, title)


def _plot_bottom_n(ctx: _Context) -> _Plot:
    file, title = "metric_vs_bottom_n.png", f"{ctx.metric} vs N (bottom_n)"
    points = []
    for t in _trials(ctx.study):
        if t.state != TrialState.COMPLETE or "bottom_n.n" not in t.params:
            continue
        value = _metrics(t).get(ctx.metric)
        if value is not None and math.isfinite(value):
            points.append((float(t.params["bottom_n.n"]), value, t.number))
    if not points:
        return _Plot(None, title, "No completed bottom_n trial with a searched n (parameter bottom_n.n): plot skipped.")
    fig = _figure(6.5, 4.2)
    ax = fig.add_subplot()
    xs, ys, _ = zip(*points)
    ax.scatter(xs, ys, color=ctx.colors.get("bottom_n", "C0"), s=40, label="trial")
    means = pd.Series(ys).groupby(pd.Series(xs)).mean()
    ax.plot(means.index, means.to_numpy(), color="black", lw=1, marker="_", label="mean per n")
    for x, y, n in points:
        ax.annotate(str(n), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color="0.3")
    base = ctx.done[ctx.done["strategy"] == BASELINE] if len(ctx.done) else ctx.done
    if len(base):
        ax.axhline(float(base.iloc[0][ctx.metric]), color="0.5", ls=":", label=f"best {BASELINE} (full fine-tuning)")
    _finish_metric_plot(fig, ax, ctx, file, title, "n (frozen bottom layers)")
    return _Plot(file, title)


def read_epochs(out: Path, number: int) -> list[dict[str, Any]] | None:
    """The per-epoch series the runner writes for a trial, or None when missing or unreadable (a report must not
    fail because one trial's file was lost)."""
    path = out / "trials" / f"trial_{number}_epochs.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, list) else None


def _plot_curves(ctx: _Context, study_out: Path) -> _Plot:
    file, title = "learning_curves.png", f"{ctx.metric} per epoch"
    fig = _figure()
    ax = fig.add_subplot()
    drawn, used_intermediate = 0, False
    seen: set[str] = set()
    for t in _trials(ctx.study):
        if t.state not in (TrialState.COMPLETE, TrialState.PRUNED):
            continue
        strategy = _strategy(t)
        series = read_epochs(study_out, t.number)
        xs: list[float] = []
        ys: list[float] = []
        if series:
            for e in series:
                if ctx.metric in e and "epoch" in e and e[ctx.metric] is not None:
                    xs.append(int(e["epoch"]) + 1)
                    ys.append(float(e[ctx.metric]))
        elif t.intermediate_values:
            # no per-epoch file (the runner writes it for completed trials): the values reported to the pruner
            used_intermediate = True
            for step, value in sorted(t.intermediate_values.items()):
                xs.append(step + 1)
                ys.append(value)
        if not xs:
            continue
        pruned = t.state == TrialState.PRUNED
        label = strategy if strategy not in seen else None
        seen.add(strategy)
        ax.plot(xs, ys, color=ctx.colors.get(strategy, "C0"), ls="--" if pruned else "-", marker="o", ms=3,
                lw=1.2, alpha=0.8, label=label)
        drawn += 1
    if not drawn:
        return _Plot(None, title, "No per-epoch series found (trials/trial_<n>_epochs.json) and no pruned trial.")
    ax.plot([], [], color="0.4", ls="--", label="pruned")
    ax.set_xlim(0.8, max(ctx.epochs, 1) + 0.2)
    _finish_metric_plot(fig, ax, ctx, file, f"{title} (dashed: pruned)", "epoch")
    note = "Pruned trials are drawn from the values reported to the pruner." if used_intermediate else ""
    return _Plot(file, title, note)


def _plot_history(ctx: _Context) -> _Plot:
    file, title = "optimization_history.png", f"Optimisation history ({ctx.metric})"
    done = ctx.done.sort_values("number") if len(ctx.done) else ctx.done
    if done.empty:
        return _Plot(None, title, "No completed trial.")
    fig = _figure(7.5, 4.2)
    ax = fig.add_subplot()
    for strategy, part in done.groupby("strategy"):
        ax.scatter(part["number"], part[ctx.metric], color=ctx.colors[strategy], s=30, label=strategy)
    values = done[ctx.metric].astype(float).to_numpy()
    running = np.maximum.accumulate(values) if ctx.direction == "maximize" else np.minimum.accumulate(values)
    ax.step(done["number"], running, where="post", color="black", lw=1.2, label="best so far")
    _finish_metric_plot(fig, ax, ctx, file, title, "trial")
    return _Plot(file, title)


def param_importances(ctx: _Context) -> tuple[dict[str, dict[str, float]], list[str]]:
    """fANOVA importances for the metric: over the parameters every completed trial has (``strategy``, training
    fields) and, per strategy, over that strategy's own parameters plus the training fields its trials share — the
    global view cannot see ``bottom_n.n`` because the other strategies' trials lack it. A scope with a single
    parameter is left out (its importance is 1 by construction). Returns (importances by scope, notes on what could
    not be computed) — too few trials or constant parameters are a normal state of a young study."""
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    metric_of = {t.number: _metrics(t).get(ctx.metric) for t in _trials(ctx.study)}

    def target(t: FrozenTrial) -> float:
        value = metric_of.get(t.number)
        return float(value) if value is not None else math.nan

    complete = [t for t in _trials(ctx.study) if t.state == TrialState.COMPLETE and target(t) == target(t)]
    scopes: dict[str, list[str] | None] = {"all trials": None}
    for strategy in sorted({_strategy(t) for t in complete}):
        mine = [t for t in complete if _strategy(t) == strategy]
        own = sorted({k for t in mine for k in t.params if k.startswith(f"{strategy}.")})
        shared = sorted(set.intersection(*({k for k in t.params if k.startswith("training.")} for t in mine)))
        if own:
            scopes[strategy] = own + shared
    results: dict[str, dict[str, float]] = {}
    notes: list[str] = []
    for scope, params in scopes.items():
        relevant = [t for t in complete if params is None or all(p in t.params for p in params)]
        varying = params is None or any(len({t.params[p] for t in relevant}) > 1 for p in params)
        if len(relevant) < 2 or not varying:
            notes.append(f"{scope}: not computed (needs at least 2 completed trials with varying parameters; "
                         f"{len(relevant)} completed).")
            continue
        try:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                imp = get_param_importances(
                    ctx.study, evaluator=FanovaImportanceEvaluator(seed=0), params=params, target=target
                )
        except Exception as exc:  # e.g. an empty intersection search space
            notes.append(f"{scope}: not computed ({type(exc).__name__}: {exc}).")
            continue
        imp = {k: v for k, v in imp.items() if math.isfinite(v)}
        if len(imp) < 2:
            notes.append(f"{scope}: not computed (fewer than 2 parameters shared by its completed trials).")
            continue
        results[scope] = imp
    return results, notes


def _plot_importances(ctx: _Context) -> tuple[_Plot, dict[str, dict[str, float]]]:
    file, title = "param_importances.png", f"Parameter importances for {ctx.metric} (fANOVA)"
    results, notes = param_importances(ctx)
    if not results:
        return _Plot(None, title, " ".join(notes) or "Not computed."), results
    fig = _figure(7.5, 1.0 + sum(0.35 * len(v) + 0.9 for v in results.values()))
    axes = fig.subplots(len(results), 1, squeeze=False)[:, 0]
    for ax, (scope, imp) in zip(axes, results.items()):
        names = list(imp)[::-1]
        ax.barh(names, [imp[n] for n in names], color="C0")
        ax.set_xlim(0, 1)
        ax.set_title(scope, fontsize=9)
        ax.tick_params(labelsize=8)
    axes[-1].set_xlabel("importance (sums to 1 per panel)")
    _save(fig, ctx.out / file)
    return _Plot(file, title, " ".join(notes)), results


def _plot_pareto_objectives(ctx: _Context) -> tuple[_Plot, list[int]]:
    file = "pareto_front.png"
    names = [m for m, _ in ctx.objectives]
    title = f"Pareto front of the objectives ({', '.join(names)})"
    try:
        best = ctx.study.best_trials
    except (ValueError, RuntimeError):
        best = []
    best = [t for t in best if not t.user_attrs.get("surplus")]
    numbers = [t.number for t in best]
    complete = [t for t in _trials(ctx.study) if t.state == TrialState.COMPLETE and t.values]
    if not complete:
        return _Plot(None, title, "No completed trial."), numbers
    fig = _figure(6.5, 4.5)
    ax = fig.add_subplot()
    on = set(numbers)
    for t in complete:
        ax.scatter(t.values[0], t.values[1], color="C3" if t.number in on else "0.6", s=45 if t.number in on else 25,
                   zorder=3 if t.number in on else 2)
        ax.annotate(str(t.number), (t.values[0], t.values[1]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    front = sorted((t for t in complete if t.number in on), key=lambda t: t.values[0])
    ax.plot([t.values[0] for t in front], [t.values[1] for t in front], color="C3", lw=1, alpha=0.6)
    ax.scatter([], [], color="C3", label="Pareto-optimal")
    ax.scatter([], [], color="0.6", label="dominated")
    dirs = [d for _, d in ctx.objectives]
    ax.set_xlabel(f"{names[0]} ({dirs[0]})")
    ax.set_ylabel(f"{names[1]} ({dirs[1]})")
    ax.set_title(title if len(names) == 2 else f"{title}: first two shown")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, ctx.out / file)
    return _Plot(file, title), numbers


# -- HTML ---------------------------------------------------------------------------------------------------------
_CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 2rem auto;
       max-width: 1200px; padding: 0 1rem; color: #222; line-height: 1.45; }
h1 { margin-bottom: .2rem; } .sub { color: #666; margin-top: 0; }
.rec { background: #f3f7fb; border-left: 4px solid #2a6fb0; padding: .6rem 1.2rem; }
.rec li { margin: .25rem 0; } .warn { color: #a33; font-weight: 600; }
table { border-collapse: collapse; font-size: .82rem; margin: .5rem 0 1.5rem; }
th, td { border: 1px solid #ddd; padding: .25rem .5rem; text-align: right; white-space: nowrap; }
th { background: #f4f4f4; } td:nth-child(-n+3) { text-align: left; }
tr.failed td { color: #a33; } tr.pruned td { color: #777; } tr.running td { color: #27a; }
td.reason { text-align: left; white-space: normal; max-width: 28rem; }
figure { margin: 1rem 0 2rem; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption, .note { color: #555; font-size: .9rem; }
.wrap { overflow-x: auto; }
"""


def _html_table(table: pd.DataFrame) -> str:
    if table.empty:
        return '<p class="note">(none)</p>'
    display = _display(table)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in display.columns)
    body = []
    states = table["state"] if "state" in table else pd.Series([""] * len(table))
    for (_, row), state in zip(display.iterrows(), states):
        cells = "".join(
            f'<td class="reason">{html.escape(v)}</td>' if c == "fail_reason" else f"<td>{html.escape(v)}</td>"
            for c, v in row.items()
        )
        body.append(f'<tr class="{html.escape(str(state))}">{cells}</tr>')
    return f'<div class="wrap"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _html_plot(plot: _Plot) -> str:
    note = f'<p class="note">{html.escape(plot.note)}</p>' if plot.note else ""
    if plot.file is None:
        return f"<h3>{html.escape(plot.title)}</h3>{note or '<p class=note>Not drawn.</p>'}"
    return (
        f'<figure><img src="{html.escape(plot.file)}" alt="{html.escape(plot.title)}">'
        f"<figcaption>{html.escape(plot.title)}</figcaption>{note}</figure>"
    )


def _render(
    spec: Any, ctx: _Context, sentences: list[str], best: pd.DataFrame, plots: list[_Plot],
    importances: dict[str, dict[str, float]], pareto_rows: pd.DataFrame | None,
) -> str:
    objectives = ", ".join(f"{m} ({d})" for m, d in ctx.objectives)
    items = "".join(
        f'<li class="warn">{html.escape(s)}</li>' if s.startswith("Warning") else f"<li>{html.escape(s)}</li>"
        for s in sentences
    )
    imp_html = ""
    if importances:
        rows = "".join(
            f"<tr><td>{html.escape(scope)}</td><td>{html.escape(p)}</td><td>{v:.3f}</td></tr>"
            for scope, imp in importances.items() for p, v in imp.items()
        )
        imp_html = f"<table><thead><tr><th>scope</th><th>parameter</th><th>importance</th></tr></thead>{rows}</table>"
    pareto_html = ""
    if pareto_rows is not None:
        pareto_html = f"<h2>Pareto-optimal trials ({html.escape(objectives)})</h2>{_html_table(pareto_rows)}"
    figures = "".join(_html_plot(p) for p in plots)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(str(spec.name))} — freeze-sweeps report</title>
<style>{_CSS}</style></head><body>
<h1>{html.escape(str(spec.name))}</h1>
<p class="sub">Study <code>{html.escape(ctx.study.study_name)}</code> · ranked by <b>{html.escape(ctx.metric)}</b>
({html.escape(ctx.direction)}) · objectives: {html.escape(objectives)} · up to {ctx.epochs} epochs per trial ·
written {html.escape(time.strftime("%Y-%m-%d %H:%M:%S"))}</p>
<h2>Recommendation</h2><div class="rec"><ul>{items}</ul></div>
<h2>Best trial per strategy</h2>{_html_table(best)}
{pareto_html}
<h2>Plots</h2>{figures}
{imp_html}
<h2>All trials</h2>
<p class="note">Also as <a href="trials.csv">trials.csv</a> and <a href="trials.md">trials.md</a>; final metrics exist
for completed trials only.</p>
{_html_table(ctx.table)}
</body></html>
"""


# -- entry point --------------------------------------------------------------------------------------------------
def write_report(
    spec: Any, out: Path, *, study: optuna.Study, tracker: Any = None, parent_run_id: str | None = None
) -> Path:
    """Write ``<out>/report/`` and return the path of its ``index.html``; with a tracker and a parent run, also log
    the folder (``report/``) and ``trials.csv`` to that run. A logging failure is a warning: the files on disk are
    the report."""
    out = Path(out)
    report_dir = out / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    metric, direction = primary_metric(spec)
    objectives = objectives_of(spec)
    table = trials_table(study, metric=metric, direction=direction)
    ctx = _Context(study, table, metric, direction, objectives, int(spec.training.epochs), report_dir)
    ctx.colors = _colors(table["strategy"]) if len(table) else {}
    labels = trial_labels(study)

    plots = [
        _plot_cost(ctx, "epoch_time_s", "epoch time", "metric_vs_epoch_time.png"),
        _plot_cost(ctx, "peak_memory_mb", "peak memory", "metric_vs_peak_memory.png"),
        _plot_by_strategy(ctx),
        _plot_bottom_n(ctx),
        _plot_curves(ctx, out),
        _plot_history(ctx),
    ]
    importance_plot, importances = _plot_importances(ctx)
    plots.append(importance_plot)
    pareto: list[int] = []
    pareto_rows = None
    if len(objectives) > 1:
        pareto_plot, pareto = _plot_pareto_objectives(ctx)
        plots.append(pareto_plot)
        pareto_rows = table[table["number"].isin(pareto)] if len(table) else table
    made = {p.file for p in plots if p.file}
    for name in PLOT_FILES:  # a plot that is not drawn this time must not linger from an earlier report
        if name not in made:
            (report_dir / name).unlink(missing_ok=True)

    sentences = recommendation(
        table, metric, direction, labels, epochs=ctx.epochs, pareto=pareto, objectives=[m for m, _ in objectives]
    )
    best = best_per_strategy(table, metric) if len(table) else table
    table.to_csv(report_dir / "trials.csv", index=False)
    best.to_csv(report_dir / "best_per_strategy.csv", index=False)
    (report_dir / "trials.md").write_text(to_markdown(table) if len(table) else "(no trials yet)\n")
    (report_dir / "recommendation.txt").write_text("\n".join(sentences) + "\n")
    index = report_dir / "index.html"
    index.write_text(_render(spec, ctx, sentences, best, plots, importances, pareto_rows), encoding="utf-8")

    if tracker is not None and parent_run_id:
        try:
            tracker.log_dir(parent_run_id, report_dir, "report")
            tracker.log_file(parent_run_id, report_dir / "trials.csv")
        except Exception as exc:  # the report on disk is complete; MLflow is a copy
            log.warning("report written to %s but not logged to MLflow run %s: %s", report_dir, parent_run_id, exc)
    return index
