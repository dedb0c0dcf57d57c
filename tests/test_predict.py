"""Predictions from a study's best trial: ``sweeps.predict`` (load_best, predict_proba, submission.csv) and the
notebook API ``sweeps.api``.

Everything runs on a tiny BERT made here (2 layers, hidden 32, a word-level vocab covering the data): no hub, no
downloads. The end-to-end test runs a real 2-trial, 2-fold study through the CLI, then ``predict``.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest

from sweeps.errors import DataError, SweepsError

LABELS = {
    "sports": "match goal team player coach score league stadium referee season",
    "tech": "software chip laptop code server network app robot cloud data",
    "food": "pizza pasta bread cheese soup salad recipe chef spice dinner",
}
FILLER = "the a is was very today new big small good"


def _sentence(rng: random.Random, label: str) -> str:
    words = rng.sample(LABELS[label].split(), 4) + rng.sample(FILLER.split(), 2)
    rng.shuffle(words)
    return " ".join(words)


def _vocab() -> list[str]:
    words = sorted({w for text in [*LABELS.values(), FILLER] for w in text.split()})
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]


def make_tiny_model(folder: Path, labels: list[str] | None = None, seed: int = 0) -> Path:
    """A BertForSequenceClassification-compatible checkpoint (+ fast tokenizer) saved into ``folder``."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = _vocab()
    vocab_file = folder.parent / f"{folder.name}-vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab_file=str(vocab_file), do_lower_case=True)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    if labels is not None:
        config.num_labels = len(labels)
        config.id2label = dict(enumerate(labels))
        config.label2id = {v: k for k, v in config.id2label.items()}
    torch.manual_seed(seed)
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def make_dataset(folder: Path, n_train: int = 60, n_test: int = 15) -> tuple[Path, Path]:
    """train.csv (text, string label; 3 balanced classes) and test.csv (id, text) with string ids."""
    rng = random.Random(0)
    names = sorted(LABELS)
    train = pd.DataFrame([{"text": _sentence(rng, names[i % 3]), "label": names[i % 3]} for i in range(n_train)])
    test = pd.DataFrame([{"id": f"q{i:03d}", "text": _sentence(rng, names[i % 3])} for i in range(n_test)])
    folder.mkdir(parents=True, exist_ok=True)
    train.to_csv(folder / "train.csv", index=False)
    test.to_csv(folder / "test.csv", index=False)
    return folder / "train.csv", folder / "test.csv"


STUDY_YAML = """\
name: predict-e2e
task:
  model: model
  max_length: 32
  metric: accuracy
  data:
    train: data/train.csv
    test: data/test.csv
    text_column: text
    label_column: label
    id_column: id
  cv: {folds: 2}
training:
  epochs: 1
  batch_size: 16
  eval_batch_size: 32
  learning_rate: 1.0e-3
  device: cpu
strategies:
  - none
  - name: bottom_n
    params: {n: 1}
optuna:
  n_trials: 2
  pruner: none
tracking: {enabled: true}
"""


def write_study(folder: Path) -> Path:
    make_tiny_model(folder / "model")
    make_dataset(folder / "data")
    path = folder / "study.yaml"
    path.write_text(STUDY_YAML, encoding="utf-8")
    return path


def fake_study_folder(out: Path, labels: list[str], folds: int = 0, trial: int = 3) -> Path:
    """A study folder as ``StudyRunner._keep_if_best`` leaves it, with untrained tiny models (no training)."""
    folder = out / "models" / f"trial_{trial}"
    if folds:
        for k in range(folds):
            make_tiny_model(folder / f"fold_{k}", labels, seed=k)
    else:
        make_tiny_model(folder, labels)
    (out / "models" / "best.json").write_text(json.dumps({"trial": trial, "path": folder.name, "mlflow_run_id": None}))
    return out


# --------------------------------------------------------------------------------------------------------------------
# Fast checks on a hand-made study folder
# --------------------------------------------------------------------------------------------------------------------


def test_load_best_without_completed_trial(tmp_path):
    from sweeps.predict import load_best

    with pytest.raises(SweepsError, match="does not exist"):
        load_best(tmp_path / "nowhere")
    with pytest.raises(SweepsError, match="no completed trial"):
        load_best(tmp_path)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "best.json").write_text(json.dumps({"trial": 2, "path": "trial_2"}))
    with pytest.raises(SweepsError, match=r"best trial \(2\) has no saved model"):
        load_best(tmp_path)


