"""Faults of issue 11, provoked for real: two plain ``run`` processes on a blank study folder, a ``--workers`` worker
SIGKILLed, SIGTERM (to a run and to a ``--workers`` parent), a user strategy that calls ``sys.exit()``, ``validate``
leaving no state behind, and the proof of frozen parameters on pruned and failed trials.

Real ``python -m sweeps`` subprocesses and real signals, watched through ``sweeps.log``; the builders and checks are
those of ``test_faults.py``.
"""

from __future__ import annotations

import os
import signal
import textwrap
from collections import Counter
from pathlib import Path

import pytest
from e2e_helpers import make_dataset, make_tiny_model, write_study
from services import blank_mlflow_db
from test_faults import (
    assert_mlflow_consistent,
    fresh_output,
    load,
    mlflow_runs,
    ran_to_an_end,
    run_of,
    start_run,
    wait_for_log,
)

from sweeps.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """As in test_faults.py: a tiny model, 80 rows (sub-second epochs), 2000 rows (epochs long enough to hit)."""
    root = tmp_path_factory.mktemp("fault-assets")
    return {
        "model": make_tiny_model(root / "model"),
        "data": make_dataset(root / "data"),
        "big": make_dataset(root / "big", n_train=2000),
        "blank_mlflow": blank_mlflow_db(root / "blank-mlflow" / "mlflow.db"),
    }


def _stderr(out: Path) -> str:
    return (out.parent / f"{out.name}.stderr").read_text()


# -- 1. two plain runs on a blank folder -------------------------------------------------------------------------------
def test_two_runs_started_together_on_a_blank_folder_both_succeed(assets: dict[str, Path], tmp_path: Path) -> None:
    """No pre-migrated ``mlflow.db``: both processes create MLflow's schema at once (one used to die in alembic)."""
    study_file = write_study(
        tmp_path / "study.yaml", assets["model"], assets["data"],
        training={"epochs": 1, "batch_size": 16, "num_threads": 1, "cache": "off"},
        optuna={"n_trials": 4, "pruner": "none"},
    )
    out = tmp_path / "out"
    assert not out.exists()
    procs = [start_run(study_file, out, "--no-report") for _ in range(2)]
    for p in procs:
        p.wait(timeout=600)
    errors = [_stderr(out)]
    assert [p.returncode for p in procs] == [0, 0], errors[-1][-3000:]
    assert "alembic" not in errors[-1] and "Traceback" not in errors[-1]
    study = load(out)
    real = [t for t in study.trials if not t.user_attrs.get("surplus")]
    assert len(real) == 4 and all(t.state.name == "COMPLETE" for t in real), Counter(t.state.name for t in real)
    parents, runs = mlflow_runs(out)
    assert len(parents) == 1
    assert sorted(int(r.data.tags["optuna.trial_number"]) for r in runs) == sorted(t.number for t in study.trials)
    assert (out / "mlflow.db.lock").exists()


# -- 11. no secret in a file name --------------------------------------------------------------------------------------
def test_no_password_of_a_sqlite_url_in_any_file_name(tmp_path: Path) -> None:
    from sweeps.study import storage_lock

    db = tmp_path / "store" / "optuna.db"
    with storage_lock(f"sqlite:///{db}?password=S3CRETPW", "freeze-sweeps:test"):
        names = [p.name for p in tmp_path.rglob("*")]
    assert names and not [n for n in names if "S3CRETPW" in n], names
    assert "optuna.db.lock" in names


def _worker_pids(out: Path) -> dict[int, int]:
    pids = {}
    for line in (out / "sweeps.log").read_text().splitlines():
        if "started (pid" in line and "worker" in line:
            index = int(line.split("worker ", 1)[1].split()[0])
            pids.setdefault(index, int(line.rsplit("pid ", 1)[1].split(")")[0]))
    return pids


# -- 2. a --workers worker SIGKILLed -----------------------------------------------------------------------------------
def test_a_sigkilled_worker_is_recovered_at_once_and_the_budget_finished(
    assets: dict[str, Path], tmp_path: Path
) -> None:
    study_file = write_study(
        tmp_path / "study.yaml", assets["model"], assets["big"],
        training={"epochs": 2, "batch_size": 8, "cache": "off"}, optuna={"n_trials": 3, "pruner": "none"},
    )
    out = fresh_output(assets, tmp_path / "out")
    proc = start_run(study_file, out, "--no-report", "--workers", "2")
    wait_for_log(proc, out, lambda text: text.count("epoch 1/2") >= 2, timeout=400)  # both workers inside a trial
    victim = _worker_pids(out)[0]
    os.kill(victim, signal.SIGKILL)
    assert proc.wait(timeout=900) == 1, _stderr(out)[-3000:]
    log = (out / "sweeps.log").read_text()
    assert f"worker 0 (pid {victim}) killed by SIGKILL" in log
    assert "worker 0 restarted" in log or "trial 2" in log

    study = load(out)
    assert not [t for t in study.trials if t.state.name in ("RUNNING", "WAITING")]
    (dead,) = [t for t in study.trials if t.user_attrs.get("worker_died")]
    assert dead.user_attrs["pid"] == victim and dead.state.name == "FAIL"
    counted = [t for t in ran_to_an_end(study) if not t.user_attrs.get("surplus")]
    assert len(counted) == 3 and all(t.state.name == "COMPLETE" for t in counted)  # the budget was finished
    real = [t for t in study.trials if not t.user_attrs.get("surplus")]
    parents, runs = mlflow_runs(out)
    assert run_of(runs, dead.number).info.status == "FAILED"
    assert "died" in run_of(runs, dead.number).data.tags["sweeps.fail_reason"]
    assert sorted(int(r.data.tags["optuna.trial_number"]) for r in runs) == sorted(t.number for t in real)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    assert parents[0].info.status == "FINISHED"
    stdout = (out.parent / "out.stdout").read_text()
    assert stdout.count("study tiny:") == 1, stdout  # one summary, the parent's


