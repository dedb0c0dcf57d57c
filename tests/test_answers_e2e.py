"""End to end on a tiny local model: confirmation seeds, a labelled held-out test split, trial health flags and
duplicate skipping, through the CLI (run → report → predict)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import optuna
import pytest
from e2e_helpers import make_dataset, make_tiny_model, write_study
from mlflow.tracking import MlflowClient

from sweeps.cli import main
from sweeps.errors import SweepsError
from sweeps.predict import load_best

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("answers")
    data = make_dataset(root / "data")
    held_out = make_dataset(root / "held_out", seed=11)
    shutil.copy(held_out / "validation.csv", data / "test_labelled.csv")  # id,text,label: a labelled test split
    return make_tiny_model(root / "model"), data


def _load(out: Path) -> optuna.Study:
    return optuna.load_study(study_name="tiny", storage=f"sqlite:///{out / 'optuna.db'}")


def test_confirmation_seeds_and_held_out_test(assets: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    model, data = assets
    study_file = write_study(
        tmp_path / "study.yaml",
        model,
        data,
        task={"data": {"train": str(data / "train.csv"), "validation": str(data / "validation.csv"),
                       "test": str(data / "test_labelled.csv"), "id_column": "id", "max_test_rows": 15}},
        strategies=[{"name": "none"}, {"name": "bottom_n", "params": {"n": 1}}],
        optuna={"n_trials": 2, "pruner": "none", "confirm": {"top_k": 1, "seeds": 2}},
    )
    out = tmp_path / "out"
    assert main(["run", str(study_file), "--output", str(out)]) == 0

    study = _load(out)
    trials = study.get_trials()
    search = [t for t in trials if "confirm_of" not in t.user_attrs]
    confirm = [t for t in trials if "confirm_of" in t.user_attrs]
    assert len(search) == 2 and all(t.state.name == "COMPLETE" for t in search)
    # top_k 1 plus the best none, each retrained with one more seed (2 seeds in all); not counted in n_trials
    finalists = {t.user_attrs["confirm_of"] for t in confirm}
    assert len(confirm) == len(finalists) and {t.number for t in search if t.user_attrs["strategy"] == "none"} <= (
        finalists
    )
    for t in confirm:
        origin = next(s for s in search if s.number == t.user_attrs["confirm_of"])
        assert t.params == origin.params and t.user_attrs["seed"] == origin.user_attrs["seed"] + 1
        assert t.user_attrs["config_key"] != origin.user_attrs["config_key"]
    for t in trials:
        assert isinstance(t.user_attrs["learned"], bool) and isinstance(t.user_attrs["degenerate"], bool)

    # held-out test: every confirmation trial and the best trial, once, on max_test_rows rows
    tests = {int(k.split(".")[1]): v for k, v in study.user_attrs.items() if k.startswith("test.")}
    best = json.loads((out / "models" / "best.json").read_text())["trial"]
    assert {t.number for t in confirm} | {best} == set(tests)
    assert all(v["rows"] == 15 and 0.0 <= v["accuracy"] <= 1.0 for v in tests.values())

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tiny").experiment_id
    runs = {r.data.tags["optuna.trial_number"]: r for r in client.search_runs([exp])
            if r.data.tags.get("sweeps.role") == "trial"}
    assert len(runs) == len(trials)
    for number in tests:
        assert "test/accuracy" in runs[str(number)].data.metrics
    for run in runs.values():
        assert run.data.tags["sweeps.learned"] in ("true", "false")
        assert run.data.tags["sweeps.degenerate"] in ("true", "false")

    lines = (out / "report" / "recommendation.txt").read_text()
    assert "Held-out test (15 rows" in lines and "Seeds (mean ± std over 2)" in lines

    assert main(["report", str(study_file), "--output", str(out), "--format", "json"]) == 0

    # predict with the kept model (the best one); load_best on a bare folder cannot retrain another trial: it says how
    assert main(["predict", str(study_file), "--output", str(out), "--trial", str(best)]) == 0
    assert (out / "submission.csv").is_file()
    other = next(t.number for t in search if t.number != best)
    with pytest.raises(SweepsError, match=f"trial {other} has no saved model.*predict <study.yaml> --trial {other}"):
        load_best(out, trial=other)

    # a confirmation trial whose model is not there (removed here if it was the best): predict --trial retrains it with
    # its own seed, reproducing its metric
    retrained = confirm[0]
    shutil.rmtree(out / "models" / f"trial_{retrained.number}", ignore_errors=True)
    capsys.readouterr()
    assert main(["predict", str(study_file), "--output", str(out), "--trial", str(retrained.number)]) == 0
    err = capsys.readouterr().err
    assert f"seed {retrained.user_attrs['seed']}): ~" in err and f"trial {retrained.number} retrained in" in err
    assert "as recorded" in err


def test_duplicates_are_not_trained_again(assets: tuple[Path, Path], tmp_path: Path) -> None:
    """A one-configuration space: the first trial trains, the sampler can only propose it again, and the search stops
    after a few duplicate proposals without training any of them or counting them toward n_trials."""
    model, data = assets
    study_file = write_study(
        tmp_path / "study.yaml", model, data, strategies=[{"name": "none"}], optuna={"n_trials": 3, "pruner": "none"},
        training={"learning_rate": 5e-3},
    )
    out = tmp_path / "out"
    assert main(["run", str(study_file), "--output", str(out)]) == 0
    trials = _load(out).get_trials()
    trained = [t for t in trials if "duplicate_of" not in t.user_attrs]
    duplicates = [t for t in trials if "duplicate_of" in t.user_attrs]
    assert len(trained) == 1 and len(duplicates) == 5
    assert all(t.user_attrs["duplicate_of"] == 0 and t.value == trained[0].value for t in duplicates)
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tiny").experiment_id
    runs = [r for r in client.search_runs([exp]) if r.data.tags.get("sweeps.role") == "trial"]
    assert len(runs) == len(trials)  # one MLflow run per Optuna trial, duplicates included ...
    skipped = [r for r in runs if r.data.tags["sweeps.status"] == "duplicate"]
    assert len(skipped) == 5 and all(r.data.tags["sweeps.duplicate_of"] == "0" for r in skipped)
    assert all("epoch_time_s" not in r.data.metrics for r in skipped)  # ... but only one was trained

    # a duplicate predicts with the trial it repeated (never trained itself, so it has no model of its own)
    assert main(["predict", str(study_file), "--output", str(out), "--trial", str(duplicates[0].number)]) == 0
    assert not (out / "models" / f"trial_{duplicates[0].number}").exists()


def test_a_gradual_schedule_that_cannot_finish_is_flagged(assets: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    model, data = assets
    study_file = write_study(tmp_path / "study.yaml", model, data, strategies=[{"name": "gradual"}])
    assert main(["validate", str(study_file), "--model", "--output", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "strategies[0].params: gradual's schedule changes for the last time at the start of epoch 4" in err
    assert "Use epochs >= 4" in err


def _strategies_in_order(study: optuna.Study) -> list[str]:
    return [t.params.get("strategy") or t.system_attrs["fixed_params"]["strategy"] for t in study.get_trials()]


def test_min_trials_per_strategy_enqueues_even_rounds_within_the_budget(assets: tuple[Path, Path],
                                                                        tmp_path: Path) -> None:
    """Each strategy's first trial, then each one's second: a budget too small for the minimum is shared evenly; a
    rerun enqueues nothing more, and a confirmation retrain does not count toward the minimum."""
    from sweeps.config import load_spec
    from sweeps.study import StudyRunner

    model, data = assets
    strategies = [{"name": "none"}, {"name": "bottom_n", "params": {"n": 1}}, {"name": "embeddings"}]
    study_file = write_study(tmp_path / "study.yaml", model, data, strategies=strategies,
                             optuna={"n_trials": 5, "pruner": "none", "min_trials_per_strategy": 2},
                             tracking={"enabled": False})
    runner = StudyRunner(load_spec(study_file, output=str(tmp_path / "out")), tmp_path / "out")
    runner._cover_strategies()
    assert _strategies_in_order(runner.study) == ["none", "bottom_n", "embeddings", "none", "bottom_n"]
    runner._cover_strategies()
    assert len(runner.study.get_trials()) == 5, "waiting trials count: a second runner enqueues nothing"

    more = load_spec(study_file, ["optuna.n_trials=20"], output=str(tmp_path / "out"))
    runner = StudyRunner(more, tmp_path / "out")
    runner.study.enqueue_trial({"strategy": "embeddings"}, user_attrs={"confirm_of": 2, "confirm_seed": 43})
    runner._cover_strategies()
    assert _strategies_in_order(runner.study)[5:] == ["embeddings", "embeddings"]


def test_min_trials_per_strategy_trains_each_strategy_that_often(assets: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = assets
    study_file = write_study(
        tmp_path / "study.yaml", model, data, strategies=[{"name": "none"}, {"name": "bottom_n", "params": {"n": 1}}],
        optuna={"n_trials": 4, "pruner": "none", "min_trials_per_strategy": 2},
    )
    out = tmp_path / "out"
    assert main(["run", str(study_file), "--output", str(out), "--no-report"]) == 0
    trials = _load(out).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    assert sorted(t.user_attrs["strategy"] for t in trials) == ["bottom_n", "bottom_n", "none", "none"]
    assert len({t.params["none.training.learning_rate"] for t in trials if t.user_attrs["strategy"] == "none"}) == 2


def test_min_trials_per_strategy_is_validated(assets: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    model, data = assets
    study_file = write_study(tmp_path / "study.yaml", model, data, optuna={"min_trials_per_strategy": 0})
    assert main(["validate", str(study_file)]) == 2
    assert "optuna.min_trials_per_strategy" in capsys.readouterr().err
