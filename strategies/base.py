"""The strategy interface: a few hooks, no magic (in the spirit of Lightning's ``BaseFinetuning``).

A strategy is a small dataclass whose fields are its hyperparameters (the values Optuna searches). It answers one
question — *at this point of training, which layer groups are frozen and at what learning-rate multiplier?* — as a
:data:`Plan`. It never touches the model or the optimizer: :class:`strategies.optim.FreezeController` applies plans,
so the hard parts (optimizer state, weight decay, checksums) are written once and tested once.

Hooks a strategy may implement:

``check(layer_map)``
    Validate the hyperparameters against the model before training (e.g. ``n`` ≤ number of layers). Raise
    :class:`StrategyConfigError` naming the field.
``plan(layer_map, epoch, step)``
    Required. The plan at the start of ``epoch`` (0-based) / global optimizer ``step``. Called at every epoch start and,
    when ``stepwise`` is true, before every optimizer step; the controller applies it only when it changed.
``schedule_end(layer_map)``
    The epoch from which the plan no longer changes (0 for static strategies). The sweep runner does not prune a
    trial before this epoch, so gradual unfreezing is not judged while its lower layers are still frozen.
``final_step(layer_map)``
    The same for strategies scheduled in optimizer steps: the step of the last plan change (0 by default). Only the
    runner knows the steps per epoch; :func:`schedule_end_epoch` combines both hooks into one epoch.

Every hook receives the real :class:`~strategies.layers.LayerMap` of the model being trained (the result of
:func:`~strategies.layers.discover_layers`), never a stand-in with only a layer count: a strategy may call any of its
methods (``group()``, ``names``, ``bottom_up()``, ...).

Class attributes a strategy may set:

``name``
    The name studies use (``bottom_n``); no ``+`` or ``:``.
``stepwise``
    True when ``plan`` must be asked before every optimizer step, not only at epoch starts.
``default_training``
    Training fields this strategy should be searched over when the study file does not set them, written like the
    study file (``{"learning_rate": {"type": "float", "low": 3e-4, "high": 5e-3, "log": True}}``). A frozen body
    with a fresh head needs a far higher learning rate than full fine-tuning; one shared default would judge every
    strategy at an LR that suits only one of them. The built-ins' ranges come from measurements (docs/benchmarks.md).
``layer_bounded_params``
    The hyperparameters whose valid range is ``0..L`` (L = number of layers): the sweep side checks their search
    ranges against the model before any trial starts, so a range that overshoots fails the study file, not a random
    subset of trials. ``BottomN`` declares ``("n",)``; composites declare the union of their parts'.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from strategies.layers import EMBEDDINGS, HEAD, OTHER, LayerMap


class StrategyConfigError(ValueError):
    """A strategy hyperparameter is invalid for this model. ``field`` names the hyperparameter."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.detail = message


@dataclass(frozen=True)
class GroupSetting:
    """What a plan says about one layer group."""

    frozen: bool = False
    lr_multiplier: float = 1.0


Plan = dict[str, GroupSetting]
"""Layer-group name → setting. Every group of the layer map appears exactly once."""


def uniform_plan(
    layer_map: LayerMap, frozen: set[str] = frozenset(), multipliers: dict[str, float] | None = None
) -> Plan:
    """A plan with ``frozen`` groups frozen and the given multipliers (default 1.0) elsewhere."""
    multipliers = multipliers or {}
    return {
        name: GroupSetting(frozen=name in frozen, lr_multiplier=multipliers.get(name, 1.0)) for name in layer_map.names
    }


def embedding_side(layer_map: LayerMap) -> set[str]:
    """The embeddings group plus ``other`` (shared inputs that every block reads, such as DeBERTa's relative
    position embeddings): built-in strategies freeze and scale them together."""
    return {name for name in (EMBEDDINGS, OTHER) if name in layer_map.names}


def frozen_prefix_depth(plan: Plan, layer_map: LayerMap) -> int | None:
    """How many of the lowest blocks are frozen *together with* the embedding side, or ``None`` when any embedding-side
    group trains. This is the part of the network whose output can be cached: nothing below it ever changes."""
    if any(not plan[name].frozen for name in embedding_side(layer_map)):
        return None
    depth = 0
    for i in range(layer_map.num_layers):
        if not plan[f"layer.{i}"].frozen:
            break
        depth += 1
    return depth


