"""``lr/<group>`` is the LR each group actually trained at: compared with the optimizer's param groups at every step.

Read at epoch end (after the linear decay), a gradual trial's last-unfrozen groups read 0 although they trained;
the loop reports the mean over the epoch's optimizer steps, which these tests recompute from the optimizer itself.
"""

from __future__ import annotations

from collections import defaultdict

import pytest
import tiny_models as tm
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from strategies import FreezeController, build_strategy, discover_layers, make_optimizer_factory
from sweeps.train.loop import LoopConfig, TrainingLoop

BASE_LR = 1e-3


def _loader(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    return [tm.token_batch(4, 8, seed=seed + i) for i in range(n)]


def _run(strategy_name: str, params: dict, epochs: int, batches: int = 4):
    model = tm.bert(num_layers=3)
    layer_map = discover_layers(model)
    strategy = build_strategy(strategy_name, params)
    controller = FreezeController(model, layer_map, make_optimizer_factory("adamw"), BASE_LR)
    config = LoopConfig(epochs=epochs, batch_size=4, scheduler="linear", max_grad_norm=None, divergence_factor=0)
    loop = TrainingLoop(model, layer_map, strategy, controller, _loader(batches, 0), _loader(2, 100), config,
                        torch.device("cpu"))
    seen: list[dict[str, float]] = []  # per optimizer step: the LR of every group in the optimizer

    def hook(optimizer, args, kwargs):
        if optimizer is controller.optimizer:
            seen.append({g["layer_group"]: float(g["lr"]) for g in optimizer.param_groups})

    handle = register_optimizer_step_pre_hook(hook)
    try:
        result = loop.run()
    finally:
        handle.remove()
    return result, seen, layer_map, batches


def test_gradual_lr_is_the_mean_the_optimizer_used_and_late_groups_are_not_zero() -> None:
    result, seen, layer_map, per_epoch = _run("gradual", {"unfreeze_every": 1}, epochs=3)
    assert len(seen) == 3 * per_epoch
    for epoch in result.epochs:
        steps = seen[epoch.epoch * per_epoch : (epoch.epoch + 1) * per_epoch]
        expected = defaultdict(float)
        for step in steps:
            for group, lr in step.items():
                expected[group] += lr / len(steps)
        for group in layer_map.names:
            assert epoch.learning_rates[group] == pytest.approx(expected[group], rel=1e-9), (epoch.epoch, group)
    last = result.epochs[-1]
    trained_last = set(seen[-1])
    assert trained_last - set(seen[0]), "gradual must unfreeze groups during the run"
    for group in trained_last:  # the linear decay ends at 0, but these groups trained in the last epoch
        assert last.learning_rates[group] > 0, group
    frozen_first = set(layer_map.names) - set(seen[0])
    for group in frozen_first:
        assert result.epochs[0].learning_rates[group] == 0.0, group


def test_full_fine_tune_lr_decays_per_epoch_mean() -> None:
    result, seen, _, per_epoch = _run("none", {}, epochs=2)
    head = [s["head"] for s in seen]
    assert result.epochs[0].learning_rates["head"] == pytest.approx(sum(head[:per_epoch]) / per_epoch)
    assert result.epochs[1].learning_rates["head"] == pytest.approx(sum(head[per_epoch:]) / per_epoch)
    assert result.epochs[0].learning_rates["head"] > result.epochs[1].learning_rates["head"] > 0


def test_progress_lines_without_a_terminal(caplog: pytest.LogCaptureFixture) -> None:
    """Under nohup/Docker/CI (no TTY) an epoch logs "batch i/total, samples/s, ETA" lines, at a bounded interval."""
    import logging

    from sweeps.train.loop import _progress_lines

    batches = _loader(5, 0)
    with caplog.at_level(logging.INFO, logger="sweeps.train.progress"):
        assert list(_progress_lines(batches, "epoch 1/1", interval_s=0.0)) == batches
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4  # after each batch but the last (the epoch line follows it)
    assert lines[0].startswith("  epoch 1/1: batch 1/5, ") and "samples/s, ETA " in lines[0]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="sweeps.train.progress"):
        list(_progress_lines(batches, "epoch 1/1", interval_s=3600.0))
    assert not caplog.records  # bounded: nothing within the interval
