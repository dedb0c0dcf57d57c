"""The written recommendation, computed from the trials table.

Every number in it comes from the trials: a template that talks about unmeasured things would be worse
than no recommendation.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from sweeps.report.table import rank_completed

THRESHOLDS = (0.99, 0.98)
"""Quality levels, relative to the best trial, at which the cheapest trial is named in the recommendation."""


BASELINE = "none"
"""Full fine-tuning: the reference a freezing strategy has to beat on cost."""


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

    done = rank_completed(table, metric, direction)
    ascending = direction == "minimize"
    if done.empty:
        out.append(f"No trial completed with a {metric}, so there is nothing to compare or recommend yet.")
        return out
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
