"""``bottom_n``: freeze the embedding side and the ``n`` lowest blocks; ``n`` = number of layers is a linear probe
(head only). The frozen part is a prefix of the network, so its activations can be cached across epochs and trials.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from strategies.base import Plan, Strategy, StrategyConfigError, embedding_side, log_range, uniform_plan
from strategies.layers import LayerMap, layer_name


def check_layer_count(field: str, value: int, layer_map: LayerMap) -> None:
    """Shared range check: ``0 ≤ value ≤ L`` with a message that says what L is for this model."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise StrategyConfigError(field, f"must be an integer, got {value!r}")
    if not 0 <= value <= layer_map.num_layers:
        shared = " (ALBERT-style shared blocks: layer i means hidden group i)" if layer_map.shared_layers else ""
        n_layers = layer_map.num_layers
        raise StrategyConfigError(
            field, f"{value} is out of range: the model has L={n_layers} layers{shared}; use 0..{n_layers}"
        )


@dataclass
class BottomN(Strategy):
    n: int = 1
    name: ClassVar[str] = "bottom_n"
    # small n trains like full fine-tuning, a frozen body (fresh head) needs 1e-3+; docs/benchmarks.md §LR defaults
    default_training: ClassVar[Mapping[str, Any]] = {"learning_rate": log_range(5e-5, 3e-3)}
    layer_bounded_params: ClassVar[tuple[str, ...]] = ("n",)

    def check(self, layer_map: LayerMap) -> None:
        check_layer_count("n", self.n, layer_map)

    def plan(self, layer_map: LayerMap, epoch: int, step: int) -> Plan:
        frozen = embedding_side(layer_map) | {layer_name(i) for i in range(self.n)}
        return uniform_plan(layer_map, frozen=frozen)
