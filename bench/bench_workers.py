"""Load test of several workers on one study: many very short trials, each recorded exactly once.

    .venv/bin/python bench/bench_workers.py                    # 200 trials, 4 workers (the documented figure)
    .venv/bin/python bench/bench_workers.py --trials 20 --workers 2 --keep /tmp/bench
    .venv/bin/python bench/bench_workers.py --smoke                  # 4 trials, 1 worker: checks it runs (CI)
    .venv/bin/python bench/bench_workers.py --soak                   # 100 trials, 4 workers, SIGKILLs (issue 11)

A tiny local BERT (2 layers, hidden 32) is fine-tuned on 32 rows for one epoch per trial, so a trial is a few
optimizer steps and the run measures the bookkeeping around trials — asking Optuna for a trial, the MLflow parent and
nested runs, metrics, artifacts, telling Optuna — with ``--workers K`` processes sharing the default SQLite storages
(``optuna.db`` and ``mlflow.db`` in the study folder). At the end it checks that every trial was recorded exactly once:

- Optuna: exactly ``n_trials`` trials ran to an end (complete/pruned/failed by their own error), none left running;
- no trial number ran twice: one MLflow trial run per Optuna trial, with that trial's number and strategy;
- MLflow: every trial run is under the study's one parent run and ended (``FINISHED``).

``--soak`` (issue 11) runs the same study while a bounded loop SIGKILLs a random worker every few seconds (from the
first completed trial on, ``--max-kills`` at most) and the ``--workers`` parent replaces it; it then checks that the
``n_trials`` completed trials are each recorded once, every other trial is one a kill ended (failed, ``worker_died``),
one MLflow run per Optuna trial with the matching status, nothing RUNNING, one summary, exit code 1 (workers died).

It prints trials/minute over the whole command (process start-up included) and over the steady state (first trial
start to last trial end, from Optuna's timestamps). Exit code 0 when every check passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from e2e_helpers import make_dataset, make_tiny_model, write_study  # noqa: E402

STRATEGIES = [
    {"name": "none"},
    {"name": "embeddings"},
    {"name": "bottom_n", "params": {"n": {"type": "int", "low": 1, "high": 2}}},
    {"name": "discriminative", "params": {"decay": {"type": "float", "low": 0.5, "high": 1.0}}},
]


def make_study(root: Path, n_trials: int, model: Path | None = None, **overrides: Any) -> Path:
    """The benchmark study in ``root``: tiny model (built here unless given), 32 training rows, 1 epoch of batch 16
    (2 steps) per trial."""
    model = model or make_tiny_model(root / "model")
    data = make_dataset(root / "data", n_train=64, n_validation=16)
    sections: dict[str, Any] = {
        "name": "bench-workers",
        "task": {
            "model": str(model),
            "max_length": 16,
            "data": {
                "train": str(data / "train.csv"),
                "validation": str(data / "validation.csv"),
                "id_column": "id",
                "max_train_rows": 32,
            },
        },
        # a searched LR: every trial is a new configuration (an identical one would be skipped as a duplicate)
        "training": {"epochs": 1, "batch_size": 16, "eval_batch_size": 16, "seed": 7,
                     "learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
        "strategies": STRATEGIES,
        "optuna": {"n_trials": n_trials, "pruner": "none", "sampler": "random"},
        "tracking": {"enabled": True},
    }
    sections.update(overrides)
    return write_study(root / "study.yaml", model, data, **sections)


def check_exactly_once(out: Path, study_name: str, n_trials: int) -> dict[str, Any]:
    """Read the Optuna and MLflow stores of a finished study; return the counts and a list of problems."""
    import optuna
    from mlflow.tracking import MlflowClient

    problems: list[str] = []
    study = optuna.load_study(study_name=study_name, storage=f"sqlite:///{out / 'optuna.db'}")
    trials = study.get_trials(deepcopy=False)
    surplus = [t for t in trials if t.user_attrs.get("surplus")]
    real = [t for t in trials if not t.user_attrs.get("surplus")]
    states = Counter(t.state.name for t in real)
    # a skipped duplicate (same configuration as a finished trial: not trained) does not use up n_trials
    ended = [t for t in real if t.state.name in ("COMPLETE", "PRUNED", "FAIL") and "duplicate_of" not in t.user_attrs]
    if len(ended) != n_trials:
        problems.append(f"Optuna: {len(ended)} trials ran to an end, expected {n_trials} ({dict(states)})")
    if states.get("RUNNING") or states.get("WAITING"):
        problems.append(f"Optuna: trials left {dict(states)}")
    failed = [(t.number, t.user_attrs.get("fail_reason")) for t in real if t.state.name == "FAIL"]
    if failed:
        problems.append(f"Optuna: failed trials {failed[:5]}")

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(study_name)
    runs = client.search_runs([experiment.experiment_id], max_results=50000) if experiment else []
    parents = [r for r in runs if r.data.tags.get("sweeps.role") == "study"]
    trial_runs = [r for r in runs if r.data.tags.get("sweeps.role") == "trial"]
    if len(parents) != 1:
        problems.append(f"MLflow: {len(parents)} parent runs, expected 1")
    parent_id = parents[0].info.run_id if parents else None
    numbers = Counter(int(r.data.tags["optuna.trial_number"]) for r in trial_runs)
    twice = sorted(n for n, c in numbers.items() if c > 1)
    if twice:
        problems.append(f"MLflow: trial numbers logged more than once: {twice[:10]}")
    if set(numbers) != {t.number for t in real}:
        missing = sorted({t.number for t in real} - set(numbers))
        extra = sorted(set(numbers) - {t.number for t in real})
        problems.append(f"MLflow vs Optuna trial numbers: missing {missing[:10]}, extra {extra[:10]}")
    by_number = {t.number: t for t in real}
    for r in trial_runs:
        t = by_number.get(int(r.data.tags["optuna.trial_number"]))
        if t is not None and t.user_attrs.get("mlflow_run_id") != r.info.run_id:
            problems.append(f"trial {t.number}: Optuna points at MLflow run {t.user_attrs.get('mlflow_run_id')}, "
                            f"MLflow has {r.info.run_id}")
        if r.data.tags.get("mlflow.parentRunId") != parent_id:
            problems.append(f"MLflow run {r.info.run_name} is not under the study's parent run")
        if r.info.status != "FINISHED":
            problems.append(f"MLflow run {r.info.run_name} is {r.info.status}")
    starts = [t.datetime_start for t in real if t.datetime_start]
    ends = [t.datetime_complete for t in real if t.datetime_complete]
    span = (max(ends) - min(starts)).total_seconds() if starts and ends else float("nan")
    return {
        "optuna_trials": len(real),
        "optuna_ended": len(ended),
        "optuna_states": dict(states),
        "surplus_asks": len(surplus),
        "mlflow_trial_runs": len(trial_runs),
        "mlflow_parent_runs": len(parents),
        "steady_span_s": span,
        "problems": problems,
    }


def run_bench(
    root: Path,
    n_trials: int = 200,
    workers: int = 4,
    timeout: float = 3600,
    mlflow_template: Path | None = None,
    model: Path | None = None,
) -> dict[str, Any]:
    """Run the study with ``workers`` workers and check it. ``mlflow_template``: an empty, migrated MLflow store to
    start from (tests: skips MLflow's schema migrations; the benchmark itself includes them)."""
    study = make_study(root, n_trials, model)
    out = root / "out"
    if mlflow_template is not None:
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(mlflow_template, out / "mlflow.db")
    cmd = [sys.executable, "-m", "sweeps", "--quiet", "run", str(study), "--output", str(out), "--workers",
           str(workers), "--no-report"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.monotonic() - start
    result = check_exactly_once(out, "bench-workers", n_trials)
    log = (out / "sweeps.log").read_text() if (out / "sweeps.log").exists() else ""
    result.update(
        n_trials=n_trials,
        workers=workers,
        exit_code=proc.returncode,
        wall_s=wall,
        trials_per_min=n_trials / wall * 60,
        steady_trials_per_min=n_trials / result["steady_span_s"] * 60 if result["steady_span_s"] else float("nan"),
        locked_errors=(proc.stderr + log).count("database is locked"),
        stderr_tail=proc.stderr[-10000:],
    )
    if proc.returncode != 0:
        result["problems"].append(f"exit code {proc.returncode}")
    crashed = (proc.stderr + log).count("exited with code")
    if crashed:
        result["problems"].append(f"{crashed} worker(s) exited with an error")
    if result["locked_errors"]:
        result["problems"].append(f"{result['locked_errors']} 'database is locked' errors")
    return result


def cli_path(value: str) -> Path:
    """A path from the command line, made absolute against the current directory (the study runs from the project
    root, so a relative path would otherwise point inside the project)."""
    return Path(os.path.abspath(os.path.expanduser(value)))


# -- fault soak: workers SIGKILLed and replaced while the study runs ---------------------------------------------------
def _live_worker_pids(out: Path) -> list[int]:
    """Pids of the parent's workers that are alive now, from its "worker i started/restarted (pid N)" lines."""
    import re

    log = out / "sweeps.log"
    text = log.read_text() if log.exists() else ""
    pids = []
    for match in re.finditer(r"sweeps: worker \d+ (?:started|restarted) \(pid (\d+)\)", text):
        pid = int(match.group(1))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        pids.append(pid)
    return pids


def check_soak(out: Path, study_name: str, n_trials: int, killed_pids: set[int]) -> dict[str, Any]:
    """After a soak: ``n_trials`` trials completed and each counted once; every other trial is one a kill ended
    (FAIL, ``worker_died``, its worker among the killed); one MLflow run per Optuna trial, none RUNNING, each with the
    status its trial ended in; one parent run, finished."""
    import optuna
    from mlflow.tracking import MlflowClient

    problems: list[str] = []
    study = optuna.load_study(study_name=study_name, storage=f"sqlite:///{out / 'optuna.db'}")
    trials = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("surplus")]
    killed = [t for t in trials if t.user_attrs.get("worker_died")]
    counted = [t for t in trials if not t.user_attrs.get("worker_died") and "duplicate_of" not in t.user_attrs]
    states = Counter(t.state.name for t in trials)
    if len(counted) != n_trials or any(t.state.name != "COMPLETE" for t in counted):
        problems.append(f"Optuna: {len(counted)} counted trials, expected {n_trials} complete ({dict(states)})")
    if states.get("RUNNING") or states.get("WAITING"):
        problems.append(f"Optuna: trials left {dict(states)}")
    strangers = [t.number for t in killed if t.state.name != "FAIL" or t.user_attrs.get("pid") not in killed_pids]
    if strangers:
        problems.append(f"Optuna: trials marked as killed whose worker was not killed: {strangers[:10]}")
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(study_name)
    runs = client.search_runs([experiment.experiment_id], max_results=50000) if experiment else []
    parents = [r for r in runs if r.data.tags.get("sweeps.role") == "study"]
    trial_runs = [r for r in runs if r.data.tags.get("sweeps.role") == "trial"]
    if len(parents) != 1 or parents[0].info.status != "FINISHED":
        problems.append(f"MLflow: parent runs {[p.info.status for p in parents]}, expected one FINISHED")
    numbers = Counter(int(r.data.tags["optuna.trial_number"]) for r in trial_runs)
    if max(numbers.values(), default=1) > 1 or set(numbers) != {t.number for t in trials}:
        problems.append("MLflow: not exactly one trial run per Optuna trial")
    by_number = {t.number: t for t in trials}
    for r in trial_runs:
        t = by_number.get(int(r.data.tags["optuna.trial_number"]))
        expected = "FAILED" if t is not None and t.state.name == "FAIL" else "FINISHED"
        if r.info.status != expected:
            problems.append(f"MLflow run {r.info.run_name} is {r.info.status}, expected {expected}")
    return {
        "optuna_trials": len(trials),
        "optuna_states": dict(states),
        "completed_counted": sum(t.state.name == "COMPLETE" for t in counted),
        "trials_killed": len(killed),
        "mlflow_trial_runs": len(trial_runs),
        "mlflow_running": sum(r.info.status == "RUNNING" for r in runs),
        "problems": problems,
    }


def run_soak(
    root: Path,
    n_trials: int = 100,
    workers: int = 4,
    kill_every_s: float = 6.0,
    max_kills: int = 12,
    model: Path | None = None,
    seed: int = 0,
    timeout: float = 3600,
) -> dict[str, Any]:
    """``run --workers`` on one study while a bounded loop SIGKILLs a random worker every ``kill_every_s`` seconds
    (``max_kills`` at most); the parent replaces each dead worker. Then :func:`check_soak`."""
    import random
    import signal

    rng = random.Random(seed)
    study = make_study(root, n_trials, model)
    out = root / "out"
    cmd = [sys.executable, "-m", "sweeps", "--quiet", "run", str(study), "--output", str(out), "--workers",
           str(workers), "--no-report"]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    killed: set[int] = set()
    log = out / "sweeps.log"
    next_kill = None  # kills start once a first trial completed: the workers are then inside trials
    while proc.poll() is None and time.monotonic() - start < timeout:
        if next_kill is None and log.exists() and ": complete:" in log.read_text():
            next_kill = time.monotonic() + rng.uniform(0, kill_every_s)
        if next_kill is not None and len(killed) < max_kills and time.monotonic() >= next_kill:
            live = [p for p in _live_worker_pids(out) if p not in killed]
            if live:
                victim = rng.choice(live)
                os.kill(victim, signal.SIGKILL)
                killed.add(victim)
            next_kill = time.monotonic() + kill_every_s
        time.sleep(0.2)
    if proc.poll() is None:
        proc.kill()
    stdout, stderr = proc.communicate()
    result = check_soak(out, "bench-workers", n_trials, killed)
    result.update(
        n_trials=n_trials, workers=workers, kills=len(killed), exit_code=proc.returncode,
        wall_s=time.monotonic() - start, summaries=stdout.count("study bench-workers:"), stderr_tail=stderr[-5000:],
    )
    if proc.returncode != (1 if killed else 0):
        result["problems"].append(f"exit code {proc.returncode}, expected {1 if killed else 0}")
    if result["summaries"] != 1:
        result["problems"].append(f"{result['summaries']} summaries printed, expected the parent's one")
    return result


def soak_main(args: argparse.Namespace, root: Path) -> int:
    result = run_soak(root, args.trials, args.workers, args.kill_every, args.max_kills, model=args.model)
    shown = {k: v for k, v in result.items() if k != "stderr_tail"}
    print(json.dumps(shown, indent=1, default=str))
    print(
        f"\nsoak: {args.trials} trials, {args.workers} workers, {result['kills']} workers SIGKILLed: "
        f"{result['completed_counted']} completed and counted once, {result['trials_killed']} trials ended by a kill "
        f"(failed, not counted), {result['mlflow_trial_runs']} MLflow trial runs, {result['mlflow_running']} RUNNING; "
        f"{result['wall_s']:.0f}s"
    )
    if result["problems"]:
        print("FAILED:\n  " + "\n  ".join(result["problems"]) + "\n" + result["stderr_tail"], file=sys.stderr)
        return 1
    print("every trial recorded exactly once in Optuna and MLflow; nothing left RUNNING")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # smoke: one trial per strategy (fewer leave the strategies' enqueued first trials WAITING), in this process
    parser.add_argument("--trials", type=int, help=f"trials (default 200; {len(STRATEGIES)} with --smoke)")
    parser.add_argument("--workers", type=int, help="worker processes (default 4; 1 with --smoke)")
    parser.add_argument(
        "--keep", type=cli_path, help="folder to keep the study in (relative to the current dir; default: temporary)"
    )
    parser.add_argument("--model", type=cli_path, help="a local tiny BERT to use instead of building one")
    parser.add_argument("--smoke", action="store_true", help="a few trials on one worker: checks the benchmark runs")
    parser.add_argument("--soak", action="store_true", help="fault soak: SIGKILL a random worker every few seconds")
    parser.add_argument("--kill-every", type=float, default=6.0, help="soak: seconds between kills (default 6)")
    parser.add_argument("--max-kills", type=int, default=12, help="soak: kills at most (default 12)")
    args = parser.parse_args()
    args.trials = args.trials or (len(STRATEGIES) if args.smoke else 100 if args.soak else 200)
    args.workers = args.workers or (1 if args.smoke else 4)
    if args.soak:
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            return soak_main(args, args.keep)
        with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
            return soak_main(args, Path(tmp))
    if args.keep:
        root = args.keep
        root.mkdir(parents=True, exist_ok=True)
        result = run_bench(root, args.trials, args.workers, model=args.model)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
            result = run_bench(Path(tmp), args.trials, args.workers, model=args.model)
    shown = {k: v for k, v in result.items() if k != "stderr_tail"}
    print(json.dumps(shown, indent=1, default=str))
    print(
        f"\n{args.trials} trials, {args.workers} workers, {os.cpu_count()} CPU cores: "
        f"{result['trials_per_min']:.1f} trials/minute overall ({result['wall_s']:.0f}s including start-up), "
        f"{result['steady_trials_per_min']:.1f} trials/minute steady state"
    )
    if result["problems"]:
        print("FAILED:\n  " + "\n  ".join(result["problems"]) + "\n" + result["stderr_tail"], file=sys.stderr)
        return 1
    print("every trial recorded exactly once in Optuna and MLflow")
    return 0


if __name__ == "__main__":
    sys.exit(main())
