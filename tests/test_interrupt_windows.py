"""A stop signal recorded as an interruption wherever it lands in a trial's life, not only during training.

Real signals (``signal.raise_signal``) with the CLI's handlers installed, delivered at the exact point under test by
wrapping the step that comes just before it. The worker pool forwards a Ctrl-C the moment it arrives, so a worker is
often still setting its trial up: a signal there used to leave the trial RUNNING, and the parent then recovered it as a
dead worker's ("worker process died") instead of an interrupted one.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from e2e_helpers import make_dataset, make_tiny_model, write_study
from mlflow.tracking import MlflowClient
from services import blank_mlflow_db

from sweeps.errors import Interrupted
from sweeps.signals import deferring_stop_signals, ignoring_stop_signals, install_stop_handlers


@pytest.fixture
def stop_handlers() -> Iterator[None]:
    """The CLI's handlers for the test, the previous ones back afterwards."""
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    install_stop_handlers()
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("interrupt-assets")
    return {
        "model": make_tiny_model(root / "model"),
        "data": make_dataset(root / "data", n_train=32, n_validation=16),
        "blank_mlflow": blank_mlflow_db(root / "blank" / "mlflow.db"),
    }


def test_a_signal_inside_the_deferring_block_is_raised_as_it_ends(stop_handlers: None) -> None:
    reached_the_end = False
    with pytest.raises(Interrupted) as raised, deferring_stop_signals():
        signal.raise_signal(signal.SIGTERM)
        reached_the_end = True
    assert reached_the_end and raised.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGINT) is not signal.SIG_IGN  # handlers restored


def test_a_deferred_signal_inside_an_ignoring_block_stays_ignored(stop_handlers: None) -> None:
    with ignoring_stop_signals(), deferring_stop_signals():
        signal.raise_signal(signal.SIGINT)
    with pytest.raises(Interrupted):  # and the handlers are back once both blocks end
        signal.raise_signal(signal.SIGINT)


def _runner(assets: dict[str, Path], tmp_path: Path) -> Any:
    from sweeps.config import load_spec
    from sweeps.study import StudyRunner

    out = tmp_path / "out"
    out.mkdir()
    (out / "mlflow.db").write_bytes(assets["blank_mlflow"].read_bytes())
    study_file = write_study(
        tmp_path / "study.yaml", assets["model"], assets["data"],
        training={"epochs": 1, "batch_size": 16, "cache": "off"}, optuna={"n_trials": 1, "pruner": "none"},
    )
    return StudyRunner(load_spec(study_file, output=str(out)), out)


def _signal_after(func: Callable[..., Any]) -> Callable[..., Any]:
    """``func``, then a real SIGINT to this process (as a worker gets it from its parent)."""

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        result = func(*args, **kwargs)
        signal.raise_signal(signal.SIGINT)
        return result

    return wrapped


def _after_ask(runner: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner.study, "ask", _signal_after(runner.study.ask))


def _after_mlflow_run_opened(runner: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run exists in MLflow, its id is not yet on the trial."""
    monkeypatch.setattr(runner.tracker, "start_trial", _signal_after(runner.tracker.start_trial))


def _after_the_start_line(runner: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the log line the test of ``--workers`` waits for, before training starts."""
    import sweeps.study.runner as runner_module

    @contextlib.contextmanager
    def heartbeat(*_args: Any) -> Iterator[None]:
        signal.raise_signal(signal.SIGINT)
        yield

    monkeypatch.setattr(runner_module, "heartbeat", heartbeat)


@pytest.mark.parametrize("window", [_after_ask, _after_mlflow_run_opened, _after_the_start_line],
                         ids=lambda w: w.__name__.lstrip("_"))
def test_a_signal_while_the_trial_is_set_up_records_it_as_interrupted(
    window: Callable[[Any, pytest.MonkeyPatch], None],
    assets: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    stop_handlers: None,
) -> None:
    runner = _runner(assets, tmp_path)
    window(runner, monkeypatch)
    with pytest.raises(Interrupted):
        runner.run()

    (trial,) = runner.study.get_trials()
    assert trial.state == optuna.trial.TrialState.FAIL
    assert trial.user_attrs.get("interrupted") is True and not trial.user_attrs.get("worker_died"), trial.user_attrs
    assert trial.user_attrs["fail_reason"] == "interrupted (Ctrl-C)" and trial.user_attrs["pid"] == os.getpid()
    client = MlflowClient(tracking_uri=runner.spec.tracking.uri)
    runs = client.search_runs([runner.tracker.experiment_id])
    trial_runs = [r for r in runs if r.data.tags.get("sweeps.role") == "trial"]
    # stopped before its MLflow run was opened, or the run is closed as killed (not left RUNNING)
    assert [r.info.status for r in trial_runs] == ([] if window is _after_ask else ["KILLED"])


def test_a_signal_after_the_trial_was_told_closes_its_mlflow_run(
    assets: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stop_handlers: None
) -> None:
    """Completed in Optuna, the signal arrives before MLflow hears of it: the trial stays complete, its run is ended
    as finished rather than left RUNNING until the next run."""
    runner = _runner(assets, tmp_path)
    tell = runner.study.tell
    monkeypatch.setattr(runner.study, "tell", _signal_after(tell))
    with pytest.raises(Interrupted):
        runner.run()
    (trial,) = runner.study.get_trials()
    assert trial.state == optuna.trial.TrialState.COMPLETE
    client = MlflowClient(tracking_uri=runner.spec.tracking.uri)
    trial_runs = [r for r in client.search_runs([runner.tracker.experiment_id])
                  if r.data.tags.get("sweeps.role") == "trial"]
    assert [r.info.status for r in trial_runs] == ["FINISHED"]
    assert trial_runs[0].data.tags["sweeps.status"] == "complete"