def test_fold_models_are_averaged(tmp_path):
    from sweeps.predict import load_best, predict_proba

    labels = ["neg", "neu", "pos"]
    best = load_best(fake_study_folder(tmp_path / "cv", labels, folds=2))
    assert best.label_names == labels and len(best.models) == 2 and best.trial == 3
    texts = ["the match was good", "pizza and cheese", "a new laptop chip", "today"]
    probs = predict_proba(best, texts, batch_size=3)
    assert probs.shape == (4, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    singles = [predict_proba(dataclasses.replace(best, models=[model]), texts) for model in best.models]
    assert not np.allclose(singles[0], singles[1])  # two different fold models
    np.testing.assert_allclose(probs, np.mean(singles, axis=0), atol=1e-5)
    # batching and the length-sorted order do not change the per-row result
    np.testing.assert_allclose(predict_proba(best, texts[::-1], batch_size=1), probs[::-1], atol=1e-5)
    assert predict_proba(best, []).shape == (0, 3)


def _spec(folder: Path, **data):
    from sweeps.config import parse_spec

    make_tiny_model(folder / "model")
    fields = {"train": "train.csv", "text_column": "text", "label_column": "label", **data}
    return parse_spec(
        {"name": "p", "task": {"model": "model", "data": fields}, "strategies": ["none"]},
        folder,
        output=str(folder / "out"),
    )


def test_submission_row_numbers_and_missing_text_column(tmp_path):
    from sweeps.predict import predict_submission

    spec = _spec(tmp_path, label_column="sentiment")
    fake_study_folder(tmp_path / "out", ["negative", "positive"])
    test = tmp_path / "test.tsv"
    test.write_text("text\nthe match was good\npizza\nsoftware and data\n", encoding="utf-8")
    path = predict_submission(spec, tmp_path / "out", test=test).path
    frame = pd.read_csv(path, keep_default_na=False)
    assert path == tmp_path / "out" / "submission.csv"
    assert list(frame.columns) == ["id", "sentiment"]
    assert frame["id"].tolist() == [0, 1, 2]
    assert set(frame["sentiment"]) <= {"negative", "positive"}

    bad = tmp_path / "bad.csv"
    bad.write_text("id,review\n1,good\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"no column 'text'.*columns found: 'id', 'review'"):
        predict_submission(spec, tmp_path / "out", test=bad)
    with pytest.raises(DataError, match="no test file"):
        predict_submission(spec, tmp_path / "out")


def test_submission_proba_with_configured_id_column(tmp_path):
    from sweeps.predict import predict_submission

    spec = _spec(tmp_path, test="test.jsonl", id_column="PassengerId")
    fake_study_folder(tmp_path / "out", ["0", "1"])
    rows = [{"PassengerId": 892 + i, "text": t} for i, t in enumerate(["good match", "bad soup", "new app"])]
    (tmp_path / "test.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    path = predict_submission(spec, tmp_path / "out", out_path=tmp_path / "sub" / "p.csv", proba=True).path
    frame = pd.read_csv(path)
    assert list(frame.columns) == ["PassengerId", "0", "1"]
    assert frame["PassengerId"].tolist() == [892, 893, 894]
    np.testing.assert_allclose(frame[["0", "1"]].sum(axis=1), 1.0, atol=1e-5)


def test_api_predict_on_texts_and_frames(tmp_path):
    from sweeps import api

    out = fake_study_folder(tmp_path / "out", ["a", "b", "c"])
    best = api.load_best(out)
    one = api.predict(best, "the match was good")
    assert list(one.columns) == ["prediction", "prob_a", "prob_b", "prob_c"] and len(one) == 1
    frame = pd.DataFrame({"review": ["pizza and cheese", "a new laptop"]}, index=[10, 20])
    preds = api.predict(out, frame, text_column="review")
    assert list(preds.index) == [10, 20]
    assert set(preds["prediction"]) <= {"a", "b", "c"}
    with pytest.raises(DataError, match=r"no text column 'text'.*'review'"):
        api.predict(best, frame)


def test_label_texts_compare_like_training_names_classes():
    from sweeps.data import label_texts

    assert label_texts([1, 1.0, " 2 ", "+3", "pos ", None, float("nan"), "", True, 0.5]) == [
        "1", "1", "2", "3", "pos", None, None, None, "True", "0.5"
    ]
    assert label_texts([0, 1], ["neg", "pos"]) == ["neg", "pos"]  # ClassLabel ids become their names


def test_score_labels_skips_unlabelled_rows_and_names_unknown_labels():
    from sklearn.metrics import accuracy_score, f1_score

    from sweeps.predict import score_labels

    names = ["a", "b", "c"]
    probs = np.eye(3)[[0, 1, 2, 0, 1, 2]]  # predictions a b c a b c
    labels = ["a", "b", "b", None, "c", None]
    scores = score_labels(names, probs, labels, column="y", where="f.csv")
    assert scores is not None and scores.rows == 4 and scores.unlabelled == 2
    truth, preds = ["a", "b", "b", "c"], ["a", "b", "c", "b"]
    assert scores.metrics["accuracy"] == pytest.approx(accuracy_score(truth, preds))
    assert scores.metrics["f1_macro"] == pytest.approx(f1_score(truth, preds, average="macro", labels=names))
    assert scores.summary().endswith("on 4 labelled rows (2 without a label not scored)")
    assert score_labels(names, probs, [None] * 6, column="y", where="f.csv") is None
    with pytest.raises(DataError, match=r"f.csv: column 'y' \(task.data.label_column\) has labels the model does not "
                                        r"know: 'z' \(2 rows\), 'A' \(1 row\); the model's labels are 'a', 'b', 'c'"):
        score_labels(names, probs, ["z", "a", "z", "A", None, "b"], column="y", where="f.csv")


def test_labelled_submission_is_scored(tmp_path, caplog):
    from sklearn.metrics import accuracy_score

    from sweeps.predict import predict_submission

    spec = _spec(tmp_path, label_column="topic")
    fake_study_folder(tmp_path / "out", ["food", "sports", "tech"])
    test = tmp_path / "labelled.csv"
    frame = pd.DataFrame({"id": [1, 2, 3, 4], "text": ["pizza soup", "match goal", "chip code", "the team"],
                          "topic": ["food", "sports", None, "sports"]})
    frame.to_csv(test, index=False)
    result = predict_submission(spec, tmp_path / "out", test=test)
    written = pd.read_csv(result.path)
    assert list(written.columns) == ["id", "topic"] and result.trial == 3 and result.rows == 4
    assert result.scores is not None and (result.scores.rows, result.scores.unlabelled) == (3, 1)
    labelled = frame["topic"].notna()
    expected = accuracy_score(frame["topic"][labelled], written["topic"][labelled])
    assert result.scores.metrics["accuracy"] == pytest.approx(expected)

    frame.loc[0, "topic"] = "cooking"
    frame.to_csv(test, index=False)
    with caplog.at_level("WARNING"):
        result = predict_submission(spec, tmp_path / "out", test=test)
    assert result.scores is None and result.path.is_file()
    assert "column 'topic' (task.data.label_column) has labels the model does not know: 'cooking' (1 row)" in (
        caplog.text
    )
    frame.drop(columns="topic").to_csv(test, index=False)
    assert predict_submission(spec, tmp_path / "out", test=test).scores is None  # a Kaggle test file: no labels


def test_which_trial_predicts(tmp_path):
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    from sweeps.study.retrain import trial_for_prediction

    study = optuna.create_study(study_name="s")
    dist = {"lr": FloatDistribution(1e-5, 1e-3)}
    study.add_trial(create_trial(params={"lr": 1e-4}, distributions=dist, value=0.8))
    study.add_trial(create_trial(params={"lr": 1e-4}, distributions=dist, value=0.8, user_attrs={"duplicate_of": 0}))
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"surplus": True}))
    study.add_trial(create_trial(state=TrialState.WAITING))
    assert trial_for_prediction(study, 0).number == 0
    assert trial_for_prediction(study, 1).number == 0  # a duplicate was never trained: the trial it repeated was
    waiting = r"trial 3 is waiting \(not started\); it has no model .*completed trials: 0, 1"
    with pytest.raises(SweepsError, match=waiting):
        trial_for_prediction(study, 3)
    with pytest.raises(SweepsError, match=r"has no trial 2 \(trials: 0..3"):  # a surplus ask is not a trial
        trial_for_prediction(study, 2)


