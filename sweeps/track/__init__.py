"""MLflow tracking: one parent run per study, one nested run per trial, addressed by run id (see
:mod:`sweeps.track.tracker`). Only the study side logs; the training loop never sees a tracker."""

from sweeps.track.tracker import Tracker

__all__ = ["Tracker"]
