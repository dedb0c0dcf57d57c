"""The report's plots: quality against each cost, by strategy, against ``n``, learning curves, history,
importances and the Pareto front.

Drawn on :class:`matplotlib.figure.Figure` objects directly, not through ``pyplot``: no global backend switch and no
figure registry that leaks memory across reports. The exceptions are the plots ``optuna.visualization.matplotlib``
already draws (Pareto front, parallel coordinates), whose pyplot figure is closed as soon as it is saved.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from sweeps.records import TrialAttr, epochs_file
from sweeps.report.recommend import BASELINE
from sweeps.report.table import _metrics, _strategy, _trials

PLOT_FILES = (
    "metric_vs_epoch_time.png",
    "metric_vs_peak_memory.png",
    "metric_by_strategy.png",
    "metric_vs_bottom_n.png",
    "learning_curves.png",
    "optimization_history.png",
    "param_importances.png",
    "pareto_front.png",
    "parallel_coordinates.png",
    "freeze_schedule.png",
    "lr_per_group.png",
)


MIN_BOX_POINTS = 3
"""Fewer points than this per strategy are drawn as points only, without a box."""

MIN_COST_SPREAD = 0.05
"""A cost that varies by less than this fraction of its value is noise: no Pareto front is drawn over it (on CPU,
peak memory differs by a few MB between trials)."""


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


def _discrete_axis(ax: Any, values: Iterable[float]) -> None:
    """Ticks at the sampled values only, one unit of margin: a single value must not become a 3.80…4.20 range."""
    ticks = sorted({float(v) for v in values})
    ax.set_xticks(ticks)
    ax.set_xlim(ticks[0] - 1, ticks[-1] + 1)


def _figure(width: float = 7.5, height: float = 4.8) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _finish_metric_plot(fig: Any, ax: Any, ctx: Any, file: str, title: str, xlabel: str) -> None:
    """The common tail of the plots whose x axis counts something (n, epoch, trial) and whose y axis is the metric."""
    if not ax.get_xticks().size or not all(float(t).is_integer() for t in ax.get_xticks()):
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
    spread = max(costs) - min(costs)
    if spread < MIN_COST_SPREAD * max(abs(max(costs)), 1e-12):
        ax.set_xlabel(f"{cost} (lower is cheaper)")
        ax.set_ylabel(ctx.metric)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
        _save(fig, ctx.out / file)
        return _Plot(file, title, f"{cost} varies by {spread:.3g} only ({MIN_COST_SPREAD:.0%} or less of its value): "
                                  "measurement noise, so no Pareto front is drawn.")
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
    boxed = [(i, v) for i, v in enumerate(data, start=1) if len(v) >= MIN_BOX_POINTS]
    if boxed:  # a box over one or two points draws a spread that was never measured
        ax.boxplot([v for _, v in boxed], positions=[i for i, _ in boxed], widths=0.5, showfliers=False,
                   medianprops={"color": "black"})
    rng = np.random.default_rng(0)  # fixed jitter: the same study gives the same picture
    for i, (s, values) in enumerate(zip(names, data), start=1):
        ax.scatter(i + rng.uniform(-0.12, 0.12, len(values)), values, color=ctx.colors[s], s=30, zorder=3, alpha=0.9)
    ax.set_xticks(range(1, len(names) + 1))
    ax.set_xticklabels([f"{s}\n(n={len(v)})" for s, v in zip(names, data)], fontsize=8)
    ax.set_ylabel(ctx.metric)
    ax.set_title(f"{title} (completed trials)")
    ax.grid(axis="y", alpha=0.3)
    _save(fig, ctx.out / file)
    return _Plot(file, title, f"Boxes only for strategies with at least {MIN_BOX_POINTS} completed trials.")


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
    if len(means) > 1:  # one sampled n has no trend to draw
        ax.plot(means.index, means.to_numpy(), color="black", lw=1, marker="_", label="mean per n")
    _discrete_axis(ax, means.index)
    for x, y, n in points:
        ax.annotate(str(n), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color="0.3")
    base = ctx.done[ctx.done["strategy"] == BASELINE] if len(ctx.done) else ctx.done
    if len(base):
        ax.axhline(float(base.iloc[0][ctx.metric]), color="0.5", ls=":", label=f"best {BASELINE} (full fine-tuning)")
    _finish_metric_plot(fig, ax, ctx, file, title, "n (frozen bottom layers)")
    note = "Only one n was sampled: no trend across n can be read from this study." if len(means) == 1 else ""
    return _Plot(file, title, note)


def read_epochs(out: Path, number: int) -> list[dict[str, Any]] | None:
    """The per-epoch series the runner writes for a trial, or None when missing or unreadable (a report must not
    fail because one trial's file was lost)."""
    path = epochs_file(out, number)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, list) else None


def _curve(t: FrozenTrial, study_out: Path, metric: str) -> tuple[list[float], list[float], bool]:
    """(epochs, values, from_pruner) of one trial: its per-epoch file, else the values reported to the pruner."""
    xs: list[float] = []
    ys: list[float] = []
    series = read_epochs(study_out, t.number)
    if series:
        for e in series:
            if metric in e and "epoch" in e and e[metric] is not None:
                xs.append(int(e["epoch"]) + 1)
                ys.append(float(e[metric]))
        return xs, ys, False
    for step, value in sorted(t.intermediate_values.items()):
        xs.append(step + 1)
        ys.append(value)
    return xs, ys, bool(xs)