# --------------------------------------------------------------------------------------------------------------------
# End to end: CLI run (2 trials × 2 folds) → predict → submission.csv; the Python API on the same study
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_kaggle_flow_end_to_end(tmp_path, capsys):
    from sweeps import api
    from sweeps.cli import main
    from sweeps.predict import load_best

    start = time.monotonic()
    study = write_study(tmp_path)  # relative paths in the study file: they resolve against its folder, not the cwd
    out = tmp_path / "out"
    assert main(["-q", "run", str(study), "--output", str(out), "--no-report"]) == 0

    # the best trial's fold models are kept and reload
    pointer = json.loads((out / "models" / "best.json").read_text())
    best = load_best(out)
    assert best.trial == pointer["trial"]
    assert len(best.models) == 2 and [f.name for f in best.folders] == ["fold_0", "fold_1"]
    assert best.label_names == ["food", "sports", "tech"]

    # out-of-fold predictions: one row per training example, for each completed trial
    train = pd.read_csv(tmp_path / "data" / "train.csv")
    test = pd.read_csv(tmp_path / "data" / "test.csv")
    oof_files = sorted((out / "predictions").glob("trial_*_oof.csv"))
    assert len(oof_files) == 2
    for f in oof_files:
        oof = pd.read_csv(f)
        assert len(oof) == len(train)
        assert sorted(oof["example_id"]) == list(range(len(train)))
        assert oof.sort_values("example_id")["label"].tolist() == train["label"].tolist()  # example_id = row

    # submission.csv with labels
    assert main(["predict", str(study), "--output", str(out)]) == 0
    sub_path = out / "submission.csv"
    assert f"wrote {sub_path}" in capsys.readouterr().out
    assert sub_path.read_text().splitlines()[0] == "id,label"
    sub = pd.read_csv(sub_path)
    assert len(sub) == len(test)
    assert sub["id"].tolist() == test["id"].tolist()
    assert set(sub["label"]) <= set(train["label"])

    # --proba: one column per class, rows sum to 1
    proba_path = tmp_path / "proba.csv"
    assert main(["predict", str(study), "--output", str(out), "--proba", "--out", str(proba_path)]) == 0
    proba = pd.read_csv(proba_path)
    assert list(proba.columns) == ["id", "food", "sports", "tech"]
    assert proba["id"].tolist() == test["id"].tolist()
    np.testing.assert_allclose(proba[["food", "sports", "tech"]].sum(axis=1), 1.0, atol=1e-5)
    assert (
        proba[["food", "sports", "tech"]].to_numpy().argmax(1)
        == sub["label"].map({"food": 0, "sports": 1, "tech": 2}).to_numpy()
    ).all()

    # --test overrides task.data.test
    other = tmp_path / "other.csv"
    test.head(4).to_csv(other, index=False)
    args = ["predict", str(study), "--output", str(out), "--test", str(other), "--out", str(tmp_path / "o.csv")]
    assert main(args) == 0
    assert pd.read_csv(tmp_path / "o.csv")["id"].tolist() == test["id"].head(4).tolist()

    # --trial for the other trial: its fold models were not kept, so its configuration is trained again (2 folds)
    other = 1 - pointer["trial"]
    assert not (out / "models" / f"trial_{other}").exists()
    args = ["predict", str(study), "--output", str(out), "--trial", str(other), "--out", str(tmp_path / "t.csv")]
    assert main(args) == 0
    assert sorted(p.name for p in (out / "models" / f"trial_{other}").iterdir()) == ["fold_0", "fold_1"]
    err = capsys.readouterr().err
    assert f"trial {other} retrained in" in err and "as recorded" in err  # the mean over folds is reproduced
    assert pd.read_csv(tmp_path / "t.csv")["id"].tolist() == test["id"].tolist()

    # the Python API: resuming the finished study runs nothing more and returns its 2 trials
    table = api.run_study(study, output=out)
    assert isinstance(table, pd.DataFrame) and len(table) == 2
    spec = api.load_study_spec(study, output=out)
    preds = api.predict(spec, test.set_index("id"))
    assert list(preds.index) == test["id"].tolist()
    assert preds["prediction"].tolist() == sub["label"].tolist()

    assert time.monotonic() - start < 90


def test_retrain_needs_the_study_storage(tmp_path):
    from sweeps.study.retrain import ensure_trial_model

    spec = _spec(tmp_path)
    (tmp_path / "out").mkdir()
    with pytest.raises(SweepsError, match=r"no study storage at .*optuna.db: run the study first"):
        ensure_trial_model(spec, tmp_path / "out", 2)
    assert not (tmp_path / "out" / "optuna.db").exists()  # asking did not create an empty study
