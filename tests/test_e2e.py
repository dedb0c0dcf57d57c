"""End to end on a tiny local model: run, resume, MLflow contents, per-trial memory, pruning."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from e2e_helpers import make_dataset, make_tiny_model, write_study
from mlflow.tracking import MlflowClient

from sweeps.cli import main

pytestmark = pytest.mark.slow

CONTRACT = ["accuracy", "f1_macro", "eval_loss", "train_loss", "epoch_time_s", "peak_memory_mb", "samples_per_s",
            "trainable_params"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("assets")
    return make_tiny_model(root / "model"), make_dataset(root / "data")


def _client(out: Path) -> tuple[MlflowClient, str]:
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    return client, client.get_experiment_by_name("tiny").experiment_id


def test_run_logs_every_trial_to_mlflow_and_resumes(assets: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = assets
    study = write_study(tmp_path / "study.yaml", model, data)
    out = tmp_path / "out"
    assert main(["run", str(study), "--output", str(out)]) == 0

    client, exp = _client(out)
    runs = client.search_runs([exp])
    parents = [r for r in runs if r.data.tags.get("sweeps.role") == "study"]
    trials = [r for r in runs if r.data.tags.get("sweeps.role") == "trial"]
    assert len(parents) == 1 and len(trials) == 2
    parent_id = parents[0].info.run_id
    for run in trials:
        assert run.data.tags["mlflow.parentRunId"] == parent_id
        assert run.data.tags["sweeps.status"] == "complete"
        assert run.data.tags["frozen_params_verified"] == "true"
        assert run.info.status == "FINISHED"
        for name in CONTRACT:
            assert name in run.data.metrics, name
            history = client.get_metric_history(run.info.run_id, name)
            assert len(history) >= 2  # per epoch (step = epoch) + the final value
        lr_names = [k for k in run.data.metrics if k.startswith("lr/")]
        assert {"lr/embeddings", "lr/layer.0", "lr/layer.1", "lr/head"} <= set(lr_names)
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"layer_groups.txt", "confusion_matrix.json", "epochs.json"} <= artifacts
    strategies = {r.data.tags["sweeps.strategy"] for r in trials}
    assert strategies == {"none", "bottom_n"}  # every listed strategy tried first
    bottom = next(r for r in trials if r.data.tags["sweeps.strategy"] == "bottom_n")
    full = next(r for r in trials if r.data.tags["sweeps.strategy"] == "none")
    assert bottom.data.metrics["trainable_params"] < full.data.metrics["trainable_params"]
    assert bottom.data.metrics["lr/embeddings"] == 0.0
    for run in trials:
        assert not [k for k in run.data.metrics if k.startswith("final/")], "single-bar final/* charts are back"
    _check_parent_has_best(client, out, parent_id, trials)

    # resume: raising n_trials continues the same study and the same parent run
    assert main(["run", str(study), "--output", str(out), "--set", "optuna.n_trials=3"]) == 0
    loaded = optuna.load_study(study_name="tiny", storage=f"sqlite:///{out / 'optuna.db'}")
    trained = [t for t in loaded.trials if t.state.name == "COMPLETE" and "duplicate_of" not in t.user_attrs]
    assert len(trained) == 3  # a proposal identical to a finished trial is skipped and does not use the budget
    runs = client.search_runs([exp])
    assert len([r for r in runs if r.data.tags.get("sweeps.role") == "study"]) == 1
    assert len([r for r in runs if r.data.tags.get("sweeps.role") == "trial"]) == 3
    assert json.loads((out / "models" / "best.json").read_text())["trial"] in {t.number for t in trained}
    trials = [r for r in runs if r.data.tags.get("sweeps.role") == "trial"]
    _check_parent_has_best(client, out, parent_id, trials)
    complete = [t for t in loaded.trials if t.state.name == "COMPLETE"]
    assert [h.step for h in client.get_metric_history(parent_id, "best_trial")][-1] == len(complete)  # per trial
    assert loaded.metric_names == ["accuracy"]  # optuna-dashboard's axis name, not "Objective 0"

    # nothing left to do: said so, nothing run
    assert main(["run", str(study), "--output", str(out), "--set", "optuna.n_trials=3", "--no-report"]) == 0
    assert "study complete: 3 of 3 trials; nothing to run" in (out / "sweeps.log").read_text()

    # report prints the comparison table
    assert main(["report", str(study), "--output", str(out), "--format", "csv"]) == 0
    assert (out / "report" / "index.html").exists()


def _check_parent_has_best(client: MlflowClient, out: Path, parent_id: str, trials: list) -> None:
    """The parent run shows the best trial (by the report's rule) and its model is an MLflow Logged Model."""
    from sweeps.report.verdict import best_trial_number

    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{out / 'optuna.db'}")
    number = best_trial_number(study)
    parent = client.get_run(parent_id)
    best = next(r for r in trials if r.data.tags["optuna.trial_number"] == str(number))
    assert parent.data.tags["sweeps.best.trial"] == str(number)
    assert parent.data.tags["sweeps.best.strategy"] == best.data.tags["sweeps.strategy"]
    assert parent.data.metrics["best_trial"] == number
    for name in CONTRACT:
        assert parent.data.metrics[name] == pytest.approx(best.data.metrics[name]), name
    assert best.data.tags.get("sweeps.best_model") == "true"
    models = client.search_logged_models([parent.info.experiment_id])
    assert best.info.run_id in {m.source_run_id for m in models}
    assert best.data.tags["sweeps.model_uri"].startswith("models:/")


def test_one_trial_pruned(assets: tuple[Path, Path], tmp_path: Path) -> None:
    """Two trials of one strategy, one pruned: successive halving stops the second trial (learning rate 5e-3, which
    overshoots on this tiny model: eval loss 0.80 after epoch 2) before its last epoch because its eval loss is worse
    than the first trial's (1e-6: stays at 0.69) at the same epoch. Sampler seed 0 draws 1e-6 then 5e-3
    (deterministic). Pruning compares trials of the same strategy only."""
    model, data = assets
    study = write_study(
        tmp_path / "study.yaml", model, data,
        task={"metric": "eval_loss"},
        training={"epochs": 3, "learning_rate": {"choices": [5e-3, 1e-6]}},
        strategies=[{"name": "none"}],
        optuna={"n_trials": 2, "pruner": "successive_halving", "sampler": "random", "sampler_seed": 0},
    )
    out = tmp_path / "out"
    assert main(["run", str(study), "--output", str(out)]) == 0
    loaded = optuna.load_study(study_name="tiny", storage=f"sqlite:///{out / 'optuna.db'}")
    assert [t.state.name for t in loaded.trials] == ["COMPLETE", "PRUNED"]
    client, exp = _client(out)
    runs = [r for r in client.search_runs([exp]) if r.data.tags.get("sweeps.role") == "trial"]
    pruned = next(r for r in runs if r.data.tags["sweeps.status"] == "pruned")
    assert "pruned at epoch" in pruned.data.tags["sweeps.prune_reason"]
    assert pruned.info.status == "FINISHED"  # no run is left RUNNING
    assert 1 <= len(client.get_metric_history(pruned.info.run_id, "eval_loss")) < 3


def test_validate_reports_yaml_path_of_out_of_range_n(assets: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    model, data = assets
    study = write_study(
        tmp_path / "study.yaml", model, data,
        strategies=[{"name": "bottom_n", "params": {"n": {"type": "int", "low": 1, "high": 14}}}],
    )
    assert main(["validate", str(study), "--model", "--output", str(tmp_path / "o")]) == 2
    assert "strategies[0].params.n: high 14 > 2 layers in the model" in capsys.readouterr().err


def test_inspect_json(assets: tuple[Path, Path], capsys) -> None:
    model, _ = assets
    assert main(["inspect", str(model), "--strategy", "bottom_n", "--param", "n=1", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["embeddings", "layer.0", "layer.1", "head"]
    assert [r["frozen"] for r in rows] == [True, True, False, False]
    assert {"name", "num_params", "frozen", "lr_multiplier"} <= set(rows[0])


def test_training_options_run_end_to_end(assets: tuple[Path, Path], tmp_path: Path) -> None:
    """Accumulation, bf16 autocast (CPU), length-grouped batches, checkpointing with a frozen prefix, SGD, cosine
    schedule with warmup and early stopping all work together in a real trial."""
    model, data = assets
    study = write_study(
        tmp_path / "study.yaml", model, data,
        training={"epochs": 4, "grad_accum_steps": 2, "precision": "bf16", "group_by_length": True,
                  "gradient_checkpointing": True, "optimizer": "sgd", "scheduler": "cosine", "warmup_ratio": 0.2,
                  "early_stopping_patience": 1, "learning_rate": 0.05},
        strategies=[{"name": "bottom_n", "params": {"n": 1}}],
        optuna={"n_trials": 1, "pruner": "none"},
    )
    out = tmp_path / "out"
    assert main(["run", str(study), "--output", str(out)]) == 0
    client, exp = _client(out)
    (run,) = [r for r in client.search_runs([exp]) if r.data.tags.get("sweeps.role") == "trial"]
    assert run.data.tags["frozen_params_verified"] == "true"
    lr_head = [m.value for m in client.get_metric_history(run.info.run_id, "lr/head")]
    assert all(v > 0 for v in lr_head) and client.get_metric_history(run.info.run_id, "lr/layer.0")[0].value == 0.0
    epochs = json.loads((out / "trials" / "trial_0_epochs.json").read_text())
    assert 1 <= len(epochs) <= 4  # early stopping may end it before the last epoch
