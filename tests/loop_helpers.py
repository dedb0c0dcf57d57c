"""One training run through the real loop, for tests that compare runs (cached vs direct forward, text or images)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from strategies import FreezeController, discover_layers, make_optimizer_factory
from sweeps.train.forward import ForwardRunner
from sweeps.train.loop import LoopConfig, TrainingLoop
from sweeps.train.memory import PeakMemory

KEYS = ("train_loss", "eval_loss", "accuracy", "f1_macro")


class EachEpoch:
    """An observer that calls ``fn(epoch)`` after every epoch and never stops the loop."""

    def __init__(self, fn: Callable[[int], None]) -> None:
        self.fn = fn

    def on_epoch(self, result: Any) -> None:
        self.fn(result.epoch)


def run_loop(model: nn.Module, strategy: Any, runner: ForwardRunner, train: DataLoader, evaluate: DataLoader,
             config: LoopConfig, *, train_bn: bool = False,
             on_epoch: Callable[[int], None] | None = None) -> list[dict[str, float]]:
    """Train with AdamW at 3e-3 on CPU; checks the frozen parameters stayed identical; returns each epoch's metrics."""
    layer_map = discover_layers(model)
    controller = FreezeController(model, layer_map, make_optimizer_factory("adamw"), base_lr=3e-3, train_bn=train_bn)
    memory = PeakMemory(torch.device("cpu"))
    loop = TrainingLoop(
        model, layer_map, strategy, controller, train, evaluate, config, torch.device("cpu"), runner=runner,
        memory=memory, observer=EachEpoch(on_epoch) if on_epoch else None,
    )
    try:
        result = loop.run()
    finally:
        memory.close()
        runner.close()
    assert controller.finish()
    return [e.metrics for e in result.epochs]


def assert_same_metrics(a: list[dict[str, float]], b: list[dict[str, float]]) -> None:
    assert len(a) == len(b)
    for ea, eb in zip(a, b, strict=True):
        for k in KEYS:
            assert ea[k] == pytest.approx(eb[k], abs=1e-5, rel=1e-5), (k, ea[k], eb[k])
