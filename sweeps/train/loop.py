"""The training loop the strategies drive.

A compact loop of our own rather than the Hugging Face ``Trainer``, because freezing must reach places the Trainer
does not expose: the optimizer's parameter groups change when a strategy unfreezes (fresh groups, no stale state),
the LR schedule must follow groups added later, frozen blocks run in eval mode, and the forward pass goes through a
:class:`~sweeps.train.forward.ForwardRunner` so a frozen prefix can be served from a cache.

Per epoch it reports: ``train_loss``, ``eval_loss``, ``accuracy``, ``f1_macro``, ``f1_weighted``, ``epoch_time_s``
(training only), ``eval_time_s``, ``samples_per_s``, ``peak_memory_mb`` (this trial's peak so far),
``trainable_params`` and ``lr/<group>`` for every layer group, to the :class:`EpochObserver` it is given; the
observer may answer with a reason to stop (the study's pruner), and the loop then stops and returns. The loop knows
nothing of Optuna or MLflow.

``lr/<group>`` is the mean LR the group trained at over the epoch's optimizer steps (0 while frozen). Read at epoch
end instead, a linear decay reads 0 in the last epoch, and a group that gradual unfreezing opened in that epoch would
look as if it never trained.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from strategies import FreezeController, LayerMap, Strategy, frozen_prefix_depth
from sweeps.metrics import classification_metrics, is_better
from sweeps.phases import EVALUATION, TRAINING, timed
from sweeps.train.forward import DirectForward, ForwardRunner
from sweeps.train.memory import PeakMemory

log = logging.getLogger("sweeps.train.progress")


class TrialDiverged(RuntimeError):
    """The loss became NaN/inf or exploded: the trial is failed with this reason, the study goes on."""


@dataclass
class LoopConfig:
    epochs: int = 3
    batch_size: int = 32
    eval_batch_size: int = 64
    grad_accum_steps: int = 1
    max_grad_norm: float | None = 1.0
    scheduler: str = "linear"
    warmup_ratio: float = 0.0
    precision: str = "fp32"
    seed: int = 42
    early_stopping_patience: int | None = None
    metric: str = "accuracy"
    divergence_factor: float = 10.0
    group_by_length: bool = False
    progress_interval_s: float = 30.0  # progress lines without a terminal: at most one per this many seconds


@dataclass
class EpochResult:
    epoch: int
    metrics: dict[str, float]
    learning_rates: dict[str, float]
    plan_changed: bool = False
    schedule_complete: bool = True  # the strategy's plan no longer changes from this epoch on (fair to prune)
    last: bool = False  # the run's final epoch: stopping now saves nothing


class EpochObserver(Protocol):
    """Receives each finished epoch; returns a reason to stop the run, or ``None`` to go on."""

    def on_epoch(self, result: EpochResult) -> str | None: ...


@dataclass
class LoopResult:
    epochs: list[EpochResult] = field(default_factory=list)
    best_epoch: int = -1
    eval_probs: np.ndarray | None = None  # probabilities of the best epoch, eval split order
    eval_labels: np.ndarray | None = None
    stopped_early: bool = False
    stop_reason: str | None = None  # the observer's reason when it stopped the run


def schedule_end_epoch(strategy: Strategy, layer_map: LayerMap, steps_per_epoch: int) -> int:
    """The first epoch from which ``strategy``'s plan no longer changes.

    ``schedule_end`` answers in epochs; a step-wise schedule (``unit: step``) cannot, because only the trial knows its
    steps per epoch, so its ``final_clock`` (the optimizer step of the last change) is converted here. Without this,
    ``schedule_end`` says 0 for step schedules and a ``unit: step`` gradual trial could be pruned from epoch 1.
    """
    parts = getattr(strategy, "parts", None) or (strategy,)  # a composite: each part's own schedule
    end = 0
    for part in parts:
        final_clock = getattr(part, "final_clock", None)
        if part.stepwise and final_clock is not None:
            end = max(end, math.ceil(final_clock(layer_map) / max(steps_per_epoch, 1)))
        else:
            end = max(end, part.schedule_end(layer_map))
    return end


CUDA_LOSS_SYNC_STEPS = 32


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """bf16/fp16 autocast on CUDA (bf16 also on CPU); fp32 is a no-op."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision not in ("bf16", "fp16"):  # "auto" is resolved for the device first (train.context.resolve_precision)
        raise ValueError(f"training.precision: {precision!r} is not a compute precision (fp32, bf16, fp16)")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    if device.type == "cpu" and dtype is torch.float16:
        raise ValueError("training.precision: fp16 needs CUDA; use bf16 or fp32 on CPU")
    return torch.autocast(device_type=device.type, dtype=dtype)