class Strategy(ABC):
    """Base class of all strategies. Subclasses are dataclasses; their fields are the hyperparameters."""

    name: ClassVar[str]
    stepwise: ClassVar[bool] = False
    layer_bounded_params: ClassVar[tuple[str, ...]] = ()
    default_training: ClassVar[Mapping[str, Any]] = {}

    def check(self, layer_map: LayerMap) -> None:  # noqa: B027 - optional hook
        """Validate hyperparameters against the model; raise :class:`StrategyConfigError`."""

    @abstractmethod
    def plan(self, layer_map: LayerMap, epoch: int, step: int) -> Plan:
        """Return the plan in force at ``epoch`` / ``step``."""

    def schedule_end(self, layer_map: LayerMap) -> int:
        """First epoch from which the plan no longer changes. ``layer_map`` is the model's real layer map."""
        return 0

    def final_step(self, layer_map: LayerMap) -> int:
        """Optimizer step of the last plan change, for strategies scheduled in steps (0: none, or epoch-scheduled)."""
        return 0

    def params(self) -> dict[str, Any]:
        """The hyperparameters as a plain dict (logged to MLflow)."""
        return dataclasses.asdict(self) if dataclasses.is_dataclass(self) else {}

    @classmethod
    def param_defaults(cls) -> dict[str, Any]:
        """Hyperparameter names and defaults (``dataclasses.MISSING`` for required ones). A field with a
        ``default_factory`` has a default too: it must not be reported as required."""
        if not dataclasses.is_dataclass(cls):
            return {}
        return {f.name: _field_default(f) for f in dataclasses.fields(cls)}


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


@dataclass
class Composite(Strategy):
    """Several strategies at once, e.g. ``bottom_n+discriminative``: a group is frozen if any part freezes it, and its
    multiplier is the product of the parts' multipliers."""

    parts: tuple[Strategy, ...] = ()
    name: ClassVar[str] = "composite"

    def __post_init__(self) -> None:
        self.stepwise = any(p.stepwise for p in self.parts)  # type: ignore[misc]
        bounded = dict.fromkeys(name for p in self.parts for name in p.layer_bounded_params)
        self.layer_bounded_params = tuple(bounded)  # type: ignore[misc]

    def check(self, layer_map: LayerMap) -> None:
        for part in self.parts:
            part.check(layer_map)

    def plan(self, layer_map: LayerMap, epoch: int, step: int) -> Plan:
        plans = [p.plan(layer_map, epoch, step) for p in self.parts]
        merged: Plan = {}
        for name in layer_map.names:
            frozen = any(plan[name].frozen for plan in plans)
            mult = 1.0
            for plan in plans:
                mult *= plan[name].lr_multiplier
            merged[name] = GroupSetting(frozen=frozen, lr_multiplier=mult)
        return merged

    def schedule_end(self, layer_map: LayerMap) -> int:
        return max((p.schedule_end(layer_map) for p in self.parts), default=0)

    def final_step(self, layer_map: LayerMap) -> int:
        return max((p.final_step(layer_map) for p in self.parts), default=0)

    def params(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for part in self.parts:
            out.update(part.params())
        return out


@dataclass
class GroupScale(Strategy):
    """Multiply the LR of some groups and change nothing else; composed with a strategy, it gives e.g. the head a
    higher LR than the body (``training.head_lr_scale``): a freshly initialised head usually wants a far higher LR
    than the pretrained blocks under it, whatever the freezing strategy."""

    scales: dict[str, float] = dataclasses.field(default_factory=dict)
    name: ClassVar[str] = "group_scale"

    def plan(self, layer_map: LayerMap, epoch: int, step: int) -> Plan:
        return uniform_plan(layer_map, multipliers={k: v for k, v in self.scales.items() if k in layer_map.names})


def with_head_scale(strategy: Strategy, scale: float) -> Strategy:
    """``strategy`` with the head's LR multiplied by ``scale`` (``strategy`` itself when the scale is 1)."""
    if scale == 1.0:
        return strategy
    return Composite(parts=(strategy, GroupScale({HEAD: float(scale)})))


def log_range(low: float, high: float) -> dict[str, Any]:
    """A log-uniform float search entry, as a study file writes it (for ``default_training``)."""
    return {"type": "float", "low": low, "high": high, "log": True}


def schedule_end_epoch(strategy: Strategy, layer_map: LayerMap, steps_per_epoch: int | None = None) -> int:
    """The first epoch from which ``strategy``'s plan no longer changes, counting step schedules too: the epoch that
    holds the last step-scheduled change counts as still changing (``ceil(final_step / steps_per_epoch)``). Without
    ``steps_per_epoch`` only epoch schedules are counted. The runner must not prune before this epoch."""
    end = max(strategy.schedule_end(layer_map), 0)
    step = strategy.final_step(layer_map)
    if step > 0 and steps_per_epoch:
        end = max(end, math.ceil(step / steps_per_epoch))
    return end


__all__ = [
    "EMBEDDINGS",
    "HEAD",
    "OTHER",
    "Composite",
    "GroupSetting",
    "Plan",
    "Strategy",
    "StrategyConfigError",
    "embedding_side",
    "frozen_prefix_depth",
    "log_range",
    "schedule_end_epoch",
    "uniform_plan",
    "with_head_scale",
]
