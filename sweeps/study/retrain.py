"""Any completed trial's model on demand (``predict --trial N``), without keeping every trial's model on disk.

The runner keeps only the best trial's model: one checkpoint per trial would fill the disk of a long study with a
large model. Any other completed trial can be trained again exactly, because everything it trained with is recorded:
its sampled parameters (Optuna), its seed (the ``seed`` attribute, which differs from ``training.seed`` for a
confirmation trial) and, from the study file, the data and every fixed setting. :func:`ensure_trial_model` refuses
when the study file no longer describes that configuration (a different comparability fingerprint, or a different
config key: the hash of strategy, parameters and the whole training section), retrains it into
``<out>/models/trial_<n>/`` and compares the validation metrics with the recorded ones: a difference beyond float
noise is a warning, since the predictions then come from a model that is not quite the one the study measured.

Nothing is recorded in Optuna or MLflow: a retrain is not a trial, and the study's results must not change because
someone asked for predictions.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweeps.config import StudySpec
from sweeps.errors import SweepsError
from sweeps.metrics import QUALITY_METRICS
from sweeps.predict import has_saved_model
from sweeps.records import StudyAttr, TrialAttr, models_dir, trial_metrics, trial_model_dir
from sweeps.study.storage import lock_file_target, open_storage, storage_url
from sweeps.study.suggest import TrialParams, suggest

if TYPE_CHECKING:
    from sweeps.train import EpochResult

log = logging.getLogger(__name__)

__all__ = ["Retrained", "ensure_trial_model", "trial_for_prediction"]

REL_TOLERANCE = 1e-5  # float noise between two runs of the same kernels (summation order, threads)
ABS_TOLERANCE = 1e-6


@dataclass
class Retrained:
    """A trial trained again: its metrics now and as recorded; ``differs`` names the quality metrics that moved
    beyond float noise."""

    trial: int
    seed: int
    seconds: float
    metrics: dict[str, float]
    recorded: dict[str, float]
    differs: list[str] = field(default_factory=list)


def _load_study(spec: StudySpec, out: Path) -> optuna.Study:
    """The study, read-only in spirit: loaded, never created (a typo'd folder must not become a new study)."""
    if not out.is_dir():
        raise SweepsError(f"study folder {out} does not exist: run the study first (python -m sweeps run <study.yaml>)")
    name = spec.optuna.study_name
    database = lock_file_target(storage_url(spec))
    if database is not None and not database.is_file():  # opening it would create an empty one
        raise SweepsError(f"no study storage at {database}: run the study first (python -m sweeps run <study.yaml>)")
    try:
        study = optuna.load_study(study_name=name, storage=open_storage(spec))
    except KeyError:
        raise SweepsError(
            f"no study {name!r} in its storage: run it first (python -m sweeps run <study.yaml>)"
        ) from None
    recorded = study.user_attrs.get(StudyAttr.FINGERPRINT)
    if recorded is not None and recorded != spec.fingerprint():
        raise SweepsError(
            f"study {name!r} was run with another model/data/metric than the study file now describes (its "
            "fingerprint differs): a retrained trial would not be the trial the study measured; restore the study file"
        )
    return study


def trial_for_prediction(study: optuna.Study, number: int) -> FrozenTrial:
    """Trial ``number`` if it can predict: completed (a duplicate stands for the trial it repeated, which is the
    one that trained). Anything else is a :class:`SweepsError` naming the trial's state."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get(TrialAttr.SURPLUS)}
    complete = [n for n, t in trials.items() if t.state == TrialState.COMPLETE]
    hint = f"completed trials: {', '.join(map(str, complete))}" if complete else "no trial has completed yet"
    if number not in trials:
        known = f"0..{max(trials)}" if trials else "none"
        raise SweepsError(f"study {study.study_name!r} has no trial {number} (trials: {known}; {hint})")
    trial = trials[number]
    if trial.state != TrialState.COMPLETE:
        reason = trial.user_attrs.get(TrialAttr.FAIL_REASON)
        detail = f": {reason}" if reason else ""
        state = _state_words(trial.state)
        raise SweepsError(f"trial {number} {state}{detail}; it has no model to predict with ({hint})")
    original = trial.user_attrs.get(TrialAttr.DUPLICATE_OF)
    if original is not None and int(original) in trials:
        log.info("trial %d repeated trial %s's configuration (not trained again): using trial %s", number,
                 original, original)
        return trials[int(original)]
    return trial


def _state_words(state: TrialState) -> str:
    return {
        TrialState.PRUNED: "was pruned",
        TrialState.FAIL: "failed",
        TrialState.RUNNING: "is still running",
        TrialState.WAITING: "is waiting (not started)",
    }.get(state, f"is {state.name.lower()}")


def _params_of(spec: StudySpec, trial: FrozenTrial) -> TrialParams:
    """The configuration trial ``trial`` trained with, rebuilt from the study file and its recorded parameters."""
    params = suggest(optuna.trial.FixedTrial(dict(trial.params), trial.number), spec)
    seed = trial.user_attrs.get(TrialAttr.SEED)
    if seed is not None:
        params.training = params.training.model_copy(update={"seed": int(seed)})
    if params.training.precision == "auto":  # as it ran, on whatever machine retrains it (fp32: trials older than auto)
        ran_at = str(trial.user_attrs.get(TrialAttr.PRECISION, "fp32"))
        params.training = params.training.model_copy(update={"precision": ran_at})
    recorded = trial.user_attrs.get(TrialAttr.CONFIG_KEY)
    if recorded is not None and recorded != params.config_key():
        raise SweepsError(
            f"trial {trial.number}'s configuration is no longer what the study file describes (a training setting "
            f"or the strategy's parameters changed since it ran): its model cannot be retrained as it was; restore "
            "the study file, or predict with the best trial"
        )
    return params


class _Progress:
    """Epoch and fold lines while a trial is retrained; never stops it (a retrain is not judged by the pruner)."""

    def __init__(self, number: int, say: Callable[[str], None]) -> None:
        self.number, self.say = number, say

    def on_epoch(self, result: EpochResult) -> str | None:
        metrics = " ".join(f"{k}={result.metrics[k]:.4f}" for k in ("accuracy", "f1_macro") if k in result.metrics)
        self.say(f"  retraining trial {self.number}: epoch {result.epoch + 1}: {metrics}")
        return None

    def on_fold(self, fold: int, running: dict[str, float]) -> str | None:
        self.say(f"  retraining trial {self.number}: fold {fold + 1} done")
        return None


def _differences(metrics: dict[str, float], recorded: dict[str, float]) -> list[str]:
    names = [m for m in QUALITY_METRICS if m in metrics and isinstance(recorded.get(m), (int, float))]
    return [
        m for m in names
        if not math.isclose(metrics[m], float(recorded[m]), rel_tol=REL_TOLERANCE, abs_tol=ABS_TOLERANCE)
    ]


def retrain(spec: StudySpec, out: Path, trial: FrozenTrial, say: Callable[[str], None]) -> Retrained:
    """Train trial ``trial``'s configuration again and save its model to ``<out>/models/trial_<n>/``."""
    from sweeps.train import Stopped, StudyContext, run_trial

    params = _params_of(spec, trial)
    seed = params.training.seed
    took = trial.duration.total_seconds() if trial.duration is not None else None
    estimate = f": ~{took:.0f} s" if took is not None else ""
    say(f"trial {trial.number}'s model was not kept; retraining its configuration ({params.strategy}, seed {seed})"
        f"{estimate}")
    ctx = StudyContext.prepare(spec, out)
    staging = models_dir(out) / f".retrain_trial_{trial.number}_{os.getpid()}"
    target = trial_model_dir(out, trial.number)
    shutil.rmtree(staging, ignore_errors=True)
    start = time.monotonic()
    try:
        outcome = run_trial(ctx, params.strategy, params.strategy_params, params.training,
                            observer=_Progress(trial.number, say), model_dir=staging, head=params.head)
        if isinstance(outcome, Stopped):  # only an observer stops a trial, and this one never does
            raise SweepsError(f"retraining trial {trial.number} stopped: {outcome.reason}")
        if not has_saved_model(target):  # another process may have saved it meanwhile: then keep theirs
            shutil.rmtree(target, ignore_errors=True)
            os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    recorded = {k: float(v) for k, v in trial_metrics(trial.user_attrs).items() if isinstance(v, (int, float))}
    result = Retrained(trial.number, seed, time.monotonic() - start, dict(outcome.metrics), recorded)
    result.differs = _differences(result.metrics, recorded)
    metric = spec.task.metric
    now = f"{metric}={result.metrics[metric]:.4f}"
    if result.differs:
        moved = ", ".join(f"{m} {result.metrics[m]:.6g} (recorded {recorded[m]:.6g})" for m in result.differs)
        log.warning(
            "warning: trial %d retrained, but its validation metrics differ from the recorded ones: %s. The "
            "predictions come from a model close to, not identical with, the one the study measured "
            "(nondeterministic kernels, another library version or a changed data file)", trial.number, moved,
        )
    else:
        say(f"trial {trial.number} retrained in {result.seconds:.0f} s: {now}, as recorded; saved to {target}")
    return result


def ensure_trial_model(
    spec: StudySpec, out: Path, number: int, say: Callable[[str], None] | None = None
) -> int:
    """The number of the trial whose saved model predicts for trial ``number`` (itself, or for a duplicate the trial
    it repeated), retraining it first when its model was not kept. Errors name the state of a trial that cannot
    predict (pruned, failed, running, unknown)."""
    say = say or log.info
    out = Path(out)
    if has_saved_model(trial_model_dir(out, number)):  # kept (the best) or retrained before: the study is not needed
        return number
    study = _load_study(spec, out)
    trial = trial_for_prediction(study, number)
    if not has_saved_model(trial_model_dir(out, trial.number)):
        retrain(spec, out, trial, say)
    return trial.number