class ScheduleFactor:
    """The LR factor of a transformers schedule (linear, cosine, ...), read from a one-parameter dummy optimizer.

    torch schedulers remember the LRs of the groups that existed when they were built; groups added by an unfreeze
    would be left out. Reading the factor and applying it to every group (``FreezeController.set_lr_factor``) keeps
    warmup and decay working for every group, with its own multiplier, whenever it was added.
    """

    def __init__(self, name: str, warmup_steps: int, total_steps: int) -> None:
        from transformers import get_scheduler

        self._param = nn.Parameter(torch.zeros(1))
        self._optimizer = torch.optim.SGD([self._param], lr=1.0)
        self._scheduler = get_scheduler(
            name, self._optimizer, num_warmup_steps=warmup_steps, num_training_steps=max(total_steps, 1)
        )

    @property
    def factor(self) -> float:
        return float(self._optimizer.param_groups[0]["lr"])

    def step(self) -> None:
        self._optimizer.step()  # no gradient: a no-op that keeps torch's "step before scheduler" check quiet
        self._scheduler.step()


def _progress(loader: DataLoader, desc: str, interval_s: float) -> Any:
    """A tqdm bar on an interactive terminal; elsewhere (nohup, Docker, CI logs) a progress line at most every
    ``interval_s`` seconds, so a long epoch is not minutes of silence. Nothing when ``--quiet``."""
    import sys

    if log.getEffectiveLevel() > logging.INFO:
        return loader
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(loader, desc=desc, leave=False, unit="batch", dynamic_ncols=True)
    return _progress_lines(loader, desc, interval_s)


