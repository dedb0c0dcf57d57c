"""Training one trial: the study-wide context, the trial (model, layer map, strategy, optimizer), the loop, the forward
runner seam and peak-memory measurement.

Data flows one way: the loop reports each epoch to an observer it is given and returns; it knows nothing of Optuna or
MLflow.
"""

from sweeps.train.context import StudyContext, layer_spec, resolve_device
from sweeps.train.heap import frozen_heap, release_memory
from sweeps.train.loop import EpochObserver, EpochResult, LoopConfig, LoopResult, TrainingLoop, TrialDiverged
from sweeps.train.trial import (
    Stopped,
    TrialObserver,
    TrialOutcome,
    check_strategy,
    run_trial,
    train_once,
)

__all__ = [
    "EpochObserver",
    "EpochResult",
    "LoopConfig",
    "LoopResult",
    "Stopped",
    "StudyContext",
    "TrainingLoop",
    "TrialDiverged",
    "TrialObserver",
    "TrialOutcome",
    "check_strategy",
    "frozen_heap",
    "layer_spec",
    "release_memory",
    "resolve_device",
    "run_trial",
    "train_once",
]
