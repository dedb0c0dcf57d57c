"""The report's recommendation: what ended how, the verdict (:mod:`sweeps.report.verdict`), the held-out test, and
the warnings the numbers raise. Every sentence is computed from the trials; none is written by hand.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from sweeps.report.noise import mean_std
from sweeps.report.verdict import BASELINE, STATES, Predictions, Verdict, config_id

__all__ = ["BASELINE", "prediction_reader", "recommendation"]


def prediction_reader(out: Path, label_names: Sequence[str]) -> Callable[[int], tuple[np.ndarray, np.ndarray] | None]:
    """Trial number → (labels, predictions) as label ids, read from ``<out>/predictions/trial_<n>_*.csv``."""
    index = {str(name): i for i, name in enumerate(label_names)}

    def read(number: int) -> tuple[np.ndarray, np.ndarray] | None:
        for kind in ("validation", "oof"):
            path = out / "predictions" / f"trial_{number}_{kind}.csv"
            if path.exists():
                frame = pd.read_csv(path, dtype={"label": str, "prediction": str}, keep_default_na=False)
                try:
                    order = np.argsort(frame["example_id"].to_numpy(), kind="stable")
                    labels = frame["label"].map(index).to_numpy()[order]
                    preds = frame["prediction"].map(index).to_numpy()[order]
                except KeyError:
                    return None
                if pd.isna(labels).any() or pd.isna(preds).any():
                    return None
                return labels.astype(np.int64), preds.astype(np.int64)
        return None

    return read


def recommendation(
    table: pd.DataFrame,
    metric: str,
    direction: str,
    labels: dict[int, str] | None = None,
    *,
    epochs: int | None = None,
    pareto: Sequence[int] = (),
    objectives: Sequence[str] = (),
    predictions: Predictions | None = None,
    num_labels: int | None = None,
    test_metrics: dict[int, dict[str, float]] | None = None,
) -> list[str]:
    """Sentences computed from the table: how trials ended, the verdict (health, best, baseline, ties, evidence per
    strategy), the finalists' held-out test scores, and warnings (frozen parameters, early stops, Pareto front)."""
    out: list[str] = []
    counts = Counter(table["state"]) if len(table) else Counter()
    states = ", ".join(f"{counts[s]} {s}" for s in (*STATES, "duplicate") if counts[s])
    out.append(f"{len(table)} trial{'s' if len(table) != 1 else ''}" + (f": {states}." if states else "."))
    if len(table) and "duplicate_of" in table and table["duplicate_of"].notna().any():
        dups = table[table["duplicate_of"].notna()]
        out.append(
            "Not trained again (same configuration as an earlier trial): "
            + ", ".join(f"trial {int(r['number'])} = trial {int(r['duplicate_of'])}" for _, r in dups.iterrows())
            + "."
        )
    failed = table[table["state"] == "failed"] if len(table) else table
    if len(failed):
        reasons = Counter(str(r).split("\n")[0][:160] or "no reason recorded" for r in failed["fail_reason"])
        out.append("Failure reasons: " + "; ".join(f"{r} ({n}×)" for r, n in reasons.most_common(5)) + ".")

    verdict = Verdict(table, metric, direction, labels=labels, predictions=predictions, num_labels=num_labels)
    out.extend(verdict.sentences())
    if verdict.finalists:
        parts = [
            f"{f.label}: {metric} {f.mean:.4f} ± {f.std:.4f}"
            + (f", {np.median(f.epoch_times):.2f} s/epoch" if f.epoch_times else "")
            for f in verdict.finalists.values()
        ]
        out.append(f"Seeds (mean ± std over {max(len(f.values) for f in verdict.finalists.values())}): "
                   + "; ".join(parts) + ".")
    if test_metrics:
        out.append(_test_sentence(table, test_metrics, labels or {}))

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
    done = verdict.ranked
    if epochs and "epochs_run" in done:
        early = done[done["epochs_run"].notna() & (done["epochs_run"] < epochs)]
        if len(early):
            out.append(
                f"Stopped early (fewer than {epochs} epochs): trial{'s' if len(early) > 1 else ''} "
                f"{', '.join(str(int(n)) for n in sorted(early['number']))}."
            )
    return out


def _test_sentence(table: pd.DataFrame, tests: dict[int, dict[str, float]], labels: dict[int, str]) -> str:
    """Test scores per finalist configuration (seeds pooled): evaluated once, never used to select."""
    rows = {int(r["number"]): r for _, r in table.iterrows()} if len(table) else {}
    groups: dict[int, list[dict[str, float]]] = {}
    for number, metrics in sorted(tests.items()):
        cid = config_id(rows[number]) if number in rows else number
        groups.setdefault(cid, []).append(metrics)
    parts = []
    for cid, items in groups.items():
        name = labels.get(cid, f"trial {cid}")
        bits = []
        for key in ("accuracy", "f1_macro"):
            values = [m[key] for m in items if key in m]
            if not values:
                continue
            mean, std = mean_std(values)
            bits.append(f"{key} {mean:.4f}" + (f" ± {std:.4f}" if len(values) > 1 else ""))
        n = f" over {len(items)} seeds" if len(items) > 1 else ""
        parts.append(f"{name}: {', '.join(bits)}{n}")
    rows_used = int(next(iter(tests.values())).get("rows", 0))
    head = f"Held-out test ({rows_used} rows, evaluated once per finalist, never used to select): "
    return head + "; ".join(parts) + "."
