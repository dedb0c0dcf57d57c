"""Faults of issue 11, provoked for real: two plain ``run`` processes on a blank study folder, a ``--workers`` worker
SIGKILLed, SIGTERM (to a run and to a ``--workers`` parent), a user strategy that calls ``sys.exit()``, ``validate``
leaving no state behind, and the proof of frozen parameters on pruned and failed trials.

Real ``python -m sweeps`` subprocesses and real signals, watched through ``sweeps.log``; the builders and checks are
those of ``test_faults.py``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
from e2e_helpers import write_study
from test_faults import (
    ROOT,
    assert_mlflow_consistent,
    assets,  # noqa: F401,F811  (the module fixture)
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


# -- 11. no secret in a file name ----------------------------------------------------------------------------------
def test_no_password_of_a_sqlite_url_in_any_file_name(tmp_path: Path) -> None:
    from sweeps.study import storage_lock

    db = tmp_path / "store" / "optuna.db"
    with storage_lock(f"sqlite:///{db}?password=S3CRETPW", "freeze-sweeps:test"):
        names = [p.name for p in tmp_path.rglob("*")]
    assert names and not [n for n in names if "S3CRETPW" in n], names
    assert "optuna.db.lock" in names