def _progress_lines(loader: DataLoader, desc: str, interval_s: float) -> Iterator[Any]:
    """Yield the loader's batches, logging "batches done/total, samples/s, ETA" at a bounded interval."""
    total = len(loader)
    start = last = time.perf_counter()
    seen = 0
    for i, batch in enumerate(loader, start=1):
        yield batch
        labels = batch.get("labels") if isinstance(batch, dict) else None
        seen += int(labels.shape[0]) if labels is not None else 0
        now = time.perf_counter()
        if now - last >= interval_s and i < total:
            last = now
            elapsed = now - start
            eta = elapsed / i * (total - i)
            log.info("  %s: batch %d/%d, %.1f samples/s, ETA %s", desc, i, total, seen / elapsed if elapsed else 0.0,
                     _duration(eta))


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class TrainingLoop:
    """One fine-tuning run: ``strategy`` decides the plan, ``controller`` applies it, ``runner`` does forwards."""

    def __init__(
        self,
        model: nn.Module,
        layer_map: LayerMap,
        strategy: Strategy,
        controller: FreezeController,
        train_loader: DataLoader,
        eval_loader: DataLoader,
        config: LoopConfig,
        device: torch.device,
        *,
        runner: ForwardRunner | None = None,
        memory: PeakMemory | None = None,
        observer: EpochObserver | None = None,
        eval_order: np.ndarray | None = None,
    ) -> None:
        """``eval_order``: the eval split's index of each row ``eval_loader`` yields, when it does not yield them in
        split order (batches of similar lengths, :func:`sweeps.train.trial.eval_order`); results come back in split
        order either way."""
        self.model = model
        self.layer_map = layer_map
        self.strategy = strategy
        self.controller = controller
        self.train_loader = train_loader
        self.eval_loader = eval_loader
        self.config = config
        self.device = device
        self.runner = runner or DirectForward()
        self.memory = memory or PeakMemory(device)
        self.observer = observer
        self.eval_order = eval_order
        self.global_step = 0
        self._lr_sums: dict[str, float] = {}
        self._lr_steps = 0
        self.scaler = torch.amp.GradScaler("cuda") if config.precision == "fp16" and device.type == "cuda" else None
        # a loss read on the host (``.item()``) waits for the GPU to finish the step: on CUDA the losses are read in
        # blocks, so the device runs ahead; on CPU reading is free and a divergence is caught at its own batch
        self.loss_sync_steps = CUDA_LOSS_SYNC_STEPS if device.type == "cuda" else 1

    # -- plan -----------------------------------------------------------------------------------------------------
    def _apply_plan(self, epoch: int) -> bool:
        changed = self.controller.apply(self.strategy.plan(self.layer_map, epoch, self.global_step))
        if changed:
            assert self.controller.plan is not None
            self.runner.set_prefix_depth(frozen_prefix_depth(self.controller.plan, self.layer_map))
        return changed

    # -- run ------------------------------------------------------------------------------------------------------
    def run(self) -> LoopResult:
        cfg = self.config
        steps_per_epoch = math.ceil(len(self.train_loader) / cfg.grad_accum_steps)
        total_steps = steps_per_epoch * cfg.epochs
        schedule = ScheduleFactor(cfg.scheduler, int(cfg.warmup_ratio * total_steps), total_steps)
        schedule_end = schedule_end_epoch(self.strategy, self.layer_map, steps_per_epoch)
        result = LoopResult()
        best_value: float | None = None
        stale_epochs = 0
        first_losses: list[float] = []
        for epoch in range(cfg.epochs):
            changed = self._apply_plan(epoch)
            self.controller.set_lr_factor(schedule.factor)
            with timed(TRAINING):
                train_loss, train_time, seen = self._train_epoch(epoch, schedule, first_losses)
            with timed(EVALUATION):
                eval_metrics, probs, labels, eval_time = self.evaluate()
            metrics = {
                "train_loss": train_loss,
                **eval_metrics,
                "epoch_time_s": train_time,
                "eval_time_s": eval_time,
                "samples_per_s": seen / train_time if train_time > 0 else float("nan"),
                "peak_memory_mb": self.memory.peak_mb(),
                "trainable_params": float(self.controller.trainable_params()),
            }
            epoch_result = EpochResult(
                epoch, metrics, self._epoch_learning_rates(), changed, schedule_complete=epoch >= schedule_end,
                last=epoch == cfg.epochs - 1,
            )
            result.epochs.append(epoch_result)
            value = metrics[cfg.metric]
            if best_value is None or is_better(cfg.metric, value, best_value):
                best_value, result.best_epoch, stale_epochs = value, epoch, 0
                result.eval_probs, result.eval_labels = probs, labels
            else:
                stale_epochs += 1
            if self.observer is not None:
                result.stop_reason = self.observer.on_epoch(epoch_result)
                if result.stop_reason is not None:
                    break
            if cfg.early_stopping_patience is not None and stale_epochs > cfg.early_stopping_patience:
                result.stopped_early = True
                break
        return result

    def _epoch_learning_rates(self) -> dict[str, float]:
        """Mean LR per group over this epoch's optimizer steps (the current LRs when the epoch took no step)."""
        if not self._lr_steps:
            return self.controller.learning_rates()
        return {name: total / self._lr_steps for name, total in self._lr_sums.items()}

    def _record_learning_rates(self) -> None:
        """Add the LRs the coming optimizer step uses; groups not in the optimizer (frozen) add 0."""
        for name, lr in self.controller.learning_rates().items():
            self._lr_sums[name] = self._lr_sums.get(name, 0.0) + lr
        self._lr_steps += 1

    def _trainable(self) -> list[nn.Parameter]:
        assert self.controller.optimizer is not None
        return [p for g in self.controller.optimizer.param_groups for p in g["params"]]

    def _train_epoch(self, epoch: int, schedule: ScheduleFactor, first_losses: list[float]) -> tuple[float, float, int]:
        cfg = self.config
        self.controller.train_mode()
        optimizer = self.controller.optimizer
        assert optimizer is not None
        optimizer.zero_grad(set_to_none=True)
        self._lr_sums, self._lr_steps = {}, 0
        loss_sum, batches, seen = 0.0, 0, 0
        n_batches = len(self.train_loader)
        start = time.perf_counter()
        batches_iter = _progress(self.train_loader, f"epoch {epoch + 1}/{cfg.epochs}", cfg.progress_interval_s)
        pending: list[tuple[int, torch.Tensor]] = []  # (batch, loss) not yet read on the host
        for i, batch in enumerate(batches_iter):
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            with autocast_context(self.device, cfg.precision):
                logits = self.runner.logits(self.model, batch, "train")
                loss = nn.functional.cross_entropy(logits.float(), batch["labels"])
            pending.append((i, loss.detach()))
            if len(pending) >= self.loss_sync_steps or i + 1 == n_batches:
                loss_sum += self._check_losses(pending, epoch, first_losses)
                pending = []
            scaled = loss / cfg.grad_accum_steps
            if self.scaler is not None:
                self.scaler.scale(scaled).backward()
            else:
                scaled.backward()
            batches += 1
            seen += int(batch["labels"].shape[0])
            if (i + 1) % cfg.grad_accum_steps == 0 or i + 1 == n_batches:
                self._optimizer_step(schedule)
                optimizer = self.controller.optimizer
                if self.strategy.stepwise and self._apply_plan(epoch):
                    self.controller.train_mode()
                    self.controller.set_lr_factor(schedule.factor)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return loss_sum / max(batches, 1), time.perf_counter() - start, seen

    def _check_losses(self, pending: list[tuple[int, torch.Tensor]], epoch: int, first_losses: list[float]) -> float:
        """Read a block of losses with one host-device sync, check each at its own batch; returns their sum."""
        values = torch.stack([loss for _, loss in pending]).tolist()
        for (step, _), value in zip(pending, values, strict=True):
            self._check_loss(value, epoch, step, first_losses)
        return float(sum(values))

    def _check_loss(self, value: float, epoch: int, step: int, first_losses: list[float]) -> None:
        """NaN/inf is caught at the step it happens, not at the end of the epoch; so is an exploding loss."""
        if not math.isfinite(value):
            raise TrialDiverged(f"loss is {value} at epoch {epoch} batch {step}")
        if len(first_losses) < 10:
            first_losses.append(value)
            return
        reference = sum(first_losses) / len(first_losses)
        if self.config.divergence_factor and value > self.config.divergence_factor * max(reference, 1e-3):
            raise TrialDiverged(
                f"loss diverged: {value:.4g} at epoch {epoch} batch {step} is more than "
                f"{self.config.divergence_factor}× the first batches' mean {reference:.4g}"
            )

    def _optimizer_step(self, schedule: ScheduleFactor) -> None:
        cfg = self.config
        optimizer = self.controller.optimizer
        assert optimizer is not None
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        self._record_learning_rates()
        if cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self._trainable(), cfg.max_grad_norm)
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
        self.controller.set_lr_factor(schedule.factor)
        self.global_step += 1

    @torch.inference_mode()
    def evaluate(self) -> tuple[dict[str, float], np.ndarray, np.ndarray, float]:
        """Eval loss and metrics over the eval loader; returns (metrics, probabilities, labels, seconds)."""
        self.controller.eval_mode()
        start = time.perf_counter()
        all_logits, all_labels = [], []
        for batch in self.eval_loader:
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            with autocast_context(self.device, self.config.precision):
                logits = self.runner.logits(self.model, batch, "eval")
            all_logits.append(logits.float().cpu())
            all_labels.append(batch["labels"].cpu())
        logits = torch.cat(all_logits)
        labels = torch.cat(all_labels)
        eval_loss = float(nn.functional.cross_entropy(logits, labels))
        probs = torch.softmax(logits, dim=-1).numpy()
        labels_np = labels.numpy()
        if self.eval_order is not None:  # back to split order: the rows are matched to example ids by position
            probs[self.eval_order], labels_np[self.eval_order] = probs.copy(), labels_np.copy()
        metrics = classification_metrics(labels_np, probs.argmax(-1), probs.shape[1])
        metrics["eval_loss"] = eval_loss
        return metrics, probs, labels_np, time.perf_counter() - start
