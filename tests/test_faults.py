"""Faults provoked for real on a tiny local model: a worker SIGKILLed mid-epoch, Ctrl-C (SIGINT), a trial whose loss
turns NaN, a strategy that runs out of memory, bad hyperparameters, an edited study file; and determinism.

Runs that must be killed or interrupted are real ``python -m sweeps run`` subprocesses, watched through their
``sweeps.log``; the runs that follow (resume) use the same command in-process to save interpreter start-ups.
Every fresh study folder starts from a blank, already-migrated ``mlflow.db`` (MLflow's schema migrations cost
several seconds per new store and are not what these tests are about).
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
from e2e_helpers import make_dataset, make_tiny_model, write_study
from mlflow.tracking import MlflowClient
from services import blank_mlflow_db, free_port

from sweeps.cli import main

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
ENDED = ("COMPLETE", "PRUNED", "FAIL")


# -- builders -------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fault-assets")
    blank = blank_mlflow_db(root / "blank-mlflow" / "mlflow.db")
    return {
        "model": make_tiny_model(root / "model"),
        "data": make_dataset(root / "data"),  # 80 rows: 5 batches of 16, an epoch well under a second
        "big": make_dataset(root / "big", n_train=2000),  # 250 batches of 8: epochs long enough to hit
        "blank_mlflow": blank,
    }


def fresh_output(assets: dict[str, Path], out: Path) -> Path:
    out.mkdir(parents=True)
    shutil.copy(assets["blank_mlflow"], out / "mlflow.db")
    return out


def strategies_module(folder: Path, name: str) -> str:
    """A user strategy module on sys.path (and PYTHONPATH for subprocesses): the README's TopKOnly, and Hog, which
    allocates a large tensor at epoch 1 and then fails with ``torch.OutOfMemoryError`` as a CUDA allocation would.
    Unique module names per test: a module, once imported, stays in ``sys.modules``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text(textwrap.dedent('''
        from dataclasses import dataclass
        from typing import ClassVar

        import torch

        from strategies import HEAD, Strategy, StrategyConfigError, uniform_plan


        @dataclass
        class TopKOnly(Strategy):
            """Train only the top k blocks and the head, at a higher LR for the head."""

            k: int = 2
            head_boost: float = 10.0
            name: ClassVar[str] = "top_k_only"

            def check(self, layer_map):
                if not 1 <= self.k <= layer_map.num_layers:
                    raise StrategyConfigError("k", f"must be in 1..{layer_map.num_layers}")

            def plan(self, layer_map, epoch, step):
                top = range(layer_map.num_layers - self.k, layer_map.num_layers)
                trainable = {f"layer.{i}" for i in top} | {HEAD}
                frozen = set(layer_map.names) - trainable
                return uniform_plan(layer_map, frozen=frozen, multipliers={HEAD: self.head_boost})


        @dataclass
        class Hog(Strategy):
            """Full fine-tuning that runs out of memory at epoch 1 after allocating ``mb`` megabytes."""

            mb: int = 768
            name: ClassVar[str] = "hog"

            def plan(self, layer_map, epoch, step):
                if epoch == 1:
                    activations = torch.ones(self.mb * 2**18)  # float32: mb MiB, every page touched
                    raise torch.OutOfMemoryError(
                        f"CUDA out of memory. Tried to allocate {self.mb * 2} MiB "
                        f"(holding {activations.numel() * 4 / 2**20:.0f} MiB)"
                    )
                return uniform_plan(layer_map, frozen=set())
    '''))
    return name


def start_run(study: Path, out: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "sweeps", "run", str(study), "--output", str(out), *extra]
    out.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        cmd,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=open(out.parent / f"{out.name}.stdout", "w"),
        stderr=open(out.parent / f"{out.name}.stderr", "w"),
        text=True,
    )


