"""The unused-parameter probe runs once per process for each distinct model build and batch (``UnusedProbes``), and
every trial still gets the right answer: the same names as probing afresh, a new probe for another head or other
rows, and a study whose trials all exclude the pooler their mean-pooling head never uses."""

from __future__ import annotations

import gc
import json
import uuid
from pathlib import Path

import pytest
import torch
from e2e_helpers import make_dataset, make_tiny_model, write_study
from mlflow.tracking import MlflowClient
from torch import nn

import sweeps.train.unused as unused_module
from sweeps.cli import main
from sweeps.records import Artifact, Tag
from sweeps.train.unused import UnusedProbes, probe_unused


class Branchy(nn.Module):
    """A classifier whose ``extra`` layer is in the graph only when ``use_extra``: a build-dependent dead end."""

    def __init__(self, use_extra: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(10, 4)
        self.extra = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2)
        self.use_extra = use_extra

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.embed(input_ids).mean(1)
        return self.out(self.extra(h) if self.use_extra else h)


def _batch(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 10, (3, 5), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([0, 1, 0])}


def test_the_same_build_and_batch_is_probed_once_with_the_fresh_answer() -> None:
    probes, cpu = UnusedProbes(), torch.device("cpu")
    build = {"head": None, "seed": 1, "checkpointing": False}
    first = probes(Branchy(False), _batch(0), cpu, build)
    again = probes(Branchy(False), _batch(0), cpu, dict(build))
    assert first == again == probe_unused(Branchy(False), _batch(0), cpu) == {"extra.weight", "extra.bias"}
    assert probes.probes == 1
    again.add("out.weight")  # a caller's set is its own: the remembered answer is not changed through it
    assert probes(Branchy(False), _batch(0), cpu, build) == {"extra.weight", "extra.bias"}


def test_another_build_or_other_rows_are_probed_afresh() -> None:
    probes, cpu = UnusedProbes(), torch.device("cpu")
    assert probes(Branchy(False), _batch(0), cpu, {"head": "mean"}) == {"extra.weight", "extra.bias"}
    # another head: the model differs, so does the answer (a key without the build would return the one above)
    assert probes(Branchy(True), _batch(0), cpu, {"head": "extra"}) == set()
    assert probes.probes == 2
    probes(Branchy(False), _batch(1), cpu, {"head": "mean"})  # a CV fold's other validation rows
    assert probes.probes == 3


@pytest.mark.slow
def test_every_trial_of_a_study_excludes_the_unused_pooler_from_one_probe(tmp_path: Path, monkeypatch) -> None:
    calls: list[int] = []
    real = unused_module.probe_unused

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(unused_module, "probe_unused", counting)
    model = make_tiny_model(tmp_path / "model")
    data = make_dataset(tmp_path / "data", n_train=32, n_validation=16)
    study = write_study(
        tmp_path / "study.yaml", model, data,
        task={"head": {"pooling": "mean"}},  # mean pooling: the checkpoint's pooler never receives a gradient
        training={"epochs": 1, "batch_size": 16, "seed": 3},
        strategies=[{"name": "none"}, {"name": "bottom_n", "params": {"n": 1}}],
        optuna={"n_trials": 3, "pruner": "none"},
    )
    out = tmp_path / "out"
    assert main(["run", str(study), "--output", str(out)]) == 0
    assert len(calls) == 1  # three trials, one model build: one probe
    assert gc.get_freeze_count() == 0  # the study froze the heap it started with (sweeps.train.heap), and let it go

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny").experiment_id
    runs = [r for r in client.search_runs([experiment]) if r.data.tags.get(Tag.ROLE) == "trial"]
    assert len(runs) == 3
    for run in runs:
        local = client.download_artifacts(run.info.run_id, Artifact.LAYER_GROUPS_JSON, str(out / uuid.uuid4().hex))
        rows = {r["name"]: r for r in json.loads(Path(local).read_text())}
        assert rows["head"]["unused"] == ["bert.pooler.dense.weight", "bert.pooler.dense.bias"]
        assert rows["head"]["unused_params"] == 32 * 32 + 32