# -- 3. SIGTERM --------------------------------------------------------------------------------------------------------
def test_sigterm_mid_trial_is_recorded_like_ctrl_c_and_exits_143(
    assets: dict[str, Path], tmp_path: Path
) -> None:
    study_file = write_study(
        tmp_path / "study.yaml", assets["model"], assets["big"],
        training={"epochs": 2, "batch_size": 8, "num_threads": 1, "cache": "off"},
        optuna={"n_trials": 2, "pruner": "none"},
    )
    out = fresh_output(assets, tmp_path / "out")
    proc = start_run(study_file, out, "--no-report")
    wait_for_log(proc, out, lambda text: "trial 0 epoch 1/2" in text, timeout=900)  # slow on a loaded machine
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=400) == 143
    stderr = _stderr(out)
    assert "Terminated (SIGTERM)" in stderr and "Resume with the same command" in stderr
    trial = load(out).trials[0]
    assert trial.state.name == "FAIL" and trial.user_attrs["interrupted"] is True
    assert trial.user_attrs["fail_reason"] == "terminated (SIGTERM)"
    parents, runs = mlflow_runs(out)
    assert run_of(runs, 0).info.status == "KILLED"
    assert run_of(runs, 0).data.tags["sweeps.fail_reason"] == "terminated (SIGTERM)"
    assert parents[0].info.status == "KILLED"


def test_sigterm_to_the_workers_parent_is_forwarded_to_every_worker(
    assets: dict[str, Path], tmp_path: Path
) -> None:
    study_file = write_study(
        tmp_path / "study.yaml", assets["model"], assets["big"],
        training={"epochs": 2, "batch_size": 8, "cache": "off"}, optuna={"n_trials": 6, "pruner": "none"},
    )
    out = fresh_output(assets, tmp_path / "out")
    proc = start_run(study_file, out, "--no-report", "--workers", "2")
    wait_for_log(proc, out, lambda text: text.count("epoch 1/2") >= 2, timeout=900)
    proc.send_signal(signal.SIGTERM)  # to the parent alone, as `docker stop` does
    assert proc.wait(timeout=300) == 143, _stderr(out)[-3000:]
    assert _stderr(out).count("Resume with the same command") == 1
    study = load(out)
    assert not [t for t in study.trials if t.state.name == "RUNNING"]
    interrupted = [t for t in study.trials if t.user_attrs.get("interrupted")]
    assert len(interrupted) == 2 and {t.user_attrs["fail_reason"] for t in interrupted} == {"terminated (SIGTERM)"}
    _, runs = mlflow_runs(out)
    assert {run_of(runs, t.number).info.status for t in interrupted} == {"KILLED"}
    for pid in _worker_pids(out).values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


# -- 4. sys.exit() in a user strategy hook -----------------------------------------------------------------------------
def test_sys_exit_in_a_strategy_hook_fails_the_trial_with_its_cause(
    assets: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "exiting_strategy.py").write_text(textwrap.dedent('''
        import sys
        from dataclasses import dataclass
        from typing import ClassVar

        from strategies import Strategy, uniform_plan


        @dataclass
        class Exits(Strategy):
            """Calls sys.exit() in its plan hook, as a user's debugging leftover would."""

            name: ClassVar[str] = "exits"

            def plan(self, layer_map, epoch, step):
                sys.exit(3)
                return uniform_plan(layer_map, frozen=set())
    '''))
    monkeypatch.syspath_prepend(str(folder))
    study_file = write_study(
        tmp_path / "study.yaml", assets["model"], assets["data"],
        training={"epochs": 1, "batch_size": 16, "cache": "off"},
        strategies=[{"name": "exiting_strategy:Exits"}, {"name": "none"}],
        optuna={"n_trials": 2, "pruner": "none"},
    )
    out = fresh_output(assets, tmp_path / "out")
    assert main(["run", str(study_file), "--output", str(out), "--no-report"]) == 0  # the other strategy completed
    study = load(out)
    (failed,) = [t for t in study.trials if t.state.name == "FAIL"]
    assert failed.user_attrs["strategy"] == "exiting_strategy:Exits"
    assert failed.user_attrs["fail_reason"].startswith("SystemExit(3) raised inside the trial at exiting_strategy.py")
    assert not failed.user_attrs.get("worker_died")
    assert [t.state.name for t in study.trials].count("COMPLETE") == 1
    assert_mlflow_consistent(out, study)
    parents, runs = mlflow_runs(out)
    assert run_of(runs, failed.number).data.tags["sweeps.fail_reason"] == failed.user_attrs["fail_reason"]
    assert parents[0].info.status == "FINISHED"
