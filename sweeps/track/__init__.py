"""MLflow tracking: one parent run per study, one nested run per trial, addressed by run id (see
:mod:`sweeps.track.tracker`). Only the study side logs; the training loop never sees a tracker."""

from sweeps.track.tracker import PARENT_ATTR, RUN_ATTR, Tracker, default_tracking_uri

__all__ = ["PARENT_ATTR", "RUN_ATTR", "Tracker", "default_tracking_uri"]
