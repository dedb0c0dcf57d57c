"""``training.precision: auto`` (the default): bf16 autocast on a GPU that computes bf16 natively, fp32 elsewhere, and
the trial logged, keyed and trained at the precision it actually ran at."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from e2e_helpers import make_dataset, make_tiny_model, write_study
from mlflow.tracking import MlflowClient

from sweeps.train.context import resolve_precision
from sweeps.train.loop import autocast_context


@pytest.mark.parametrize(
    ("device", "native_bf16", "expected"),
    [("cuda", True, "bf16"), ("cuda", False, "fp32"), ("cpu", True, "fp32"), ("mps", True, "fp32")],
)
def test_auto_is_bf16_only_on_a_gpu_with_native_bf16(
    device: str, native_bf16: bool, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[bool] = []

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        asked.append(including_emulation)
        return native_bf16

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    assert resolve_precision("auto", torch.device(device)) == expected
    assert asked in ([], [False]), "emulated bf16 (T4, V100) is slower than fp32: only native support counts"


@pytest.mark.parametrize("explicit", ["fp32", "bf16", "fp16"])
def test_an_explicit_precision_is_kept(explicit: str) -> None:
    assert resolve_precision(explicit, torch.device("cuda")) == explicit


def test_an_unresolved_precision_never_reaches_autocast() -> None:
    with pytest.raises(ValueError, match="'auto' is not a compute precision"):
        autocast_context(torch.device("cpu"), "auto")


def test_a_default_study_logs_the_precision_its_trials_ran_at(tmp_path: Path) -> None:
    """On this CPU machine ``auto`` is fp32: the MLflow run says fp32 (not ``auto``), and a trial asking for fp32
    explicitly is the same configuration (skipped as a duplicate rather than trained again: with one strategy at a
    fixed LR the sampler has nothing else to propose, so the search stops after a few duplicates)."""
    from sweeps.cli import main

    model, data = make_tiny_model(tmp_path / "model"), make_dataset(tmp_path / "data", n_train=32, n_validation=16)
    study_file = write_study(
        tmp_path / "study.yaml", model, data, strategies=[{"name": "none"}],
        training={"epochs": 1, "batch_size": 16, "learning_rate": 1e-3},
        optuna={"n_trials": 1, "pruner": "none"},
    )
    out = tmp_path / "out"
    assert main(["--quiet", "run", str(study_file), "--output", str(out), "--no-report"]) == 0
    assert main(["--quiet", "run", str(study_file), "--output", str(out), "--no-report",
                 "--set", "optuna.n_trials=2", "--set", "training.precision=fp32"]) == 0

    import optuna

    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{out / 'optuna.db'}")
    first, *later = study.trials
    assert later and all(t.user_attrs.get("duplicate_of") == first.number for t in later), [
        t.user_attrs for t in later]
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    run = client.get_run(first.user_attrs["mlflow_run_id"])
    assert run.data.params["training.precision"] == "fp32"


def test_a_retrain_uses_the_precision_the_trial_ran_at(tmp_path: Path) -> None:
    """A study with ``auto`` run on a bf16 GPU, predicted from on this CPU: the retrain trains at bf16, as the trial
    did, rather than calling the configuration changed (``auto`` would mean fp32 here)."""
    import optuna

    from sweeps.config import load_spec
    from sweeps.errors import SweepsError
    from sweeps.study.retrain import _params_of
    from sweeps.study.suggest import suggest

    model, data = make_tiny_model(tmp_path / "model"), make_dataset(tmp_path / "data", n_train=32, n_validation=16)
    spec = load_spec(write_study(tmp_path / "study.yaml", model, data))
    assert spec.training.precision == "auto"
    params = suggest(optuna.trial.FixedTrial({"strategy": "none", "none.training.learning_rate": 5e-3}), spec)
    params.training = params.training.model_copy(update={"precision": "bf16"})
    key = params.config_key()

    def trial(attrs: dict[str, object]) -> optuna.trial.FrozenTrial:
        return optuna.trial.create_trial(
            params={"strategy": "none", "none.training.learning_rate": 5e-3},
            distributions={"strategy": optuna.distributions.CategoricalDistribution(["none", "bottom_n"]),
                           "none.training.learning_rate": optuna.distributions.FloatDistribution(4e-3, 6e-3)},
            value=0.5, user_attrs={"config_key": key, **attrs},
        )

    assert _params_of(spec, trial({"precision": "bf16"})).training.precision == "bf16"
    with pytest.raises(SweepsError, match="no longer what the study file describes"):
        _params_of(spec, trial({}))  # no record: a trial from before ``auto``, which ran at fp32
