"""Inputs of issue 11 that used to slip through, and the state ``validate`` must not leave behind: ``max_length`` above
the model's positions, a ``module:attr`` optimizer that is no optimizer, ``package:`` importing the package,
``validate --model`` writing the study folder, the fingerprint of a study without finished trials, and the proof of
frozen parameters on pruned and failed trials. In-process, on a tiny local BERT (64 positions)."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import optuna
import pytest
from e2e_helpers import make_dataset, make_tiny_model, write_study
from mlflow.tracking import MlflowClient
from services import blank_mlflow_db

from sweeps.cli import main
from sweeps.config import load_spec
from sweeps.errors import SpecError


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inputs-assets")
    return {
        "model": make_tiny_model(root / "model"),
        "data": make_dataset(root / "data", n_train=48, n_validation=16),
        "blank_mlflow": blank_mlflow_db(root / "blank" / "mlflow.db"),
    }


def _study(assets: dict[str, Path], tmp_path: Path, **overrides) -> Path:
    base = {"training": {"epochs": 1, "batch_size": 16, "cache": "off"}, "optuna": {"n_trials": 1, "pruner": "none"}}
    return write_study(tmp_path / "study.yaml", assets["model"], assets["data"], **{**base, **overrides})


def _module(folder: Path, name: str, source: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text(textwrap.dedent(source))


# -- 6. validate writes nothing; a study without finished trials takes a new fingerprint -------------------------------
def test_validate_with_model_writes_nothing_to_the_study_folder(assets, tmp_path: Path, capsys) -> None:
    study = _study(assets, tmp_path)
    out = tmp_path / "out"
    assert main(["validate", str(study), "--model", "--output", str(out)]) == 0, capsys.readouterr().err
    assert main(["validate", str(study), "--output", str(out)]) == 0
    assert not out.exists() or not list(out.rglob("*")), sorted(out.rglob("*"))


def test_a_study_without_finished_trials_may_change_its_fingerprint(assets, tmp_path: Path) -> None:
    from sweeps.study import open_study

    study_file = _study(assets, tmp_path)
    out = tmp_path / "out"
    first = open_study(load_spec(study_file, output=str(out)))
    first.enqueue_trial({"strategy": "none"})  # waiting, never run: not a finished trial
    changed = load_spec(study_file, ["task.max_length=32"], output=str(out))
    study = open_study(changed)
    assert study.user_attrs["spec_fingerprint"] == changed.fingerprint()
    trial = study.ask()
    study.tell(trial, 0.5)
    with pytest.raises(SpecError, match="already has trials for a different model/data/metric"):
        open_study(load_spec(study_file, ["task.max_length=24"], output=str(out)))


# -- 8. max_length above the model's positions -------------------------------------------------------------------------
def test_max_length_above_the_models_positions_is_refused_at_validate_and_run(assets, tmp_path: Path, capsys) -> None:
    study = _study(assets, tmp_path)
    out = tmp_path / "out"
    assert main(["validate", str(study), "--model", "--set", "task.max_length=512"]) == 2
    err = capsys.readouterr().err
    assert "task.max_length: 512 is longer than the model accepts" in err and "has 64 positions" in err, err
    out.mkdir()
    blank_mlflow_db(out / "mlflow.db")
    assert main(["run", str(study), "--output", str(out), "--no-report", "--set", "task.max_length=512"]) == 2
    assert "has 64 positions" in capsys.readouterr().err
    assert not optuna.load_study(study_name="tiny", storage=f"sqlite:///{out / 'optuna.db'}").trials
    assert main(["validate", str(study), "--model", "--set", "task.max_length=64"]) == 0


# -- 10. training.optimizer: module:attr -------------------------------------------------------------------------------
def test_an_optimizer_reference_must_be_an_optimizer_or_a_marked_factory(tmp_path: Path, assets, capsys) -> None:
    study = _study(assets, tmp_path)
    assert main(["validate", str(study), "--set", "training.optimizer=os:system"]) == 2
    err = capsys.readouterr().err
    assert "training.optimizer" in err and "not a torch.optim.Optimizer subclass" in err, err
    assert main(["validate", str(study), "--set", "training.optimizer=torch.optim:RMSprop"]) == 0
    _module(tmp_path / "plugins", "my_optimizers", '''
        import torch
        from strategies.optim import optimizer_factory

        @optimizer_factory
        def sgd_nesterov(groups, **kwargs):
            return torch.optim.SGD(groups, momentum=0.9, nesterov=True)

        def unmarked(groups, **kwargs):
            return torch.optim.SGD(groups)
    ''')
    sys.path.insert(0, str(tmp_path / "plugins"))
    try:
        assert main(["validate", str(study), "--set", "training.optimizer=my_optimizers:sgd_nesterov"]) == 0
        assert main(["validate", str(study), "--set", "training.optimizer=my_optimizers:unmarked"]) == 2
        assert "optimizer_factory" in capsys.readouterr().err
        import torch

        from strategies import make_optimizer_factory

        opt = make_optimizer_factory("my_optimizers:sgd_nesterov")([{"params": [torch.nn.Parameter(torch.ones(2))]}])
        assert isinstance(opt, torch.optim.SGD) and opt.defaults["nesterov"] is True
    finally:
        sys.path.remove(str(tmp_path / "plugins"))


# -- 12. package: locates, never imports -------------------------------------------------------------------------------
def test_package_model_source_does_not_import_the_package(assets, tmp_path: Path, monkeypatch) -> None:
    import shutil

    from sweeps.train.models import resolve_model

    pkg = tmp_path / "site" / "loud_pkg"
    (pkg / "models").mkdir(parents=True)
    marker = tmp_path / "imported"
    (pkg / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    (pkg / "models" / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    shutil.copytree(assets["model"], pkg / "models" / "model")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    source = resolve_model("package:loud_pkg.models")
    assert source.kind == "package" and Path(source.location) == pkg / "models" / "model"
    assert not marker.exists() and "loud_pkg" not in sys.modules  # located, not imported


# -- 7. frozen_params_verified on pruned and failed trials -------------------------------------------------------------
def _trial_tags(out: Path) -> dict[int, dict[str, str]]:
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    trial_runs = [r for r in runs if r.data.tags.get("sweeps.role") == "trial"]
    return {int(r.data.tags["optuna.trial_number"]): r.data.tags for r in trial_runs}


def test_pruned_and_failed_trials_record_frozen_params_verified(assets, tmp_path: Path, monkeypatch) -> None:
    from sweeps.study import StudyRunner

    _module(tmp_path / "plugins", "late_failure", '''
        from dataclasses import dataclass
        from typing import ClassVar

        from strategies import EMBEDDINGS, Strategy, uniform_plan


        @dataclass
        class FailsInEpochTwo(Strategy):
            """Embeddings frozen; fails when planning epoch 1, after an epoch of training."""

            name: ClassVar[str] = "fails_in_epoch_two"

            def plan(self, layer_map, epoch, step):
                if epoch == 1:
                    raise ValueError("planned failure in epoch 2")
                return uniform_plan(layer_map, frozen={EMBEDDINGS})
    ''')
    monkeypatch.syspath_prepend(str(tmp_path / "plugins"))
    for name, strategy in (("pruned", {"name": "bottom_n", "params": {"n": 1}}),
                           ("failed", {"name": "late_failure:FailsInEpochTwo"})):
        (tmp_path / name).mkdir()
        study_file = _study(assets, tmp_path / name, training={"epochs": 2, "batch_size": 16, "cache": "off"},
                            strategies=[strategy])
        out = tmp_path / name / "out"
        out.mkdir(parents=True)
        blank_mlflow_db(out / "mlflow.db")
        runner = StudyRunner(load_spec(study_file, output=str(out)), out)
        if name == "pruned":  # accuracy < 2: every reported epoch prunes
            runner.study.pruner = optuna.pruners.ThresholdPruner(lower=2.0)
        runner.prepare()
        (report,) = runner.run()
        assert report.state == name, report
        (trial,) = runner.study.trials
        assert trial.user_attrs["frozen_params_verified"] is True
        assert _trial_tags(out)[trial.number]["frozen_params_verified"] == "true"
