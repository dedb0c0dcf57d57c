"""``task.head`` fields searched like ``training`` fields: the study-file syntax and its errors, the Optuna names
(``head.<field>``; ``hidden``'s list choices as JSON text), and a study through the CLI whose trials train different
heads, log them to MLflow, and whose best model ``predict`` rebuilds with the head it trained."""

from __future__ import annotations

import itertools
import json
import uuid
from pathlib import Path

import optuna
import pandas as pd
import pytest
from e2e_helpers import make_dataset, make_tiny_model, write_study
from mlflow.tracking import MlflowClient
from torch import nn

from sweeps.cli import main
from sweeps.config import parse_spec
from sweeps.config.search_space import grid_search_space
from sweeps.errors import SpecError
from sweeps.records import Artifact, SavedModel, Tag, best_model_pointer
from sweeps.study.suggest import suggest

SEARCHED_HEAD = {
    "pooling": {"type": "categorical", "choices": ["cls", "mean"]},
    "hidden": {"type": "categorical", "choices": [[], [8], [16, 8]]},
    "dropout": {"type": "float", "low": 0, "high": 0.3},
}


def _spec(head: object, **optuna_section: object) -> dict:
    return {
        "name": "s",
        "task": {"model": "x", "head": head, "data": {"train": "t.csv"}},
        "training": {"learning_rate": 1e-3},  # fixed: the trials' params are the head's alone
        "strategies": [{"name": "none"}],
        "optuna": optuna_section,
    }


def _error(head: object) -> SpecError:
    with pytest.raises(SpecError) as caught:
        parse_spec(_spec(head), ".")
    return caught.value


# -- the study file ----------------------------------------------------------------------------------------------------


def test_searched_head_fields_parse_and_round_trip() -> None:
    spec = parse_spec(_spec({**SEARCHED_HEAD, "activation": "relu"}), ".")
    head = spec.task.head
    assert set(head.searched()) == {"pooling", "hidden", "dropout"}
    assert head.fixed() == {"activation": "relu"}
    # before trial 0 (inspect, checks against the model): first choices, low ends
    assert head.representative() == {"pooling": "cls", "hidden": [], "activation": "relu", "dropout": 0.0}
    assert parse_spec(spec.to_dict(), ".").task.head == head


def test_the_fingerprint_covers_the_fixed_head_fields_only() -> None:
    """Changing a searched range is a search-space change (the study stays resumable); a fixed field is the model."""
    base = parse_spec(_spec({**SEARCHED_HEAD, "activation": "relu"}), ".").fingerprint()
    wider = {**SEARCHED_HEAD, "activation": "relu", "dropout": {"type": "float", "low": 0, "high": 0.5}}
    assert parse_spec(_spec(wider), ".").fingerprint() == base
    assert parse_spec(_spec({**SEARCHED_HEAD, "activation": "gelu"}), ".").fingerprint() != base
    # a head without search entries is fingerprinted as before searchable fields existed: such studies stay resumable
    fixed = parse_spec(_spec({"pooling": "mean", "hidden": [8]}), ".").task.head
    assert fixed.fixed() == fixed.model_dump(mode="json") == fixed.representative()


