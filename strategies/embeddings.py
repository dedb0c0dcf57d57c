"""``embeddings``: freeze the embedding side (token/position embeddings and shared inputs), train every block.

Common when the training set is small: the vocabulary's embeddings of rare tokens are not pulled around by a few
thousand examples.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from strategies.base import Plan, Strategy, embedding_side, log_range, uniform_plan
from strategies.layers import LayerMap


@dataclass
class FreezeEmbeddings(Strategy):
    name: ClassVar[str] = "embeddings"
    # nearly full fine-tuning: the same range as ``none``; docs/benchmarks.md §LR defaults
    default_training: ClassVar[Mapping[str, Any]] = {"learning_rate": log_range(1e-5, 2e-4)}

    def plan(self, layer_map: LayerMap, epoch: int, step: int) -> Plan:
        return uniform_plan(layer_map, frozen=embedding_side(layer_map))
