"""The study report: comparison table, plots and a recommendation computed from the measured numbers.

The question a freezing sweep answers is "how much quality do I give up for how much less compute?", so everything
here is organised around one quality metric (the optimised one) against the two costs every trial measures: epoch time
and peak memory. The report reads the Optuna study and the study folder only; it never trains or tracks.
"""

from sweeps.report.html import write_report
from sweeps.report.plots import pareto_front
from sweeps.report.recommend import recommendation
from sweeps.report.table import best_per_strategy, primary_metric, to_markdown, trials_table

__all__ = [
    "best_per_strategy",
    "pareto_front",
    "primary_metric",
    "recommendation",
    "to_markdown",
    "trials_table",
    "write_report",
]
