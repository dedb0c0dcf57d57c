"""Losses read on the host in blocks (the CUDA path, run here on CPU by setting the block size): the same training as
reading every step, and a divergence still named at the batch where it happened."""

from __future__ import annotations

import pytest
import tiny_models as tm
import torch

from strategies import FreezeController, build_strategy, discover_layers, make_optimizer_factory
from sweeps.train import TrialDiverged
from sweeps.train.loop import CUDA_LOSS_SYNC_STEPS, LoopConfig, TrainingLoop


def _loop(batches: list[dict[str, torch.Tensor]], sync_steps: int, lr: float = 1e-3) -> TrainingLoop:
    torch.manual_seed(0)
    model = tm.bert(num_layers=2)
    layer_map = discover_layers(model)
    controller = FreezeController(model, layer_map, make_optimizer_factory("adamw"), lr)
    config = LoopConfig(epochs=2, batch_size=4, scheduler="constant", max_grad_norm=None)
    loop = TrainingLoop(model, layer_map, build_strategy("none", {}), controller, batches,
                        [tm.token_batch(4, 8, seed=100)], config, torch.device("cpu"))
    assert loop.loss_sync_steps == 1, "on CPU every loss is read at its own batch"
    loop.loss_sync_steps = sync_steps
    return loop


def test_block_reads_train_exactly_like_per_step_reads() -> None:
    batches = [tm.token_batch(4, 8, seed=i) for i in range(7)]  # 7: the last block is a partial one
    per_step = _loop(batches, 1).run()
    blocked = _loop(batches, 3).run()
    for a, b in zip(per_step.epochs, blocked.epochs, strict=True):
        assert a.metrics["train_loss"] == b.metrics["train_loss"]
        assert a.metrics["eval_loss"] == b.metrics["eval_loss"]


def test_a_non_finite_loss_is_named_at_its_own_batch_when_read_in_blocks() -> None:
    batches = [tm.token_batch(4, 8, seed=i) for i in range(6)]
    loop = _loop(batches, 4)
    forward = loop.runner.logits
    calls = []

    def poisoned(model, batch, split):
        logits = forward(model, batch, split)
        calls.append(split)
        return logits * float("nan") if split == "train" and len(calls) == 2 else logits

    loop.runner.logits = poisoned
    with pytest.raises(TrialDiverged, match="loss is nan at epoch 0 batch 1"):
        loop.run()
    assert calls.count("train") == 4, "read after a block of 4 batches, not after each"
    assert CUDA_LOSS_SYNC_STEPS > 1
