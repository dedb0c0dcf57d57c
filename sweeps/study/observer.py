"""The study side of a running trial: what happens with each epoch (or fold) the trial reports.

The training loop hands every finished epoch to the observer it was given and goes on unless the observer returns a
reason to stop. Everything that involves the outside world happens here, on the study side: the epoch's metrics go to
MLflow, a progress line is printed, and the optimised metric is reported to Optuna, whose pruner decides. The loop
never raises ``optuna.TrialPruned`` and never sees a tracker; the runner records a stopped trial as pruned.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import optuna

from sweeps.config import StudySpec
from sweeps.study.confirm import is_confirmation
from sweeps.track import Tracker

if TYPE_CHECKING:
    from sweeps.train import EpochResult


class PruningObserver:
    """Logs each epoch of trial ``trial`` to its MLflow run and asks Optuna's pruner whether to stop.

    Pruning is fair only once the strategy's plan is final (``EpochResult.schedule_complete``: gradual unfreezing is
    not judged while its lower layers are still frozen), and Optuna cannot prune multi-objective studies. A
    confirmation trial (a finalist retrained with another seed) is never pruned: its seeds' mean ± std is the noise
    estimate, and pruning the unlucky seeds would report only the lucky ones. With cross-validation the pruner sees
    the running mean after each fold instead of epochs. The last epoch (or fold) is reported but never pruned:
    stopping then saves no time and would only throw away a finished result (gradual trials, judged only once their
    schedule completes on the last epoch, were recorded as pruned after training to the end).
    """

    def __init__(
        self, trial: optuna.Trial, spec: StudySpec, tracker: Tracker, run_id: str | None, say: Callable[[str], None]
    ) -> None:
        self.trial = trial
        self.spec = spec
        self.tracker = tracker
        self.run_id = run_id
        self.say = say
        self.metric = spec.task.metric
        self.can_prune = not spec.multi_objective and not is_confirmation(trial)
        self.epochs: list[EpochResult] = []  # what ran, also when the trial is stopped (the report's curves)

    def on_epoch(self, result: EpochResult) -> str | None:
        self.epochs.append(result)
        lrs = {f"lr/{name}": lr for name, lr in result.learning_rates.items()}
        self.tracker.log_metrics(self.run_id, {**result.metrics, **lrs}, step=result.epoch)
        m = result.metrics
        self.say(
            f"  trial {self.trial.number} epoch {result.epoch + 1}/{self.spec.training.epochs}: "
            f"{self.metric}={m[self.metric]:.4f} train_loss={m['train_loss']:.4f} "
            f"epoch_time={m['epoch_time_s']:.1f}s peak_mem={m['peak_memory_mb']:.0f}MB"
        )
        if not self.can_prune or not result.schedule_complete:
            return None
        value = m[self.metric]
        self.trial.report(value, step=result.epoch)
        if not result.last and self.trial.should_prune():
            return f"pruned at epoch {result.epoch + 1}: {self.metric}={value:.4f}"
        return None

    def on_fold(self, fold: int, running: dict[str, float]) -> str | None:
        self.tracker.log_metrics(self.run_id, {f"cv/{k}": v for k, v in running.items()}, step=fold)
        value = running[self.metric]
        self.say(
            f"  trial {self.trial.number} fold {fold + 1}/{self.spec.task.cv.folds}: mean {self.metric}={value:.4f}"
        )
        if not self.can_prune:
            return None
        self.trial.report(value, step=fold)
        if fold + 1 < self.spec.task.cv.folds and self.trial.should_prune():
            return f"pruned after fold {fold + 1}: mean {self.metric}={value:.4f}"
        return None
