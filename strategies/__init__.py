"""freeze-sweeps strategies: layer discovery, freezing strategies and the optimizer bookkeeping that makes a freeze
hold. This package does not import :mod:`sweeps`; it can be used in any training loop::

    layer_map = discover_layers(model)
    strategy = build_strategy("bottom_n", {"n": 4})
    strategy.check(layer_map)
    ctl = FreezeController(model, layer_map, make_optimizer_factory("adamw"), base_lr=2e-5, weight_decay=0.01)
    ctl.apply(strategy.plan(layer_map, epoch=0, step=0))
    optimizer = ctl.optimizer
"""

from strategies.base import (
    Composite,
    GroupSetting,
    Plan,
    Strategy,
    StrategyConfigError,
    embedding_side,
    frozen_prefix_depth,
    schedule_end_epoch,
    uniform_plan,
)
from strategies.group_selectors import select_groups
from strategies.inspect import describe, format_table
from strategies.layers import (
    EMBEDDINGS,
    HEAD,
    OTHER,
    LayerDiscoveryError,
    LayerGroup,
    LayerMap,
    LayerSpec,
    discover_layers,
    layer_name,
)
from strategies.optim import (
    FreezeController,
    FreezeVerifier,
    FrozenParameterChanged,
    checksum,
    ensure_trainable_input,
    first_trainable_block,
    make_optimizer_factory,
    optimizer_factory,
)
from strategies.registry import (
    UnknownStrategyError,
    available,
    build_strategy,
    check_contract,
    layer_bounded_params,
    param_defaults,
    register,
    resolve,
)
from strategies.unused import exclude_unused_parameters, find_unused_parameters, unused_by_group

__all__ = [
    "EMBEDDINGS",
    "HEAD",
    "OTHER",
    "Composite",
    "FreezeController",
    "FreezeVerifier",
    "FrozenParameterChanged",
    "GroupSetting",
    "LayerDiscoveryError",
    "LayerGroup",
    "LayerMap",
    "LayerSpec",
    "Plan",
    "Strategy",
    "StrategyConfigError",
    "UnknownStrategyError",
    "available",
    "build_strategy",
    "check_contract",
    "checksum",
    "describe",
    "discover_layers",
    "embedding_side",
    "ensure_trainable_input",
    "exclude_unused_parameters",
    "find_unused_parameters",
    "first_trainable_block",
    "format_table",
    "frozen_prefix_depth",
    "layer_bounded_params",
    "layer_name",
    "make_optimizer_factory",
    "optimizer_factory",
    "param_defaults",
    "register",
    "resolve",
    "schedule_end_epoch",
    "select_groups",
    "uniform_plan",
    "unused_by_group",
]