def wait_for_log(proc: subprocess.Popen[str], out: Path, ready: Callable[[str], bool], timeout: float = 180) -> str:
    """Poll ``out/sweeps.log`` until ``ready(text)``; fail if the process ends first."""
    log = out / "sweeps.log"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text() if log.exists() else ""
        if ready(text):
            return text
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before the awaited point:\n{text[-3000:]}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"timed out waiting in sweeps.log:\n{text[-3000:]}")


def load(out: Path, name: str = "tiny") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'optuna.db'}")


def mlflow_runs(out: Path, name: str = "tiny") -> tuple[list[Any], list[Any]]:
    """(parent runs, trial runs) of the study's experiment."""
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id], max_results=1000)
    return (
        [r for r in runs if r.data.tags.get("sweeps.role") == "study"],
        [r for r in runs if r.data.tags.get("sweeps.role") == "trial"],
    )


def run_of(trial_runs: list[Any], number: int) -> Any:
    (run,) = [r for r in trial_runs if r.data.tags["optuna.trial_number"] == str(number)]
    return run


def ran_to_an_end(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Trials that count toward n_trials: complete, pruned, or failed by their own error (a skipped duplicate of a
    finished configuration was not trained and does not count)."""
    return [
        t for t in study.trials
        if t.state.name in ENDED and not (t.user_attrs.get("worker_died") or t.user_attrs.get("interrupted"))
        and "duplicate_of" not in t.user_attrs
    ]


def assert_mlflow_consistent(out: Path, study: optuna.Study) -> None:
    """One parent run; one trial run per Optuna trial (none RUNNING), under the parent, status matching Optuna."""
    parents, trials = mlflow_runs(out)
    assert len(parents) == 1
    numbers = sorted(int(r.data.tags["optuna.trial_number"]) for r in trials)
    assert numbers == sorted(t.number for t in study.trials), "one MLflow run per Optuna trial"
    expected = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "FAILED"}
    for t in study.trials:
        run = run_of(trials, t.number)
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        status = "KILLED" if t.user_attrs.get("interrupted") else expected[t.state.name]
        assert run.info.status == status, (t.number, t.state, run.info.status)
        assert t.user_attrs["mlflow_run_id"] == run.info.run_id


# -- a worker killed mid-trial ----------------------------------------------------------------------------------------
def test_sigkill_mid_epoch_then_rerun_resumes_and_retries(assets: dict[str, Path], tmp_path: Path) -> None:
    study_file = write_study(
        tmp_path / "study.yaml", assets["model"], assets["big"],
        training={"epochs": 2, "batch_size": 8, "num_threads": 1, "cache": "off"},
        optuna={"n_trials": 3, "pruner": "none", "retry_failed": 1},
    )
    out = fresh_output(assets, tmp_path / "out")
    proc = start_run(study_file, out, "--no-report")
    # trial 0 completes; trial 1 finishes its first epoch; SIGKILL lands in its second epoch
    wait_for_log(proc, out, lambda text: "trial 1 epoch 1/2" in text)
    proc.kill()
    assert proc.wait(timeout=30) == -signal.SIGKILL
    log = (out / "sweeps.log").read_text()
    assert "trial 1 epoch 2/2" not in log and "trial 1: complete" not in log, "the kill came too late"

    before = load(out)
    assert [t.state.name for t in before.trials[:2]] == ["COMPLETE", "RUNNING"]
    killed = before.trials[1]
    _, runs = mlflow_runs(out)
    assert run_of(runs, 1).info.status == "RUNNING"
    done_before = run_of(runs, 0)
    backup = tmp_path / "out-retry0"
    shutil.copytree(out, backup)

    # the same command again: resumes; the killed trial is failed (Optuna + MLflow) and retried with its parameters
    assert main(["run", str(study_file), "--output", str(out), "--no-report"]) == 0
    study = load(out)
    trial0, trial1 = study.trials[0], study.trials[1]
    assert trial0.state.name == "COMPLETE" and trial0.value == before.trials[0].value
    assert trial1.state.name == "FAIL"
    assert trial1.user_attrs["worker_died"] is True
    assert "died" in trial1.user_attrs["fail_reason"]
    retries = [t for t in study.trials if t.user_attrs.get("retry_of") == 1]
    assert len(retries) == 1 and retries[0].state.name == "COMPLETE"
    assert retries[0].params == killed.params and retries[0].user_attrs["attempt"] == 1
    trained = [t for t in study.trials if "duplicate_of" not in t.user_attrs]
    assert len(ran_to_an_end(study)) == 3 and len(trained) == 4  # n_trials honoured; the killed one is extra
    assert_mlflow_consistent(out, study)
    _, runs = mlflow_runs(out)
    assert run_of(runs, 1).data.tags["sweeps.status"] == "failed"
    assert "died" in run_of(runs, 1).data.tags["sweeps.fail_reason"]
    intact = run_of(runs, 0)  # the completed trial's run is untouched
    assert intact.info.status == "FINISHED" and intact.data.metrics == done_before.data.metrics
    assert intact.data.tags["sweeps.status"] == "complete"

    # retry_failed: 0: no retry; a new sample takes the killed trial's slot
    assert main(["run", str(study_file), "--output", str(backup), "--no-report",
                 "--set", "optuna.retry_failed=0", "--set", "training.epochs=1"]) == 0
    other = load(backup)
    assert other.trials[1].state.name == "FAIL" and other.trials[1].user_attrs["worker_died"] is True
    assert not [t for t in other.trials if "retry_of" in t.user_attrs]
    assert len(ran_to_an_end(other)) == 3 and len(other.trials) == 4
    assert all(t.state.name == "COMPLETE" for t in other.trials[2:])


# -- Ctrl-C -----------------------------------------------------------------------------------------------------------
def test_sigint_mid_trial_exits_130_records_and_resumes(assets: dict[str, Path], tmp_path: Path) -> None:
    study_file = write_study(
        tmp_path / "study.yaml", assets["model"], assets["big"],
        training={"epochs": 2, "batch_size": 8, "num_threads": 1, "cache": "off"},
        optuna={"n_trials": 2, "pruner": "none"},
    )
    out = fresh_output(assets, tmp_path / "out")
    proc = start_run(study_file, out, "--no-report")
    wait_for_log(proc, out, lambda text: "trial 0 epoch 1/2" in text)
    proc.send_signal(signal.SIGINT)  # in the second epoch

    assert proc.wait(timeout=60) == 130
    assert "trial 0 epoch 2/2" not in (out / "sweeps.log").read_text(), "the SIGINT came too late"
    stderr = (tmp_path / "out.stderr").read_text()
    assert "Resume with the same command" in stderr
    assert f"--output {out}" in stderr  # the folder the user gave, or the hint resumes a different study

    study = load(out)
    trial = study.trials[0]
    assert trial.state.name == "FAIL" and trial.user_attrs["interrupted"] is True
    assert "interrupted" in trial.user_attrs["fail_reason"]
    parents, runs = mlflow_runs(out)
    assert run_of(runs, 0).info.status == "KILLED"
    assert run_of(runs, 0).data.tags["sweeps.status"] == "failed"
    assert not [r for r in runs if r.info.status == "RUNNING"]

    assert main(["run", str(study_file), "--output", str(out), "--no-report"]) == 0
    study = load(out)
    assert len(ran_to_an_end(study)) == 2 and len(study.trials) == 3  # the interrupted trial does not count
    assert all(t.state.name == "COMPLETE" for t in study.trials[1:])
    assert_mlflow_consistent(out, study)
    parents, _ = mlflow_runs(out)
    assert parents[0].info.status == "FINISHED"


# -- trials that fail: NaN loss, bad hyperparameters -------------------------------------------------------------------
def test_nan_loss_and_bad_hyperparameters_fail_their_trial_and_the_study_goes_on(
    assets: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    module = strategies_module(tmp_path / "mods", "fault_strats_bad")
    study_file = write_study(
        tmp_path / "study.yaml", assets["model"], assets["data"],
        training={"epochs": 1, "optimizer": "sgd", "num_threads": 1},
        strategies=[
            {"name": "none"},
            # a typo'd ratio: blocks train at base LR × 1e8, the loss is NaN within the first batches
            {"name": "discriminative", "params": {"decay": 1.0, "head_lr_ratio": 1.0e-8}},
            # k is searched, so only a trial can find 3..4 > 2 layers (a fixed k is refused before the study)
            {"name": f"{module}:TopKOnly", "params": {"k": {"type": "int", "low": 3, "high": 4}}},
        ],
        optuna={"n_trials": 3, "pruner": "none"},
    )
    out = fresh_output(assets, tmp_path / "out")
    assert main(["run", str(study_file), "--output", str(out)]) == 0  # a trial completed: success

    study = load(out)
    by_strategy = {t.params["strategy"]: t for t in study.trials}
    assert by_strategy["none"].state.name == "COMPLETE"
    nan, bad = by_strategy["discriminative"], by_strategy[f"{module}:TopKOnly"]
    assert nan.state.name == "FAIL" and bad.state.name == "FAIL"
    assert "nan" in nan.user_attrs["fail_reason"].lower()
    assert "epoch 0 batch" in nan.user_attrs["fail_reason"]  # caught at the step, not at the end of the epoch
    batch = int(nan.user_attrs["fail_reason"].rsplit("batch", 1)[1].split()[0])
    assert batch < 5 - 1  # 80 rows / 16: found before the epoch's last batch
    assert "k" in bad.user_attrs["fail_reason"] and "must be in 1..2" in bad.user_attrs["fail_reason"]

    _, runs = mlflow_runs(out)
    for t in (nan, bad):
        run = run_of(runs, t.number)
        assert run.info.status == "FAILED"
        assert run.data.tags["sweeps.status"] == "failed"
        assert run.data.tags["sweeps.fail_reason"] == t.user_attrs["fail_reason"]
    assert_mlflow_consistent(out, study)

    from sweeps.report import trials_table

    table = trials_table(study).set_index("number")
    assert table.loc[nan.number, "state"] == "failed"
    assert table.loc[nan.number, "fail_reason"] == nan.user_attrs["fail_reason"]
    assert table.loc[bad.number, "fail_reason"] == bad.user_attrs["fail_reason"]
    assert "loss is nan" in (out / "report" / "index.html").read_text().lower()


# -- out of memory --------------------------------------------------------------------------------------------------
def test_out_of_memory_fails_the_trial_and_releases_its_memory(
    assets: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    module = strategies_module(tmp_path / "mods", "fault_strats_oom")
    study_file = write_study(
        tmp_path / "study.yaml", assets["model"], assets["data"],
        training={"epochs": 2, "num_threads": 1},
        # every strategy gets one trial first, in this order: a baseline, the one that runs out of memory, another
        strategies=[{"name": "none"}, {"name": f"{module}:Hog", "params": {"mb": 768}}, {"name": "embeddings"}],
        optuna={"n_trials": 3, "pruner": "none"},
    )
    out = fresh_output(assets, tmp_path / "out")
    assert main(["run", str(study_file), "--output", str(out), "--no-report"]) == 0
    study = load(out)
    before, hog, after = study.trials
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert hog.user_attrs["fail_reason"].startswith("out of memory")
    _, runs = mlflow_runs(out)
    assert "out of memory" in run_of(runs, hog.number).data.tags["sweeps.fail_reason"]
    # the 768 MiB the failed trial held are gone before the next trial starts: its peak is not above the baseline's
    peak_before = before.user_attrs["metric.peak_memory_mb"]
    peak_after = after.user_attrs["metric.peak_memory_mb"]
    assert math.isfinite(peak_before) and peak_after < peak_before + 200, (peak_before, peak_after)


# -- editing the study file -------------------------------------------------------------------------------------------
def test_resume_refuses_incomparable_edits_and_accepts_harmless_ones(
    assets: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study_file = write_study(
        tmp_path / "study.yaml", assets["model"], assets["data"],
        training={"epochs": 1, "num_threads": 1}, strategies=[{"name": "none"}], optuna={"n_trials": 1},
    )
    out = fresh_output(assets, tmp_path / "out")
    base = ["run", str(study_file), "--output", str(out), "--no-report"]
    assert main(base) == 0
    capsys.readouterr()

    other_model = make_tiny_model(tmp_path / "model3", layers=3)
    edits = {
        "model": ["--set", f"task.model={other_model}"],
        "data": ["--set", "task.data.max_train_rows=40"],
        "metric": ["--set", "task.metric=f1_macro"],
        "max_length": ["--set", "task.max_length=12"],
    }
    for what, override in edits.items():
        assert main([*base, *override]) == 2, what
        err = capsys.readouterr().err
        assert "study 'tiny' already has trials for a different model/data/metric" in err, (what, err)
        assert "--set name=" in err and "--output" in err  # says how to start a new study instead
    assert len(load(out).trials) == 1  # nothing was run

    # a new study name is a new study (same folder): accepted
    assert main([*base, "--set", f"task.model={other_model}", "--set", "name=tiny-3layers"]) == 0
    assert len(load(out, "tiny-3layers").trials) == 1
    # n_trials is not part of what makes trials comparable: raising it resumes
    assert main([*base, "--set", "optuna.n_trials=2"]) == 0
    study = load(out)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]


# -- determinism ----------------------------------------------------------------------------------------------------
def test_same_study_and_seed_give_identical_metrics(assets: dict[str, Path], tmp_path: Path) -> None:
    """Two fresh runs of one study file (separate processes, different hash seeds, side by side) give bit-identical
    metrics per trial on CPU."""
    study_file = write_study(
        tmp_path / "study.yaml", assets["model"], assets["data"],
        training={"epochs": 2, "num_threads": 1, "learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2}},
        strategies=[{"name": "none"}, {"name": "bottom_n", "params": {"n": {"type": "int", "low": 1, "high": 2}}},
                    {"name": "discriminative", "params": {"decay": {"type": "float", "low": 0.5, "high": 1.0}}}],
        optuna={"n_trials": 4, "pruner": "none"},
    )
    outs = [fresh_output(assets, tmp_path / f"out{i}") for i in (1, 2)]
    procs = [start_run(study_file, out, "--no-report", env={"PYTHONHASHSEED": str(i)}) for i, out in enumerate(outs)]
    for proc, out in zip(procs, outs):
        assert proc.wait(timeout=600) == 0, (out.parent / f"{out.name}.stderr").read_text()[-3000:]
    first, second = (load(out).trials for out in outs)
    assert len(first) == len(second) == 4
    for a, b in zip(first, second):
        assert a.state.name == b.state.name == "COMPLETE"
        assert a.params == b.params
        for name in ("accuracy", "eval_loss", "train_loss", "f1_macro"):
            assert a.user_attrs[f"metric.{name}"] == b.user_attrs[f"metric.{name}"], (a.number, name)
        assert a.value == b.value
    # and the per-epoch series logged to MLflow match as well
    _, runs1 = mlflow_runs(outs[0])
    _, runs2 = mlflow_runs(outs[1])
    for t in first:
        m1, m2 = run_of(runs1, t.number).data.metrics, run_of(runs2, t.number).data.metrics
        for name in ("accuracy", "eval_loss", "train_loss"):
            assert m1[name] == m2[name]


# -- secrets in error messages ----------------------------------------------------------------------------------------
def test_unreachable_services_fail_with_masked_passwords(
    assets: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A service that cannot be reached is exit code 1 with a message naming it — and never its password (MLflow's
    own error text quotes the full URL)."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    study_file = write_study(tmp_path / "study.yaml", assets["model"], assets["data"])
    password = "Pw-9f3kLq"
    closed = free_port()
    for key, url in (
        ("tracking.uri", f"http://bob:{password}@127.0.0.1:{closed}"),
        ("optuna.storage", f"postgresql://bob:{password}@127.0.0.1:{closed}/optuna"),
    ):
        out = fresh_output(assets, tmp_path / key)
        assert main(["run", str(study_file), "--output", str(out), "--set", f"{key}={url}"]) == 1, key
        err = capsys.readouterr().err
        assert f"{key}: cannot " in err and f"bob:***@127.0.0.1:{closed}" in err, err
        assert password not in err + (out / "sweeps.log").read_text(), key


# -- a machine lost: recovery through Optuna's heartbeat ------------------------------------------------------------
def test_trials_of_a_lost_machine_are_recovered_once_after_the_grace_period(
    assets: dict[str, Path], tmp_path: Path
) -> None:
    """A worker on another machine stops sending heartbeats (the machine was lost; its PID means nothing here), and
    one died right after asking for a trial, before recording anything. Workers starting later mark both failed in
    Optuna and MLflow once the grace period has passed, and retry each exactly once although two look at once."""
    import sqlite3
    from concurrent.futures import ThreadPoolExecutor

    from sweeps.config import load_spec
    from sweeps.records import TrialAttr, default_tracking_uri
    from sweeps.study import budget_used, open_study, recover_dead_trials, suggest
    from sweeps.track import Tracker

    study_file = write_study(tmp_path / "study.yaml", assets["model"], assets["data"],
                             optuna={"n_trials": 4, "retry_failed": 1})
    out = fresh_output(assets, tmp_path / "out")
    spec = load_spec(study_file, output=str(out))

    def worker() -> tuple[optuna.Study, Tracker]:
        study = open_study(spec)
        return study, Tracker(default_tracking_uri(out), "tiny", artifact_root=out / "mlartifacts")

    study, tracker = worker()
    parent = tracker.parent_run(study, "tiny", {"sweeps.study": "tiny"})
    lost = study.ask()  # as StudyRunner.run_one leaves a trial on machine B
    lost.set_user_attr("host", "machine-b")
    lost.set_user_attr("pid", os.getpid())  # a live PID here, but on another host it says nothing
    params = suggest(lost, spec)
    run_id = tracker.start_trial(parent, "trial-0", {"sweeps.study": "tiny", "optuna.trial_number": "0"},
                                 {"strategy": params.strategy})
    lost.set_user_attr(TrialAttr.MLFLOW_RUN, run_id)
    study._storage.record_heartbeat(lost._trial_id)
    silent = study.ask()  # its worker died between ask() and recording host/pid: no heartbeat either

    assert recover_dead_trials(study, tracker, retry_failed=1) == []  # within the grace period: may be alive
    assert budget_used(study) == 2

    with sqlite3.connect(out / "optuna.db") as db:  # ten minutes pass without a heartbeat
        db.execute("UPDATE trial_heartbeats SET heartbeat = datetime(heartbeat, '-10 minutes')")
        db.execute("UPDATE trials SET datetime_start = datetime(datetime_start, '-10 minutes')")
    with ThreadPoolExecutor(2) as pool:  # two workers start at the same moment
        found = list(pool.map(lambda w: recover_dead_trials(w[0], w[1], retry_failed=1), [worker(), worker()]))
    assert sorted(n for numbers in found for n in numbers) == [lost.number, silent.number]

    study = load(out)
    for number, reason in ((lost.number, "heartbeat"), (silent.number, "right after asking")):
        trial = study.trials[number]
        assert trial.state.name == "FAIL" and trial.user_attrs["worker_died"] is True
        assert reason in trial.user_attrs["fail_reason"]
        assert len([t for t in study.trials if t.user_attrs.get("retry_of") == number]) == 1
    assert budget_used(study) == 0
    retry = next(t for t in study.trials if t.user_attrs.get("retry_of") == lost.number)
    assert retry.state.name == "WAITING" and retry.system_attrs["fixed_params"] == lost.params
    _, runs = mlflow_runs(out)
    assert run_of(runs, lost.number).info.status == "FAILED"
    assert "heartbeat" in run_of(runs, lost.number).data.tags["sweeps.fail_reason"]