def _plot_curves(ctx: _Context, study_out: Path) -> _Plot:
    """One panel per strategy (shared axes): on one axis, a dozen curves of similar trials hide each other."""
    file, title = "learning_curves.png", f"{ctx.metric} per epoch"
    curves: dict[str, list[tuple[FrozenTrial, list[float], list[float]]]] = {}
    used_intermediate = False
    for t in _trials(ctx.study):
        if t.state not in (TrialState.COMPLETE, TrialState.PRUNED):
            continue
        xs, ys, from_pruner = _curve(t, study_out, ctx.metric)
        if xs:
            curves.setdefault(_strategy(t), []).append((t, xs, ys))
            used_intermediate |= from_pruner
    if not curves:
        return _Plot(None, title, "No per-epoch series found (trials/trial_<n>_epochs.json) and no pruned trial.")
    cols = min(len(curves), 3)
    rows = math.ceil(len(curves) / cols)
    fig = _figure(3.4 * cols + 0.8, 2.8 * rows + 0.6)
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True, sharey=True)
    for ax in axes.flat[len(curves):]:
        ax.set_visible(False)
    for ax, (strategy, items) in zip(axes.flat, sorted(curves.items())):
        for t, xs, ys in items:
            pruned = t.state == TrialState.PRUNED
            ax.plot(xs, ys, color=ctx.colors.get(strategy, "C0"), ls="--" if pruned else "-", marker="o", ms=3,
                    lw=1.2, alpha=0.85)
            ax.annotate(str(t.number), (xs[-1], ys[-1]), textcoords="offset points", xytext=(3, 0), fontsize=7,
                        color="0.3")
        ax.set_title(f"{strategy} ({len(items)})", fontsize=9, color=ctx.colors.get(strategy, "black"))
        ax.set_xlim(0.8, max(ctx.epochs, 1) + 0.4)
        _integer_ticks(ax)
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    for ax in axes[:, 0]:
        ax.set_ylabel(ctx.metric)
    fig.suptitle(f"{title} (dashed: pruned; numbers: trial)", fontsize=10)
    _save(fig, ctx.out / file)
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


COST_PLOTS = ("epoch_time_s", "peak_memory_mb")
"""Costs that have their own "metric vs cost" plot (with its Pareto front)."""


def _plot_pareto_objectives(ctx: _Context) -> tuple[_Plot, list[int]]:
    """Optuna's Pareto-front plot of the objectives, unless they are the metric and one cost: that plot is already
    drawn ("metric vs epoch time/peak memory", with its front), and a second copy with swapped axes says nothing new."""
    file = "pareto_front.png"
    names = [m for m, _ in ctx.objectives]
    title = f"Pareto front of the objectives ({', '.join(names)})"
    try:
        best = ctx.study.best_trials
    except (ValueError, RuntimeError):
        best = []
    numbers = [t.number for t in best if not t.user_attrs.get(TrialAttr.SURPLUS)]
    if len(names) == 2 and ctx.metric in names and any(c in names for c in COST_PLOTS):
        cost = next(c for c in names if c in COST_PLOTS)
        return _Plot(None, title, f"Drawn above as {ctx.metric} vs {cost}, with its Pareto front."), numbers
    if not any(t.state == TrialState.COMPLETE and t.values for t in _trials(ctx.study)):
        return _Plot(None, title, "No completed trial."), numbers
    from optuna.visualization.matplotlib import plot_pareto_front

    ax = _optuna_axes(plot_pareto_front, ctx.study, target_names=names)
    _save_optuna(ax, ctx.out / file)
    return _Plot(file, title), numbers


def plot_parallel_coordinates(ctx: _Context) -> _Plot:
    """Optuna's parallel-coordinate plot of the parameters every completed trial has, against the metric."""
    file, title = "parallel_coordinates.png", f"Parameters vs {ctx.metric} (parallel coordinates)"
    done = [t for t in _trials(ctx.study) if t.state == TrialState.COMPLETE and ctx.metric in _metrics(t)]
    if len(done) < 2:
        return _Plot(None, title, "Needs at least 2 completed trials.")
    shared = set.intersection(*(set(t.params) for t in done))
    if not shared:
        return _Plot(None, title, "No parameter is shared by every completed trial.")
    from optuna.visualization.matplotlib import plot_parallel_coordinate

    ax = _optuna_axes(plot_parallel_coordinate, ctx.study, params=sorted(shared),
                      target=lambda t: _metrics(t).get(ctx.metric, math.nan), target_name=ctx.metric)
    import matplotlib

    # Optuna colours a custom target with "Blues_r": the best trials come out near white, on white. viridis (dark =
    # low) keeps every line visible; the colour bar follows the same mappable.
    for collection in ax.collections:
        collection.set_cmap(matplotlib.colormaps["viridis" if ctx.direction == "maximize" else "viridis_r"])
    _save_optuna(ax, ctx.out / file)
    return _Plot(file, title)


def _optuna_axes(plot: Any, study: optuna.Study, **kwargs: Any) -> Any:
    """Call one of ``optuna.visualization.matplotlib``'s plots quietly (they are experimental and warn)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return plot(_reportable(study), **kwargs)


def _reportable(study: optuna.Study) -> optuna.Study:
    """A copy of the study without surplus trials (asked and closed at once; never trained)."""
    copy = optuna.create_study(directions=study.directions)
    copy.add_trials([t for t in _trials(study) if t.state in (TrialState.COMPLETE, TrialState.PRUNED)])
    return copy


def _save_optuna(ax: Any, path: Path) -> None:
    """Optuna draws with pyplot: save the figure, then close it so no figure leaks into pyplot's registry."""
    import matplotlib.pyplot as plt

    fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
    fig.set_size_inches(8, 5)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
