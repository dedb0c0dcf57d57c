"""``none``: full fine-tuning, every group trainable at the base learning rate (the baseline of every study)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from strategies.base import Plan, Strategy, uniform_plan
from strategies.layers import LayerMap


@dataclass
class NoFreeze(Strategy):
    name: ClassVar[str] = "none"

    def plan(self, layer_map: LayerMap, epoch: int, step: int) -> Plan:
        return uniform_plan(layer_map)
