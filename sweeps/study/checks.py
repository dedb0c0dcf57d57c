"""Checks of a study file against the real model and data, before trial 0 — shared by ``run`` and ``validate --model``.

Kept apart from the runner so ``validate --model`` can run them without opening the study's storage or tracking:
validation writes nothing to the study folder (it used to create ``optuna.db``, ``mlflow.db``, a parent run left
RUNNING and the study's fingerprint, after which a harmless edit was refused).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sweeps.errors import SpecError

log = logging.getLogger(__name__)

_NO_LIMIT = 100_000  # tokenizers without a known limit report model_max_length as a huge sentinel (1e30)


def position_limit(model: Any, tokenizer: Any) -> int | None:
    """The longest input the model accepts: its position embeddings (minus RoBERTa-style padding offsets) and the
    tokenizer's ``model_max_length`` when it has a real one; None when the model has no fixed limit."""
    config = getattr(model, "config", None)
    limits = []
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        if getattr(config, "position_embedding_type", "absolute") == "absolute" and "roberta" in str(
            getattr(config, "model_type", "")
        ):
            positions -= (getattr(config, "pad_token_id", None) or 0) + 1  # positions start after padding_idx
        limits.append(positions)
    model_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(model_max, int) and 0 < model_max < _NO_LIMIT:
        limits.append(model_max)
    return min(limits) if limits else None


def check_max_length(spec: Any, model: Any, tokenizer: Any) -> None:
    """``task.max_length`` above the model's limit made every trial fail with a tensor size mismatch."""
    limit = position_limit(model, tokenizer)
    if limit is not None and spec.task.max_length > limit:
        raise SpecError(
            "task.max_length",
            f"{spec.task.max_length} is longer than the model accepts: {spec.task.model!r} has {limit} positions. "
            f"Use task.max_length: {limit} or less.",
        )


def check_against_model(spec: Any, output: Path, dataframe: Any = None) -> tuple[Any, int]:
    """Load data, tokenizer and model source; check ``max_length``, the layer map and every fixed strategy against the
    real model. Returns (study context, number of layers)."""
    from strategies import discover_layers
    from sweeps.config import is_search
    from sweeps.config.search_space import check_strategy_bounds
    from sweeps.train import StudyContext, check_strategy, layer_spec

    ctx = StudyContext.prepare(spec, output, dataframe=dataframe)
    model = ctx.build_model()
    check_max_length(spec, model, ctx.tokenizer)
    try:
        layer_map = discover_layers(model, layer_spec(spec))
    except ValueError as exc:
        raise SpecError("layers", str(exc)) from exc
    check_strategy_bounds(spec, layer_map.num_layers)
    for i, entry in enumerate(spec.strategies):
        if not any(is_search(v) for v in entry.params.values()):  # searched ranges were checked just above
            strategy = check_strategy(entry.name, dict(entry.params), layer_map, index=i)
            warning = schedule_fits(spec, i, entry, strategy, layer_map)
            if warning:
                log.warning("warning: %s", warning)
    return ctx, layer_map.num_layers


def schedule_fits(spec: Any, index: int, entry: Any, strategy: Any, layer_map: Any) -> str | None:
    """A warning for a schedule (gradual unfreezing, explicit phases) whose last change comes after the last epoch:
    its trials never train as configured, so they say nothing about the strategy. A warning, not an error: a short
    smoke run with fewer epochs is legitimate; the epochs it would need are in the message."""
    from strategies import schedule_end_epoch

    epochs = int(entry.training.get("epochs", spec.training.epochs))
    end = schedule_end_epoch(strategy, layer_map)
    if end < epochs:
        return None
    return (
        f"strategies[{index}].params: {entry.name}'s schedule changes for the last time at the start of epoch "
        f"{end + 1}, but training runs {epochs} epoch{'s' if epochs != 1 else ''}: its trials never train as "
        f"configured. Use epochs >= {end + 1} (training.epochs or strategies[{index}].training.epochs), or unfreeze "
        "faster (e.g. groups_per_step)"
    )
