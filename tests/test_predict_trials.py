"""``predict --trial N`` for any completed trial (retrained when its model was not kept) and ``predict`` on a labelled
file (accuracy and macro-F1 printed, and attached by the API), end to end through the CLI on a tiny local BERT.

One 3-trial, 1-epoch study is shared by the module; each test predicts from it.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import optuna
import pandas as pd
import pytest
from e2e_helpers import make_dataset, make_tiny_model, write_study
from sklearn.metrics import accuracy_score, f1_score

from sweeps.cli import main
from sweeps.errors import EXIT_FAILURE, EXIT_OK

pytestmark = pytest.mark.slow

SUMMARY = re.compile(r"trial (\d+): accuracy=([0-9.]+) f1_macro=([0-9.]+) on (\d+) labelled rows")


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(study file, study folder, data folder) of a finished 3-trial study (none and bottom_n, searched LR)."""
    root = tmp_path_factory.mktemp("predict_trials")
    data = make_dataset(root / "data")
    study_file = write_study(
        root / "study.yaml", make_tiny_model(root / "model"), data,
        training={"epochs": 1}, optuna={"n_trials": 3, "pruner": "none"},
    )
    out = root / "out"
    assert main(["-q", "run", str(study_file), "--output", str(out), "--no-report"]) == EXIT_OK
    return study_file, out, data


def _optuna(out: Path) -> optuna.Study:
    return optuna.load_study(study_name="tiny", storage=f"sqlite:///{out / 'optuna.db'}")


def _best(out: Path) -> int:
    return int(json.loads((out / "models" / "best.json").read_text())["trial"])


def _non_best(out: Path) -> optuna.trial.FrozenTrial:
    best = _best(out)
    return next(t for t in _optuna(out).get_trials() if t.state.name == "COMPLETE" and t.number != best)


def _predict(study_file: Path, out: Path, *args: str) -> list[str]:
    return ["predict", str(study_file), "--output", str(out), *args]


def test_predict_with_a_trial_whose_model_was_not_kept(study, tmp_path, capsys) -> None:
    study_file, out, data = study
    other = _non_best(out)
    assert not (out / "models" / f"trial_{other.number}").exists()  # only the best trial's model is kept
    sub = tmp_path / "sub.csv"
    args = _predict(study_file, out, "--trial", str(other.number), "--data", str(data / "validation.csv"))
    assert main([*args, "--out", str(sub)]) == EXIT_OK
    captured = capsys.readouterr()
    seed = other.user_attrs["seed"]
    assert f"trial {other.number}'s model was not kept; retraining its configuration" in captured.err
    assert f"seed {seed}): ~" in captured.err
    assert "as recorded" in captured.err and "differ" not in captured.err  # same params, seed and data: same model

    # the predictions are that trial's: its recorded validation predictions, row for row
    recorded = pd.read_csv(out / "predictions" / f"trial_{other.number}_validation.csv").sort_values("example_id")
    predicted = pd.read_csv(sub)
    validation = pd.read_csv(data / "validation.csv")
    assert predicted["id"].tolist() == validation["id"].tolist()
    assert predicted["label"].tolist() == recorded["prediction"].tolist()

    # the metrics printed match an independent computation on the submission, and the trial's recorded accuracy
    match = SUMMARY.search(captured.out)
    assert match is not None, captured.out
    trial, accuracy, f1, rows = int(match[1]), float(match[2]), float(match[3]), int(match[4])
    assert trial == other.number and rows == len(validation)
    assert accuracy == pytest.approx(accuracy_score(validation["label"], predicted["label"]), abs=5e-5)
    assert f1 == pytest.approx(f1_score(validation["label"], predicted["label"], average="macro"), abs=5e-5)
    assert accuracy == pytest.approx(other.user_attrs["metric.accuracy"], abs=5e-5)

    # the retrained model is kept next to the best one: asking again does not retrain
    assert (out / "models" / f"trial_{other.number}" / "config.json").is_file()
    assert (out / "models" / f"trial_{_best(out)}").is_dir()
    assert main([*args, "--out", str(tmp_path / "again.csv")]) == EXIT_OK
    assert "retraining" not in capsys.readouterr().err
    assert pd.read_csv(tmp_path / "again.csv")["label"].tolist() == predicted["label"].tolist()


def test_the_api_predicts_with_any_trial_and_attaches_metrics(study) -> None:
    from sweeps import api

    study_file, out, data = study
    other = _non_best(out)
    spec = api.load_study_spec(study_file, output=out)
    validation = pd.read_csv(data / "validation.csv")
    preds = api.predict(spec, validation, trial=other.number)
    metrics = preds.attrs["metrics"]
    assert metrics["rows"] == len(validation) and metrics["unlabelled"] == 0
    assert metrics["accuracy"] == pytest.approx(accuracy_score(validation["label"], preds["prediction"]))
    assert metrics["f1_macro"] == pytest.approx(f1_score(validation["label"], preds["prediction"], average="macro"))
    assert metrics["accuracy"] == pytest.approx(other.user_attrs["metric.accuracy"])
    assert "metrics" not in api.predict(spec, validation.drop(columns="label")).attrs  # nothing to score


