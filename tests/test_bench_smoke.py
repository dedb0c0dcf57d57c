"""Every benchmark in ``bench/`` runs, as a real subprocess, on a tiny local model for about one step (issue 15).

A benchmark that is broken (an import error, a missing dependency such as ``accelerate`` for the Hugging Face
``Trainer``, a changed internal API, a wrong path) fails here instead of when someone next wants the numbers. Each
script runs with ``--smoke`` (a tiny BERT built from a config and generated data: no download, nothing from
``../shared/data``) from a folder outside the project, with its paths given relative to that folder, the way the
documented commands pass ``--data ../shared/data/sst2``: they must resolve against the current directory.

The scripts are started together (a module fixture) and each test waits for its own, so the wall time is
closer to the slowest script than to the sum. Nothing is measured: the numbers of a smoke run mean nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
TIMEOUT_S = 600

pytestmark = pytest.mark.slow

# Every bench script must have a smoke run here: a new benchmark without one fails test_every_bench_script_is_smoked.
# ../inputs is made once by the fixture (a tiny model, tiny data), relative to each script's working directory.
SCRIPTS = {
    "bench_trainer.py": ["--smoke", "--model", "../inputs/model", "--data", "../inputs/data", "--out", "trainer-out"],
    "bench_study_cache.py": ["--smoke", "--model", "../inputs/model", "--data", "../inputs/data", "--out", "study-out"],
    "bench_workers.py": ["--smoke", "--model", "../inputs/model", "--keep", "workers-out"],
    "bench_efficacy.py": ["--smoke", "--model", "../inputs/model", "--data", "../inputs/data", "--out", "eff-out"],
    "bench_study_cost.py": ["--smoke", "--model", "../inputs/model", "--data", "../inputs/data", "--out", "cost-out"],
    "bench_batched_tops.py": ["--smoke", "--model", "../inputs/model", "--data", "../inputs/data", "--out", "tops-out"],
    "bench_eval_order.py": ["--smoke", "--model", "../inputs/model", "--data", "../inputs/data", "--out", "eval-out"],
}


@dataclass
class Run:
    cwd: Path
    proc: subprocess.Popen
    started: float
    stdout: str = ""
    stderr: str = ""
    wall_s: float = 0.0
    done: bool = False
    env: dict[str, str] = field(default_factory=dict)  # what it ran with (a follow-up command runs the same way)

    def wait(self) -> Run:
        if not self.done:
            try:
                self.stdout, self.stderr = self.proc.communicate(timeout=TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.stdout, self.stderr = self.proc.communicate()
            self.wall_s = time.monotonic() - self.started
            self.done = True
        return self

    def check(self) -> Run:
        self.wait()
        assert self.proc.returncode == 0, (
            f"{' '.join(map(str, self.proc.args))} exited {self.proc.returncode} after {self.wall_s:.0f} s\n"
            f"--- stdout (tail)\n{self.stdout[-4000:]}\n--- stderr (tail)\n{self.stderr[-8000:]}"
        )
        return self


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Run]]:
    sys.path.insert(0, str(BENCH))
    from bench_trainer import smoke_inputs

    # Built here once rather than in each script: importing a transformers model costs ~10 CPU-s per process.
    base = tmp_path_factory.mktemp("bench-smoke")
    smoke_inputs(base / "inputs")  # inputs/model: a tiny 6-layer BERT; inputs/data: SST-2-shaped train/dev.tsv
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "PYTHONUNBUFFERED": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }
    started: dict[str, Run] = {}
    try:
        for script, args in SCRIPTS.items():
            cwd = base / script.removesuffix(".py")
            cwd.mkdir()
            proc = subprocess.Popen(
                [sys.executable, str(BENCH / script), *args],
                cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
            started[script] = Run(cwd, proc, time.monotonic(), env=env)
        yield started
    finally:
        for run in started.values():
            if run.proc.poll() is None:
                run.proc.kill()
            run.wait()


def test_every_bench_script_is_smoked() -> None:
    scripts = sorted(p.name for p in BENCH.glob("*.py") if not p.name.startswith("_"))
    assert scripts, "no bench scripts found"
    assert scripts == sorted(SCRIPTS), f"bench scripts without a smoke run here: {set(scripts) - set(SCRIPTS)}"


def test_bench_trainer_smoke(runs: dict[str, Run]) -> None:
    run = runs["bench_trainer.py"].check()
    out = run.cwd / "trainer-out"  # --out is relative to the working directory, not to the project or the study file
    assert (out / "results.md").is_file(), sorted(p.name for p in run.cwd.iterdir())
    study = (out / "bench.yaml").read_text()
    assert str(run.cwd.parent / "inputs" / "data" / "train.tsv") in study, "--data resolved against the wrong folder"
    assert str(run.cwd.parent / "inputs" / "model") in study, "--model resolved against the wrong folder"
    results = json.loads((out / "results.json").read_text())
    assert results["smoke"] is True and results["costs"]["num_layers"] == 6
    from bench_trainer import STRATEGIES

    assert list(results["rows"]) == [label for label, _, _ in STRATEGIES], "every strategy ran"
    for label, row in results["rows"].items():
        kinds = {"sweeps_cold", "trainer"} | ({"sweeps_warm"} if label.startswith("bottom_n") else set())
        assert kinds <= set(row), (label, sorted(row))
        for kind in kinds:
            assert len(row[kind]["epoch_times"]) == 1 and row[kind]["epoch_times"][0] > 0, (label, kind, row[kind])
            assert 0.0 <= row[kind]["accuracy"] <= 1.0, (label, kind, row[kind])
        assert row["sweeps_cold"]["verified"] is True, (label, row["sweeps_cold"])
    table = (out / "results.md").read_text().splitlines()
    assert len(table) == 2 + len(STRATEGIES), table


def test_bench_study_cache_smoke(runs: dict[str, Run]) -> None:
    run = runs["bench_study_cache.py"].check()
    out = run.cwd / "study-out"
    results = json.loads((out / "results.json").read_text())
    assert results["smoke"] is True and results["trials"] == 2
    study = (out / "study.yaml").read_text()
    assert str(run.cwd.parent / "inputs" / "data" / "train.tsv") in study and str(run.cwd.parent / "inputs") in study
    # The seeded random sampler draws the same N sequence in both studies: what makes their wall times comparable.
    assert len(results["cached"]["ns"]) == 2 and results["cached"]["ns"] == results["uncached"]["ns"], results
    for kind in ("cached", "uncached"):
        assert results[kind]["best_n"] in results[kind]["ns"], results
        assert (out / kind / "optuna.db").is_file()
    assert "same best configuration:" in run.stdout


def test_bench_workers_smoke(runs: dict[str, Run]) -> None:
    run = runs["bench_workers.py"].check()
    assert "every trial recorded exactly once in Optuna and MLflow" in run.stdout, run.stdout
    summary = json.loads(run.stdout[: run.stdout.index("\n}\n") + 2])
    n = summary["n_trials"]
    assert n >= 1 and summary["optuna_ended"] == n == summary["mlflow_trial_runs"] and not summary["problems"], summary
    assert (run.cwd / "workers-out" / "out" / "optuna.db").is_file(), "--keep is relative to the working directory"


def test_bench_efficacy_smoke(runs: dict[str, Run]) -> None:
    run = runs["bench_efficacy.py"].check()
    results = json.loads((run.cwd / "eff-out" / "results.json").read_text())
    assert results["smoke"] is True and results["seeds"] == 2
    assert len(results["default"]["test"]["accuracy"]) >= 1  # the default's seeds were evaluated on the test split
    (study,) = results["studies"].values()
    assert study["trials"] >= 5 and study["wall_vs_default"] > 0 and isinstance(study["tied_with_best"], list)
    assert "same recommendation across study seeds" in run.stdout
    # --reanalyse re-reads the finished folders and keeps the measured wall times
    again = subprocess.run([sys.executable, str(BENCH / "bench_efficacy.py"), "--reanalyse", "--data", "unused",
                            "--out", "eff-out"], cwd=run.cwd, env=run.env, capture_output=True, text=True,
                           timeout=TIMEOUT_S)
    assert again.returncode == 0, again.stderr[-4000:]
    assert "same recommendation across study seeds" in again.stdout
    assert json.loads((run.cwd / "eff-out" / "results.json").read_text())["default"]["wall_s"] == results["default"][
        "wall_s"]


def test_bench_study_cost_smoke(runs: dict[str, Run]) -> None:
    run = runs["bench_study_cost.py"].check()
    results = json.loads((run.cwd / "cost-out" / "results.json").read_text())
    assert results["trials"] == 3
    for arm in ("default", "study", "speed_ups_off", "successive_halving"):
        r = results[arm]
        assert r["wall_s"] > 0 and r["strategy"] is not None, (arm, r)
        assert {"startup", "tokenisation", "model_load", "training", "evaluation", "other"} <= set(r["phases"]), arm
        assert sum(r["phases"].values()) == pytest.approx(r["wall_s"], rel=0.05), arm
        assert r["trials"] and all(0 <= t["overhead"] <= 1 for t in r["trials"]), arm
    assert len(results["default"]["trials"]) == 1
    assert "x (a)" in run.stdout and "per-trial fixed overhead" in run.stdout, run.stdout
    assert "one completed trial per strategy" in run.stdout and "recommendation (d)" in run.stdout, run.stdout


def test_bench_batched_tops_smoke(runs: dict[str, Run]) -> None:
    """Nothing is timed here, but the exactness check is real even on the tiny BERT: K tops trained side by side in
    one vmapped pass end where the same tops trained one by one end."""
    run = runs["bench_batched_tops.py"].check()
    results = json.loads((run.cwd / "tops-out" / "results.json").read_text())
    assert [d["depth"] for d in results["depths"]] == [4, 6] and len(results["lrs"]) == 4
    for row in results["depths"]:
        assert row["max_logit_diff"] < 1e-4 and row["same_accuracy"] is True, row
        assert row["ratio_median"] > 0 and len(row["repeats"]) == 1, row
    assert results["depths"][1]["trainable_blocks"] == 0, "the model's depth: head only"


def test_bench_eval_order_smoke(runs: dict[str, Run]) -> None:
    """Longest-first evaluation, put back in split order, predicts what split-order evaluation predicts."""
    run = runs["bench_eval_order.py"].check()
    results = json.loads((run.cwd / "eval-out" / "results.json").read_text())
    assert results["rows"] == 32 and results["same_predictions"] is True and results["max_prob_diff"] < 1e-5, results
    assert results["padded_tokens"]["longest_first"] <= results["padded_tokens"]["split_order"], results