@pytest.mark.parametrize(
    ("head", "path", "words"),
    [
        ({"pooling": {"choices": ["cls", "avg"]}}, "task.head.pooling.choices[1]", "must be one of cls, mean, max"),
        ({"pooling": {"type": "float", "low": 0, "high": 1}}, "task.head.pooling", "numeric range cannot search"),
        ({"activation": {"choices": ["relu", "silu"]}}, "task.head.activation.choices[1]", "must be one of tanh"),
        ({"dropout": {"type": "float", "low": 0, "high": 1.0}}, "task.head.dropout.high", "must be < 1"),
        ({"dropout": {"type": "float", "low": -0.1, "high": 0.2}}, "task.head.dropout.low", "must be >= 0"),
        ({"dropout": 1.5}, "task.head.dropout", "must be < 1"),
        ({"hidden": {"type": "int", "low": 8, "high": 64}}, "task.head.hidden", "numeric range cannot search hidden"),
        ({"hidden": {"choices": [128, 256]}}, "task.head.hidden", "choices[0] must be a list of layer sizes"),
        ({"hidden": {"choices": [[128], [128]]}}, "task.head.hidden.choices", "listed twice"),
        ({"hidden": {"choices": [[8, 0]]}}, "task.head.hidden.choices[0][1]", "must be >= 1"),
        ({"hidden": {"choices": [[8]], "lo": 1}}, "task.head.hidden.lo", "unknown key 'lo'"),
        ({"hidden": {"type": "grid", "choices": [[8]]}}, "task.head.hidden", "unknown search type 'grid'"),
    ],
)
def test_head_search_errors_name_the_field(head: dict, path: str, words: str) -> None:
    err = _error(head)
    assert err.path == path and words in err.detail, str(err)


# -- Optuna names ------------------------------------------------------------------------------------------------------


def test_a_trial_samples_the_head_under_head_names() -> None:
    spec = parse_spec(_spec(SEARCHED_HEAD), ".")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    keys, hiddens = set(), set()
    for _ in range(12):
        trial = study.ask()
        params = suggest(trial, spec)
        assert set(trial.params) == {"head.pooling", "head.hidden", "head.dropout"} == set(params.searched)
        assert trial.params["head.hidden"] in ("[]", "[8]", "[16, 8]")  # readable in Optuna, MLflow and the report
        assert params.head == {
            "pooling": trial.params["head.pooling"],
            "hidden": json.loads(trial.params["head.hidden"]),
            "activation": "tanh",
            "dropout": trial.params["head.dropout"],
        }
        keys.add(params.config_key())
        hiddens.add(json.dumps(params.head["hidden"]))
        study.tell(trial, 0.5)
    assert len(keys) == 12 and hiddens == {"[]", "[8]", "[16, 8]"}  # the head is part of what a trial trains

    # an enqueued trial (confirmation, a user's enqueue_trial) names the head the same way
    study.enqueue_trial({"head.pooling": "mean", "head.hidden": "[16, 8]", "head.dropout": 0.25})
    assert suggest(study.ask(), spec).head == {"pooling": "mean", "hidden": [16, 8], "activation": "tanh",
                                               "dropout": 0.25}


def test_the_grid_enumerates_the_head() -> None:
    head = {"pooling": {"choices": ["cls", "mean"]}, "hidden": {"choices": [[], [8]]},
            "dropout": {"type": "float", "low": 0, "high": 0.2, "step": 0.1}}
    spec = parse_spec(_spec(head, sampler="grid"), ".")
    assert grid_search_space(spec) == {"head.pooling": ["cls", "mean"], "head.hidden": ["[]", "[8]"],
                                       "head.dropout": [0.0, 0.1, 0.2]}
    with pytest.raises(SpecError, match=r"task\.head\.dropout: the grid sampler needs a step"):
        parse_spec(_spec(SEARCHED_HEAD, sampler="grid"), ".")


# -- a study through the CLI -------------------------------------------------------------------------------------------

POOLER_SIZE = 32 * 32 + 32  # the tiny BERT's pooler (hidden 32): unused by every PooledClassifier head


def _head_size(hidden: list[int], width: int = 32, labels: int = 2) -> int:
    size = 0
    for h in [*hidden, labels]:
        size += width * h + h
        width = h
    return size


def _linear_shapes(model: nn.Module) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in model.head if isinstance(m, nn.Linear)]