def test_trials_that_cannot_predict_name_their_state(study, capsys) -> None:
    study_file, out, _ = study
    optuna_study = _optuna(out)
    pruned = optuna_study.ask()
    optuna_study.tell(pruned, state=optuna.trial.TrialState.PRUNED)
    failed = optuna_study.ask()
    failed.set_user_attr("fail_reason", "out of memory: CUDA")
    optuna_study.tell(failed, state=optuna.trial.TrialState.FAIL)
    capsys.readouterr()

    assert main(_predict(study_file, out, "--trial", str(pruned.number))) == EXIT_FAILURE
    err = capsys.readouterr().err
    assert f"trial {pruned.number} was pruned; it has no model to predict with (completed trials: 0, 1, 2)" in err
    assert main(_predict(study_file, out, "--trial", str(failed.number))) == EXIT_FAILURE
    assert f"trial {failed.number} failed: out of memory: CUDA; it has no model" in capsys.readouterr().err
    assert main(_predict(study_file, out, "--trial", "99")) == EXIT_FAILURE
    assert "study 'tiny' has no trial 99 (trials: 0.." in capsys.readouterr().err
    assert not (out / "models" / f"trial_{pruned.number}").exists()


def test_labelled_file_with_gaps_and_unknown_labels(study, tmp_path, capsys) -> None:
    study_file, out, data = study
    validation = pd.read_csv(data / "validation.csv")
    gaps = validation.copy()
    gaps.loc[[0, 5], "label"] = None
    gaps.to_csv(tmp_path / "gaps.csv", index=False)
    sub = tmp_path / "sub.csv"
    assert main([*_predict(study_file, out, "--data", str(tmp_path / "gaps.csv")), "--out", str(sub)]) == EXIT_OK
    printed = capsys.readouterr().out
    assert f"on {len(gaps) - 2} labelled rows (2 without a label not scored)" in printed
    match = SUMMARY.search(printed)
    assert match is not None and int(match[1]) == _best(out)
    labelled = gaps["label"].notna()
    predicted = pd.read_csv(sub)["label"][labelled]
    assert float(match[2]) == pytest.approx(accuracy_score(gaps["label"][labelled], predicted), abs=5e-5)
    assert float(match[3]) == pytest.approx(f1_score(gaps["label"][labelled], predicted, average="macro"), abs=5e-5)

    unknown = validation.copy()
    unknown.loc[[1, 2], "label"] = "maybe"
    unknown.to_csv(tmp_path / "unknown.csv", index=False)
    args = [*_predict(study_file, out, "--data", str(tmp_path / "unknown.csv")), "--out", str(tmp_path / "u.csv")]
    assert main(args) == EXIT_OK  # the predictions do not depend on the labels: still written
    captured = capsys.readouterr()
    assert "column 'label' (task.data.label_column) has labels the model does not know: 'maybe' (2 rows)" in (
        captured.err
    )
    assert "the model's labels are 'neg', 'pos'" in captured.err
    assert SUMMARY.search(captured.out) is None and (tmp_path / "u.csv").is_file()


def test_a_changed_study_file_refuses_to_retrain(study, capsys) -> None:
    """The retrain must be the trial's exact configuration: a changed training setting (its config key) or a changed
    model/data/metric (the study's fingerprint) is refused before anything trains."""
    study_file, out, _ = study
    best = _best(out)
    last = max(t.number for t in _optuna(out).get_trials() if t.state.name == "COMPLETE" and t.number != best)
    assert not (out / "models" / f"trial_{last}").exists()
    capsys.readouterr()
    assert main([*_predict(study_file, out, "--trial", str(last)), "--set", "training.batch_size=8"]) == EXIT_FAILURE
    assert f"trial {last}'s configuration is no longer what the study file describes" in capsys.readouterr().err
    assert main([*_predict(study_file, out, "--trial", str(last)), "--set", "task.max_length=12"]) == EXIT_FAILURE
    assert "was run with another model/data/metric than the study file now describes" in capsys.readouterr().err
    assert not (out / "models" / f"trial_{last}").exists()
    assert not list((out / "models").glob(".retrain_*"))  # no half-trained staging folder left behind


def test_a_retrain_that_does_not_reproduce_the_trial_warns(study, tmp_path, capsys) -> None:
    """The recorded metric is what the retrain is checked against: when it differs (here: edited in the storage, as
    a nondeterministic GPU kernel or a changed data file would make it), the user is told, with both values."""
    import sqlite3

    study_file, out, _ = study
    other = _non_best(out)
    shutil.rmtree(out / "models" / f"trial_{other.number}", ignore_errors=True)
    db = sqlite3.connect(out / "optuna.db")
    query = ("UPDATE trial_user_attributes SET value_json = ? WHERE key = 'metric.accuracy' AND trial_id = "
             "(SELECT trial_id FROM trials WHERE number = ?)")
    try:
        db.execute(query, ("0.123", other.number))
        db.commit()
        capsys.readouterr()
        args = [*_predict(study_file, out, "--trial", str(other.number)), "--out", str(tmp_path / "s.csv")]
        assert main(args) == EXIT_OK
        err = capsys.readouterr().err
    finally:
        db.execute(query, (json.dumps(other.user_attrs["metric.accuracy"]), other.number))
        db.commit()
        db.close()
    assert f"warning: trial {other.number} retrained, but its validation metrics differ from the recorded ones: " in err
    assert f"accuracy {other.user_attrs['metric.accuracy']:.6g} (recorded 0.123)" in err
    assert "as recorded" not in err
