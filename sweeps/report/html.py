"""The report folder: ``index.html``, ``trials.csv``, ``trials.md``, ``best_per_strategy.csv``, ``recommendation.txt``
and the plots as PNG files.

``index.html`` is self-contained (inline CSS, plots embedded as ``data:`` URIs): MLflow's artifact view serves each
artifact on its own URL, so relative image links broke there, and a mailed report has no folder next to it.
"""

from __future__ import annotations

import base64
import html
import logging
import time
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from sweeps import records
from sweeps.config import StudySpec
from sweeps.records import Artifact, StudyAttr
from sweeps.report.plots import (
    PLOT_FILES,
    _colors,
    _Context,
    _Plot,
    _plot_bottom_n,
    _plot_by_strategy,
    _plot_cost,
    _plot_curves,
    _plot_history,
    _plot_importances,
    _plot_pareto_objectives,
    plot_parallel_coordinates,
)
from sweeps.report.recommend import prediction_reader, recommendation
from sweeps.report.schedule_plots import plot_freeze_schedule, plot_lr_per_group
from sweeps.report.table import (
    _display,
    all_test_metrics,
    best_per_strategy,
    objectives_of,
    primary_metric,
    to_markdown,
    trial_labels,
    trials_table,
)

log = logging.getLogger(__name__)


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


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _html_plot(plot: _Plot, folder: Path) -> str:
    note = f'<p class="note">{html.escape(plot.note)}</p>' if plot.note else ""
    if plot.file is None:
        return f"<h3>{html.escape(plot.title)}</h3>{note or '<p class=note>Not drawn.</p>'}"
    return (
        f'<figure data-file="{html.escape(plot.file)}"><img src="{_data_uri(folder / plot.file)}" '
        f'alt="{html.escape(plot.title)}">'
        f"<figcaption>{html.escape(plot.title)}</figcaption>{note}</figure>"
    )


def _render(
    spec: StudySpec, ctx: _Context, sentences: list[str], best: pd.DataFrame, plots: list[_Plot],
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
    figures = "".join(_html_plot(p, ctx.out) for p in plots)
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
    spec: StudySpec, out: Path, *, study: optuna.Study, tracker: Any = None, parent_run_id: str | None = None
) -> Path:
    """Write ``<out>/report/`` and return the path of its ``index.html``; with a tracker and a parent run, also log
    the folder (``report/``) and ``trials.csv`` to that run. A logging failure is a warning: the files on disk are
    the report."""
    out = Path(out)
    report_dir = records.report_dir(out)
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
        plot_freeze_schedule(ctx, out),
        plot_lr_per_group(ctx, out),
        _plot_history(ctx),
        plot_parallel_coordinates(ctx),
    ]
    importance_plot, importances = _plot_importances(ctx)
    plots.append(importance_plot)
    pareto: list[int] = []
    pareto_rows = None
    if len(objectives) > 1:
        pareto_plot, pareto = _plot_pareto_objectives(ctx)
        if pareto_plot.file:
            plots.append(pareto_plot)
        pareto_rows = table[table["number"].isin(pareto)] if len(table) else table
    made = {p.file for p in plots if p.file}
    for name in PLOT_FILES:  # a plot that is not drawn this time must not linger from an earlier report
        if name not in made:
            (report_dir / name).unlink(missing_ok=True)

    label_names = study.user_attrs.get(StudyAttr.LABELS) or []
    sentences = recommendation(
        table,
        metric,
        direction,
        labels,
        epochs=ctx.epochs,
        pareto=pareto,
        objectives=[m for m, _ in objectives],
        predictions=prediction_reader(out, label_names) if label_names else None,
        num_labels=len(label_names) or None,
        test_metrics=all_test_metrics(study),
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
            tracker.log_dir(parent_run_id, report_dir, Artifact.REPORT)
            tracker.log_file(parent_run_id, report_dir / "trials.csv")
        except Exception as exc:  # the report on disk is complete; MLflow is a copy
            log.warning("report written to %s but not logged to MLflow run %s: %s", report_dir, parent_run_id, exc)
    return index