@pytest.mark.slow
def test_a_searched_head_study_trains_different_heads_and_predict_rebuilds_the_best(tmp_path: Path, capsys) -> None:
    from sweeps.predict import load_best

    model = make_tiny_model(tmp_path / "model")
    data = make_dataset(tmp_path / "data", n_train=48, n_validation=24)
    # the grid: 3 trials out of pooling x hidden (2 x 3) are distinct, so at least two ``hidden`` values are trained
    head = {**SEARCHED_HEAD, "dropout": 0.1}
    study = write_study(
        tmp_path / "study.yaml", model, data,
        task={"head": head},
        training={"epochs": 1, "batch_size": 16, "learning_rate": 5e-3, "seed": 7},
        strategies=[{"name": "none"}],
        optuna={"n_trials": 3, "pruner": "none", "sampler": "grid"},
    )
    out = tmp_path / "out"
    # before any trial, inspect shows one representative head: the first choices (cls, no hidden layer)
    assert main(["inspect", str(study), "--format", "json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["head"]["num_params"] == POOLER_SIZE + _head_size([])
    assert main(["run", str(study), "--output", str(out)]) == 0

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny").experiment_id
    # a proposal identical to a trained trial is recorded as a duplicate, not trained: the trained ones are distinct
    runs = [r for r in client.search_runs([experiment])
            if r.data.tags.get(Tag.ROLE) == "trial" and r.data.tags.get(Tag.STATUS) != "duplicate"]
    storage = optuna.storages.RDBStorage(f"sqlite:///{out / 'optuna.db'}")
    trials = {t.number: t for t in optuna.load_study(study_name="tiny", storage=storage).trials}
    assert len(runs) == 3 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials.values())

    structures = set()
    for run in runs:
        trial = trials[int(run.data.tags[Tag.TRIAL_NUMBER])]
        assert set(trial.params) == {"head.pooling", "head.hidden"}
        for field in ("pooling", "hidden"):  # the sampled head is each run's params, as Optuna has it
            assert run.data.params[f"head.{field}"] == trial.params[f"head.{field}"]
        assert run.data.params["head.activation"] == "tanh" and run.data.params["head.dropout"] == "0.1"
        hidden = json.loads(trial.params["head.hidden"])
        local = client.download_artifacts(run.info.run_id, Artifact.LAYER_GROUPS_JSON, str(out / uuid.uuid4().hex))
        rows = {r["name"]: r for r in json.loads(Path(local).read_text())}
        # the model each trial trained has the sampled head: its parameter count follows ``hidden``
        assert rows["head"]["num_params"] == POOLER_SIZE + _head_size(hidden)
        structures.add((trial.params["head.pooling"], trial.params["head.hidden"]))
    assert len(structures) == 3 and len({hidden for _, hidden in structures}) >= 2  # the heads really differ

    best = json.loads(best_model_pointer(out).read_text())["trial"]
    sampled = trials[best].params
    loaded = load_best(out)
    manifest = json.loads((loaded.path / SavedModel.MANIFEST).read_text())
    (rebuilt,) = loaded.models
    head = json.loads(sampled["head.hidden"])
    assert rebuilt.head_spec == {"pooling": sampled["head.pooling"], "hidden": head, "activation": "tanh",
                                 "dropout": 0.1}
    assert rebuilt.pooling == sampled["head.pooling"]
    widths = [32, *head, 2]
    assert _linear_shapes(rebuilt) == list(itertools.pairwise(widths))
    assert manifest["head"] == rebuilt.head_spec  # saved with the weights: what predict rebuilds from

    assert main(["report", str(study), "--output", str(out), "--format", "csv"]) == 0
    assert main(["predict", str(study), "--output", str(out)]) == 0
    submission = pd.read_csv(out / "submission.csv")
    assert len(submission) == 20 and set(submission["label"]) <= {"pos", "neg"}

    # another trial's head is rebuilt too: predict --trial retrains it with its own sampled head, reproducing its metric
    other = next(n for n in trials if n != best and trials[n].user_attrs.get("duplicate_of") is None)
    capsys.readouterr()
    assert main(["predict", str(study), "--output", str(out), "--trial", str(other)]) == 0
    assert "as recorded" in capsys.readouterr().err
    (retrained,) = load_best(out, trial=other).models
    assert retrained.head_spec["hidden"] == json.loads(trials[other].params["head.hidden"])
    assert retrained.pooling == trials[other].params["head.pooling"]
