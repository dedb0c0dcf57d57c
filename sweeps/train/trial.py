"""One trial: sampled parameters in, a trained (and measured) classifier out.

A trial builds only what depends on its parameters: the model, its layer map, the strategy, the optimizer
(through :class:`~strategies.optim.FreezeController`) and the forward runner. Everything a trial
allocates is released when it ends, so a long study does not creep up in memory.

A trial reports to the observer it is given (each epoch; with cross-validation each fold) and stops when the observer
returns a reason: it then returns :class:`Stopped`. It never decides on pruning itself, and never logs to MLflow.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader

from strategies import (
    FreezeController,
    LayerMap,
    StrategyConfigError,
    build_strategy,
    describe,
    discover_layers,
    format_table,
    make_optimizer_factory,
)
from strategies.base import with_head_scale
from sweeps.cache import CachedPrefixForward
from sweeps.config import TrainingConfig
from sweeps.data import stratified_folds
from sweeps.errors import SpecError
from sweeps.metrics import BEST_EPOCH_METRICS, classification_metrics, confusion
from sweeps.phases import FREEZE_CHECK, SETUP, timed
from sweeps.records import activation_cache_dir
from sweeps.train.context import StudyContext, layer_spec, resolve_precision
from sweeps.train.forward import DirectForward, ForwardRunner
from sweeps.train.heap import release_memory
from sweeps.train.loop import EpochObserver, EpochResult, LoopConfig, LoopResult, TrainingLoop
from sweeps.train.memory import PeakMemory
from sweeps.train.unused import annotate_unused, unused_text

log = logging.getLogger(__name__)


class TrialObserver(EpochObserver, Protocol):
    """What a trial reports to while it runs (implemented on the study side): each epoch (train/validation split) or
    each fold (cross-validation). Returning a reason stops the trial."""

    def on_fold(self, fold: int, running: dict[str, float]) -> str | None:
        """After fold ``fold`` (0-based), with the running mean of the folds so far; a reason to stop, or ``None``."""


@dataclass
class Stopped:
    """The trial was stopped by its observer (the study's pruner) before it finished; ``reason`` says why."""

    reason: str


@dataclass
class TrialOutcome:
    metrics: dict[str, float]  # final values (best epoch for quality, mean epoch time, trial peak memory)
    epochs: list[EpochResult]
    frozen_params_verified: bool
    layer_table: list[dict[str, Any]]
    layer_table_text: str
    eval_probs: np.ndarray
    eval_labels: np.ndarray
    confusion: np.ndarray
    cache_stats: dict[str, Any] = field(default_factory=dict)
    model_dir: Path | None = None
    fold_metrics: list[dict[str, float]] = field(default_factory=list)
    oof_index: np.ndarray | None = None  # example ids of eval_probs rows (CV: out-of-fold order)


def eval_order(ds: Any) -> np.ndarray | None:
    """The order the evaluation rows are batched in: longest first, so each batch pads to lengths close to its own
    rows' rather than to the longest of a random handful (evaluation is every epoch of every trial; the predictions
    are the same up to float noise, and are put back in split order). Longest first also meets any out-of-memory
    at the first batch. ``None`` (split order) without token lengths: image tasks."""
    if "length" not in ds.column_names:
        return None
    return np.argsort(-np.asarray(ds["length"]), kind="stable")


def _loader(
    ctx: StudyContext, ds: Any, batch_size: int, shuffle: bool, seed: int, group_by_length: bool,
    order: np.ndarray | None = None,
) -> DataLoader:
    """A training (``shuffle``) or evaluation loader (in ``order`` when given); image tasks have no lengths to group
    by."""
    generator = torch.Generator().manual_seed(seed)
    columns = [c for c in ds.column_names if c not in ("text", "text_pair", "id", "length", "image_digest")]
    rows = ds.select_columns(columns)
    # page-locked batches on CUDA: the loop's non-blocking copy to the GPU then overlaps the step
    common = {"batch_size": batch_size, "collate_fn": ctx.collator_for(train=shuffle, seed=seed),
              "pin_memory": ctx.device.type == "cuda"}
    if shuffle and group_by_length and "length" in ds.column_names:  # tokenised at load time: no image task
        from transformers.trainer_pt_utils import LengthGroupedSampler

        sampler = LengthGroupedSampler(batch_size, lengths=ds["length"], generator=generator)
        return DataLoader(rows, sampler=sampler, **common)
    if order is not None:
        return DataLoader(rows, sampler=order.tolist(), **common)
    return DataLoader(rows, shuffle=shuffle, generator=generator, **common)


def _make_runner(
    ctx: StudyContext,
    model: torch.nn.Module,
    layer_map: LayerMap,
    training: TrainingConfig,
    keys: dict[str, str],
    train_ds: Any,
    eval_ds: Any,
) -> ForwardRunner:
    if training.cache == "off" or training.frozen_dropout or layer_map.shared_layers:
        return DirectForward()
    reason = None
    if ctx.modality == "image":
        batchnorm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
        reason = image_cache_reason(ctx.augment, training.train_bn and batchnorm)
    if reason is not None:
        log.info("activation cache: off: %s", reason)
        return DirectForward(reason)
    return CachedPrefixForward(
        layer_map,
        split_keys=keys,
        cache_dir=activation_cache_dir(ctx.output),
        cache_dtype=training.cache_dtype,
        split_sizes={"train": len(train_ds), "eval": len(eval_ds)},
        frozen_dropout=training.frozen_dropout,
        gradient_checkpointing=training.gradient_checkpointing,
    )


def image_cache_reason(augment: bool, train_bn: bool) -> str | None:
    """Why an image trial cannot cache its frozen prefix (``None``: it can).

    The cache serves a frozen prefix's output per example (:mod:`sweeps.cache`); that output is fixed only when the
    images and the prefix are: with augmentation a training image differs every epoch, and with ``train_bn`` frozen
    BatchNorm layers update their running statistics on every training batch. The runner would detect both (pixel
    fingerprints, a prefix module in training mode) and run direct batch by batch; deciding here says why once.
    ``train_bn`` is true only when the model has BatchNorm layers (a ViT with ``train_bn`` caches normally).
    """
    if augment:
        return "task.data.augment is on: training images differ every epoch, a frozen prefix's output is not reusable"
    if train_bn:
        return (
            "training.train_bn is on: BatchNorm in frozen blocks updates its running statistics every training batch, "
            "a frozen prefix's output is not fixed"
        )
    return None


def check_strategy(name: str, params: dict[str, Any], layer_map: LayerMap, index: int | None = None):
    """Build and check a strategy, turning its errors into study-file paths."""
    where = f"strategies[{index}].params" if index is not None else f"strategy {name!r}"
    try:
        strategy = build_strategy(name, params)
        strategy.check(layer_map)
    except StrategyConfigError as exc:
        raise SpecError(f"{where}.{exc.field}", exc.detail) from exc
    return strategy


def train_once(
    ctx: StudyContext,
    strategy_name: str,
    strategy_params: dict[str, Any],
    training: TrainingConfig,
    train_ds: Any,
    eval_ds: Any,
    keys: dict[str, str],
    *,
    observer: EpochObserver | None = None,
    save_to: Path | None = None,
    on_verified: Callable[[bool], None] | None = None,
    head: dict[str, Any] | None = None,
) -> tuple[LoopResult, bool, list[dict[str, Any]], str, dict[str, Any]]:
    """Train one model; returns (loop result, frozen verified, layer table, table text, cache stats). When the
    observer stopped the loop (``result.stop_reason``), nothing is verified or saved: the trial is abandoned.

    ``on_verified(ok)`` hears the verification of what was frozen up to the end of training however it ended —
    completed, stopped by the observer (pruned) or failed after training started — so every trial that trained
    carries the proof, not only completed ones. ``head`` is the trial's ``task.head`` (plain values), if any."""
    from transformers import set_seed

    set_seed(training.seed)
    with timed(SETUP):  # layer discovery, the unused-parameter probe, the optimizer, the frozen checksums
        model = ctx.build_model(head)
        layer_map = discover_layers(model, layer_spec(ctx.spec))
        names = ctx.spec.strategy_names
        index = names.index(strategy_name) if strategy_name in names else None
        strategy = check_strategy(strategy_name, strategy_params, layer_map, index=index)
        strategy = with_head_scale(strategy, training.head_lr_scale)
        if training.gradient_checkpointing:
            if not hasattr(model, "gradient_checkpointing_enable"):
                what = f"{type(model).__name__} cannot checkpoint its blocks"
                raise SpecError("training.gradient_checkpointing", what)
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        train_loader = _loader(ctx, train_ds, training.batch_size, True, training.seed, training.group_by_length)
        order = eval_order(eval_ds)
        eval_loader = _loader(ctx, eval_ds, training.eval_batch_size, False, training.seed, False, order)
        # the eval loader, not the train loader: drawing a batch from the shuffled loader would move its generator
        build = {"head": head, "seed": training.seed, "checkpointing": training.gradient_checkpointing}
        unused = ctx.unused_probes(model, next(iter(eval_loader)), ctx.device, build)
        optimizer_kwargs: dict[str, Any] = {}
        if training.optimizer == "sgd":
            optimizer_kwargs["momentum"] = training.momentum
        controller = FreezeController(
            model,
            layer_map,
            make_optimizer_factory(training.optimizer, **optimizer_kwargs),
            base_lr=training.learning_rate,
            weight_decay=training.weight_decay,
            frozen_dropout=training.frozen_dropout,
            train_bn=training.train_bn,
            # only checkpointed blocks need their input to require grad; otherwise it would cost an input gradient
            trainable_input=training.gradient_checkpointing,
            exclude=unused,
        )
        initial_plan = strategy.plan(layer_map, 0, 0)
        table = annotate_unused(describe(layer_map, initial_plan), layer_map, unused)
        table_text = f"layer map: {layer_map.source}\nstrategy: {strategy_name} {strategy.params()}\n"
        table_text += format_table(table)
        if note := unused_text(table):
            log.info(note)
            table_text += "\n" + note
        runner = _make_runner(ctx, model, layer_map, training, keys, train_ds, eval_ds)
    memory = PeakMemory(ctx.device)
    loop_config = LoopConfig(
        epochs=training.epochs,
        batch_size=training.batch_size,
        eval_batch_size=training.eval_batch_size,
        grad_accum_steps=training.grad_accum_steps,
        max_grad_norm=training.max_grad_norm,
        scheduler=training.scheduler,
        warmup_ratio=training.warmup_ratio,
        precision=resolve_precision(training.precision, ctx.device),
        seed=training.seed,
        early_stopping_patience=training.early_stopping_patience,
        metric=ctx.spec.task.metric,
        divergence_factor=training.divergence_factor,
        group_by_length=training.group_by_length,
    )
    loop = TrainingLoop(
        model,
        layer_map,
        strategy,
        controller,
        train_loader,
        eval_loader,
        loop_config,
        ctx.device,
        runner=runner,
        memory=memory,
        observer=observer,
        eval_order=order,
    )
    memory.reset()
    try:
        try:
            result = loop.run()
        except Exception:
            _report_verification(controller, on_verified)
            raise
        if result.stop_reason is not None:
            _report_verification(controller, on_verified)
            return result, False, table, table_text, {}
        with timed(FREEZE_CHECK):
            verified = controller.finish()
        if on_verified is not None:
            on_verified(verified)
        controller.require_verified()
        stats = dict(getattr(runner, "stats", {}) or {})
        if save_to is not None:
            ctx.save_model(model, save_to)
        return result, verified, table, table_text, stats
    finally:
        memory.close()
        runner.close()
        del loop, controller, model, runner
        release_memory(ctx.device)


def _report_verification(controller: FreezeController, on_verified: Callable[[bool], None] | None) -> None:
    """The checksum comparison after an interrupted training (pruned or failed); a failure to compare must not hide
    the error that ended training."""
    if on_verified is None:
        return
    try:
        verified = controller.finish()
    except Exception:
        return
    on_verified(verified)


def _final_metrics(result: LoopResult) -> dict[str, float]:
    best = result.epochs[result.best_epoch].metrics
    quality = {k: best[k] for k in BEST_EPOCH_METRICS}
    times = [e.metrics["epoch_time_s"] for e in result.epochs]
    # medians: the first epoch of a cached trial builds the cache and one slow epoch on a shared machine must not
    # decide a cost comparison; the cold/warm state is recorded separately (cache_warm)
    return {
        **quality,
        "epoch_time_s": float(np.median(times)),
        "eval_time_s": float(np.median([e.metrics["eval_time_s"] for e in result.epochs])),
        "samples_per_s": float(np.median([e.metrics["samples_per_s"] for e in result.epochs])),
        "peak_memory_mb": float(max(e.metrics["peak_memory_mb"] for e in result.epochs)),
        "trainable_params": float(result.epochs[-1].metrics["trainable_params"]),
        "best_epoch": float(result.best_epoch),
        "epochs_run": float(len(result.epochs)),
    }


def run_trial(
    ctx: StudyContext,
    strategy_name: str,
    strategy_params: dict[str, Any],
    training: TrainingConfig,
    *,
    observer: TrialObserver | None = None,
    model_dir: Path | None = None,
    on_verified: Callable[[bool], None] | None = None,
    head: dict[str, Any] | None = None,
) -> TrialOutcome | Stopped:
    """Train with one strategy: on the train/validation split, or over stratified folds when ``task.cv.folds`` ≥ 2
    (the objective is then the mean over folds; out-of-fold predictions are returned). The observer sees every epoch
    of a train/validation run, or the running mean after every fold; when it returns a reason the trial stops and
    :class:`Stopped` is returned. ``head``: the trial's ``task.head`` (sampled), built and saved with its model."""
    if ctx.spec.task.cv.enabled:
        return _run_cv(ctx, strategy_name, strategy_params, training, observer, model_dir, on_verified, head)
    result, verified, table, text, stats = train_once(
        ctx,
        strategy_name,
        strategy_params,
        training,
        ctx.tokenized["train"],
        ctx.tokenized["validation"],
        {"train": ctx.split_keys["train"], "eval": ctx.split_keys["validation"]},
        observer=observer,
        save_to=model_dir,
        on_verified=on_verified,
        head=head,
    )
    if result.stop_reason is not None:
        return Stopped(result.stop_reason)
    assert result.eval_probs is not None and result.eval_labels is not None
    num_labels = len(ctx.data.label_names)
    return TrialOutcome(
        metrics=_final_metrics(result),
        epochs=result.epochs,
        frozen_params_verified=verified,
        layer_table=table,
        layer_table_text=text,
        eval_probs=result.eval_probs,
        eval_labels=result.eval_labels,
        confusion=confusion(result.eval_labels, result.eval_probs.argmax(-1), num_labels),
        cache_stats=stats,
        model_dir=model_dir,
        oof_index=np.asarray(ctx.tokenized["validation"]["example_id"]),
    )


def _run_cv(
    ctx: StudyContext,
    strategy_name: str,
    strategy_params: dict[str, Any],
    training: TrainingConfig,
    observer: TrialObserver | None,
    model_dir: Path | None,
    on_verified: Callable[[bool], None] | None = None,
    head: dict[str, Any] | None = None,
) -> TrialOutcome | Stopped:
    folds = ctx.spec.task.cv.folds
    train = ctx.tokenized["train"]
    labels = np.asarray(train["labels"])
    num_labels = len(ctx.data.label_names)
    oof = np.zeros((len(train), num_labels), dtype=np.float32)
    fold_metrics: list[dict[str, float]] = []
    epochs: list[EpochResult] = []
    verified_all = True
    table: list[dict[str, Any]] = []
    text = ""
    stats: dict[str, Any] = {}
    for k, (train_idx, val_idx) in enumerate(stratified_folds(labels, folds, ctx.spec.task.data.shuffle_seed)):
        key = f"{ctx.split_keys['train']}-cv{folds}-{k}"
        result, verified, table, text, stats = train_once(
            ctx,
            strategy_name,
            strategy_params,
            training,
            train.select(train_idx),
            train.select(val_idx),
            {"train": key + "-train", "eval": key + "-val"},
            save_to=(model_dir / f"fold_{k}") if model_dir else None,
            on_verified=on_verified,
            head=head,
        )
        verified_all &= verified
        assert result.eval_probs is not None
        oof[val_idx] = result.eval_probs
        metrics = _final_metrics(result)
        fold_metrics.append(metrics)
        epochs.extend(result.epochs)
        if observer is not None:
            running = {m: float(np.mean([f[m] for f in fold_metrics])) for m in metrics}
            reason = observer.on_fold(k, running)
            if reason is not None:
                return Stopped(reason)
    mean = {m: float(np.mean([f[m] for f in fold_metrics])) for m in fold_metrics[0]}
    mean["peak_memory_mb"] = float(max(f["peak_memory_mb"] for f in fold_metrics))
    oof_scores = classification_metrics(labels, oof.argmax(-1), num_labels)
    mean.update({f"oof_{k}": v for k, v in oof_scores.items()})
    return TrialOutcome(
        metrics=mean,
        epochs=epochs,
        frozen_params_verified=verified_all,
        layer_table=table,
        layer_table_text=text,
        eval_probs=oof,
        eval_labels=labels,
        confusion=confusion(labels, oof.argmax(-1), num_labels),
        cache_stats=stats,
        model_dir=model_dir,
        fold_metrics=fold_metrics,
        oof_index=np.asarray(train["example_id"]),
    )
