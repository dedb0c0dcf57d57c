"""``none``: full fine-tuning, every group trainable at the base learning rate (the baseline of every study)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from strategies.base import Plan, Strategy, log_range, uniform_plan
from strategies.layers import LayerMap


@dataclass
class NoFreeze(Strategy):
    name: ClassVar[str] = "none"
    # full fine-tuning: the usual range for a pretrained encoder; docs/benchmarks.md §LR defaults
    default_training: ClassVar[Mapping[str, Any]] = {"learning_rate": log_range(1e-5, 2e-4)}

    def plan(self, layer_map: LayerMap, epoch: int, step: int) -> Plan:
        return uniform_plan(layer_map)
