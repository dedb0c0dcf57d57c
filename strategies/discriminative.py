"""``discriminative``: layer-wise learning rates (ULMFiT's discriminative fine-tuning, a.k.a. layer-wise LR decay).

Nothing is frozen. The head trains at the base LR; block ``i`` of ``L`` at ``base × decay^(L − i) / head_lr_ratio``;
the embedding side one step lower than block 0. ``decay: 1`` with ``head_lr_ratio: 50`` is the common two-group
"body at LR/50, head at LR" setup. Every group's LR is logged (``lr/<group>``), not just the first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from strategies.base import Plan, Strategy, StrategyConfigError, embedding_side, log_range, uniform_plan
from strategies.layers import HEAD, LayerMap, layer_name


@dataclass
class Discriminative(Strategy):
    decay: float = 0.9
    head_lr_ratio: float = 1.0
    name: ClassVar[str] = "discriminative"
    # the head trains at the base LR and the blocks below at decayed ones; docs/benchmarks.md §LR defaults
    default_training: ClassVar[Mapping[str, Any]] = {"learning_rate": log_range(3e-5, 5e-4)}

    def check(self, layer_map: LayerMap) -> None:
        if not 0.0 < _number("decay", self.decay) <= 1.0:
            raise StrategyConfigError("decay", f"must be in (0, 1], got {self.decay!r}")
        if not _number("head_lr_ratio", self.head_lr_ratio) > 0.0:
            raise StrategyConfigError("head_lr_ratio", f"must be > 0, got {self.head_lr_ratio!r}")

    def plan(self, layer_map: LayerMap, epoch: int, step: int) -> Plan:
        depth = layer_map.num_layers
        mults = {layer_name(i): self.decay ** (depth - i) / self.head_lr_ratio for i in range(depth)}
        for name in embedding_side(layer_map):
            mults[name] = self.decay ** (depth + 1) / self.head_lr_ratio
        mults[HEAD] = 1.0
        return uniform_plan(layer_map, multipliers=mults)


def _number(field: str, value: object) -> float:
    """``float(value)``, or a :class:`StrategyConfigError` naming the field (a YAML typo is not a TypeError)."""
    if isinstance(value, bool):
        raise StrategyConfigError(field, f"must be a number, got {value!r}")
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise StrategyConfigError(field, f"must be a number, got {value!r}") from None
