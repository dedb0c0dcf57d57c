"""Evaluation batched longest first (less padding, every epoch of every trial), results returned in split order."""

from __future__ import annotations

import numpy as np
import pytest
import tiny_models as tm
import torch
from datasets import Dataset
from torch.utils.data import DataLoader

from strategies import FreezeController, build_strategy, discover_layers, make_optimizer_factory
from sweeps.train.loop import LoopConfig, TrainingLoop
from sweeps.train.trial import eval_order


def _split(n: int = 37, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 30, size=n)
    return Dataset.from_dict({
        "input_ids": [rng.integers(3, tm.VOCAB, size=int(k)).tolist() for k in lengths],
        "labels": rng.integers(0, 3, size=n).tolist(),
        "length": lengths.tolist(),
    })


def _pad(rows: list[dict]) -> dict[str, torch.Tensor]:
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r["input_ids"])] = torch.tensor(r["input_ids"])
        mask[i, : len(r["input_ids"])] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([r["labels"] for r in rows])}


def _evaluate(ds: Dataset, order: np.ndarray | None) -> tuple[dict[str, float], np.ndarray, np.ndarray, int]:
    model = tm.bert(num_layers=2)
    layer_map = discover_layers(model)
    controller = FreezeController(model, layer_map, make_optimizer_factory("adamw"), 1e-3)
    rows = ds.select_columns(["input_ids", "labels"])
    loader = DataLoader(rows, batch_size=8, collate_fn=_pad, sampler=None if order is None else order.tolist())
    padded = sum(b["input_ids"].numel() for b in loader)
    loop = TrainingLoop(model, layer_map, build_strategy("none", {}), controller, [], loader,
                        LoopConfig(epochs=1, batch_size=8), torch.device("cpu"), eval_order=order)
    metrics, probs, labels, _ = loop.evaluate()
    return metrics, probs, labels, padded


def test_eval_order_is_longest_first_and_stable() -> None:
    ds = Dataset.from_dict({"length": [3, 9, 3, 12, 9], "input_ids": [[1]] * 5})
    assert eval_order(ds).tolist() == [3, 1, 4, 0, 2]
    assert eval_order(Dataset.from_dict({"pixel_values": [[0.0]] * 3})) is None  # images: split order


def test_longest_first_evaluation_gives_split_order_results_with_less_padding() -> None:
    ds = _split()
    in_order = _evaluate(ds, None)
    by_length = _evaluate(ds, eval_order(ds))
    np.testing.assert_array_equal(by_length[2], np.asarray(ds["labels"]))  # labels back in split order
    np.testing.assert_allclose(by_length[1], in_order[1], rtol=0, atol=1e-6)  # each row's own probabilities
    assert by_length[0]["accuracy"] == in_order[0]["accuracy"]
    assert by_length[0]["eval_loss"] == pytest.approx(in_order[0]["eval_loss"], abs=1e-6)
    assert by_length[3] < 0.8 * in_order[3], (by_length[3], in_order[3])  # padded tokens computed
