"""``gradual``: ULMFiT-style gradual unfreezing.

Training starts with the embedding side and the ``start_frozen`` lowest blocks frozen (default: all blocks, so only
the head trains). Every ``unfreeze_every`` epochs (or optimizer steps, with ``unit: step``) the top
``groups_per_step`` frozen groups are unfrozen, top-down; the embedding side comes last, and only if
``unfreeze_embeddings``. Each unfreeze adds the groups to the optimizer as *fresh* parameter groups (see
:mod:`strategies.optim`): no stale momentum from before they were frozen.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from strategies.base import Plan, Strategy, StrategyConfigError, embedding_side, log_range, uniform_plan
from strategies.bottom_n import check_layer_count
from strategies.layers import LayerMap, layer_name


@dataclass
class Gradual(Strategy):
    unfreeze_every: int = 1
    groups_per_step: int = 1
    start_frozen: int | None = None
    unit: str = "epoch"
    unfreeze_embeddings: bool = True
    name: ClassVar[str] = "gradual"
    # starts as a head-only probe, so it needs more than full fine-tuning, but every group it unfreezes trains at the
    # same LR: at 1.4e-3 and 1.6e-3 the loss diverged as soon as the body unfroze (docs/benchmarks.md §5)
    default_training: ClassVar[Mapping[str, Any]] = {"learning_rate": log_range(1e-4, 6e-4)}
    layer_bounded_params: ClassVar[tuple[str, ...]] = ("start_frozen",)

    def __post_init__(self) -> None:
        self.stepwise = self.unit == "step"  # type: ignore[misc]

    def check(self, layer_map: LayerMap) -> None:
        for field in ("unfreeze_every", "groups_per_step"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise StrategyConfigError(field, f"must be an integer ≥ 1, got {value!r}")
        if self.start_frozen is not None:
            check_layer_count("start_frozen", self.start_frozen, layer_map)
        if self.unit not in ("epoch", "step"):
            raise StrategyConfigError("unit", f"must be 'epoch' or 'step', got {self.unit!r}")

    def _stack(self, layer_map: LayerMap) -> list[set[str]]:
        """Frozen groups bottom-up at the start; each entry is unfrozen as one unit."""
        depth = layer_map.num_layers if self.start_frozen is None else self.start_frozen
        stack = [{layer_name(i)} for i in range(depth)]
        emb = embedding_side(layer_map)
        return [emb, *stack] if emb else stack

    def _min_frozen(self, layer_map: LayerMap) -> int:
        """Stack entries that stay frozen for good: the embedding side when ``unfreeze_embeddings`` is false."""
        return 0 if self.unfreeze_embeddings or not embedding_side(layer_map) else 1

    def plan(self, layer_map: LayerMap, epoch: int, step: int) -> Plan:
        stack = self._stack(layer_map)
        clock = epoch if self.unit == "epoch" else step
        unfrozen = (clock // self.unfreeze_every) * self.groups_per_step
        keep = max(len(stack) - unfrozen, self._min_frozen(layer_map))
        frozen = set().union(*stack[:keep]) if keep else set()
        return uniform_plan(layer_map, frozen=frozen)

    def final_clock(self, layer_map: LayerMap) -> int:
        """The epoch (``unit: epoch``) or optimizer step (``unit: step``) of the last unfreeze: from then on the plan
        no longer changes."""
        stages = math.ceil((len(self._stack(layer_map)) - self._min_frozen(layer_map)) / self.groups_per_step)
        return stages * self.unfreeze_every

    def schedule_end(self, layer_map: LayerMap) -> int:
        # Step schedules are reported by final_step(): only the runner knows the steps per epoch.
        return self.final_clock(layer_map) if self.unit == "epoch" else 0

    def final_step(self, layer_map: LayerMap) -> int:
        return self.final_clock(layer_map) if self.unit == "step" else 0
