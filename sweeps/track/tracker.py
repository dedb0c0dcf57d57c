"""MLflow tracking: one parent run per study, one nested run per trial.

Everything goes through an explicit :class:`mlflow.tracking.MlflowClient` and run ids, never through MLflow's
process-global "active run": several workers, resumed studies and a killed trial's cleanup all need to address runs by
id. The parent run id is stored in the Optuna study (user attribute ``mlflow_parent_run_id``) so every worker and every
resume logs under the same parent.

Metric names are a contract (see README): ``accuracy``, ``f1_macro``, ``f1_weighted``, ``eval_loss``, ``train_loss``,
``epoch_time_s``, ``eval_time_s``, ``samples_per_s``, ``peak_memory_mb``, ``trainable_params``, ``lr/<group>``; per
epoch with ``step = epoch``, and the trial's final values under the same names at the last step (no ``final/<name>``
copies: a dozen single-bar charts buried the per-epoch series that are a trial run's main charts). The parent run
carries the best trial's metrics under the same names (``step`` = completed trials so far), so the experiment's chart
view compares studies without expanding them; its number, strategy and parameters are tags ``sweeps.best.*``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from sweeps.config import mask_secrets
from sweeps.errors import SweepsError
from sweeps.phases import TRACKING, timed
from sweeps.records import StudyAttr, Tag

log = logging.getLogger(__name__)

_Method = TypeVar("_Method", bound=Callable[..., Any])


def _timed(method: _Method) -> _Method:
    """Count the call as the ``tracking`` phase (:mod:`sweeps.phases`): what MLflow costs a study is measured."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with timed(TRACKING):
            return method(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = str(value)[:6000]


class Tracker:
    """Thin, explicit wrapper over ``MlflowClient`` for the study's runs. ``enabled=False`` makes every call a no-op."""

    def __init__(
        self,
        uri: str,
        experiment: str,
        artifact_root: Path | None = None,
        enabled: bool = True,
        setup_lock: contextlib.AbstractContextManager[Any] | None = None,
    ) -> None:
        """``setup_lock``: held while MLflow creates (migrates) its store and the experiment. Two processes starting
        together on a blank ``mlflow.db`` both ran MLflow's schema migrations and one died with alembic's "Online
        migration expected to match one row ... 0 found"; the study passes a lock shared by every process using
        the store."""
        self.uri = uri
        self.enabled = enabled
        self.experiment_name = experiment
        self.experiment_id: str | None = None
        if not enabled:
            return
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        with setup_lock or contextlib.nullcontext():
            self._open(uri, experiment, artifact_root)

    def _open(self, uri: str, experiment: str, artifact_root: Path | None) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        try:
            found = self.client.get_experiment_by_name(experiment)
            if found is None:
                location = artifact_root.resolve().as_uri() if artifact_root and not uri.startswith("http") else None
                try:
                    self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)
                except Exception:
                    found = self.client.get_experiment_by_name(experiment)
                    if found is None:
                        raise
                    self.experiment_id = found.experiment_id
            else:
                self.experiment_id = found.experiment_id
        except Exception as exc:
            raise SweepsError(
                f"tracking.uri: cannot use MLflow tracking at {mask_secrets(uri)}: {mask_secrets(str(exc))}"
            ) from exc

    # -- runs ---------------------------------------------------------------------------------------------------
    @_timed
    def parent_run(self, study: Any, run_name: str, tags: Mapping[str, str]) -> str | None:
        """The study's parent run: reused from the study's attributes, created on first use."""
        if not self.enabled:
            return None
        run_id = study.user_attrs.get(StudyAttr.MLFLOW_PARENT)
        if run_id:
            try:
                run = self.client.get_run(run_id)
                if run.info.lifecycle_stage == "active":
                    if run.info.status != "RUNNING":
                        self.client.update_run(run_id, status="RUNNING")
                    return run_id
            except Exception:
                log.warning("parent run %s not found in %s; creating a new one", run_id, self.uri)
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags={**tags, Tag.ROLE: "study"})
        study.set_user_attr(StudyAttr.MLFLOW_PARENT, run.info.run_id)
        return run.info.run_id

    @_timed
    def start_trial(
        self, parent_id: str | None, run_name: str, tags: Mapping[str, str], params: Mapping[str, Any]
    ) -> str | None:
        if not self.enabled:
            return None
        all_tags = {**tags, Tag.ROLE: "trial"}
        if parent_id:
            all_tags[Tag.PARENT_RUN] = parent_id
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=all_tags)
        flat: dict[str, str] = {}
        _flatten("", params, flat)
        self.log_params(run.info.run_id, flat)
        return run.info.run_id

    @_timed
    def log_params(self, run_id: str | None, params: Mapping[str, str]) -> None:
        if not self.enabled or run_id is None:
            return
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i : i + 100])

    @_timed
    def log_metrics(self, run_id: str | None, metrics: Mapping[str, float], step: int) -> None:
        if not self.enabled or run_id is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None and math.isfinite(float(v))
        ]
        for i in range(0, len(items), 500):
            self.client.log_batch(run_id, metrics=items[i : i + 500])

    @_timed
    def set_tags(self, run_id: str | None, tags: Mapping[str, Any]) -> None:
        if not self.enabled or run_id is None:
            return
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])

    @_timed
    def end_run(self, run_id: str | None, status: str) -> None:
        """``status``: FINISHED, FAILED or KILLED (MLflow's run statuses)."""
        if not self.enabled or run_id is None:
            return
        self.client.set_terminated(run_id, status=status)

    @_timed
    def log_best(
        self, parent_id: str | None, number: int, strategy: str, params: Mapping[str, Any],
        metrics: Mapping[str, float], step: int,
    ) -> None:
        """The best trial so far on the parent run: metrics under their own names plus ``best_trial``, and tags.
        Tags, not params, because MLflow params are immutable and the best trial changes as trials finish."""
        if not self.enabled or parent_id is None:
            return
        self.log_metrics(parent_id, {**metrics, "best_trial": float(number)}, step=step)
        from sweeps.records import Tag

        tags = {Tag.BEST_PREFIX + "trial": number, Tag.BEST_PREFIX + "strategy": strategy}
        tags.update({f"{Tag.BEST_PREFIX}param.{k}": v for k, v in params.items()})
        self.set_tags(parent_id, tags)

    @_timed
    def log_transformers_model(self, run_id: str | None, model_dir: Path, name: str = "model") -> str | None:
        """Log a saved classifier with MLflow's ``transformers`` flavour (a text-classification pipeline), so it is a
        Logged Model of the run: registrable, loadable with ``mlflow.pyfunc.load_model`` and servable with ``mlflow
        models serve``. The path form of ``log_model`` fails under transformers 5, hence the pipeline. ``log_model``
        only knows the fluent active run, so the run is resumed for the call and the tracking URI restored after."""
        if not self.enabled or run_id is None:
            return None
        import mlflow
        import torch
        import transformers

        pipe = transformers.pipeline("text-classification", model=str(model_dir), tokenizer=str(model_dir))
        requirements = [f"transformers=={transformers.__version__}", f"torch=={torch.__version__.split('+')[0]}"]
        previous = mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(self.uri)
        flavour_log = logging.getLogger("mlflow.transformers")
        level = flavour_log.level
        flavour_log.setLevel(logging.ERROR)  # "model card not on the Hub": a local fine-tune has none, by design
        try:
            with mlflow.start_run(run_id=run_id):
                info = mlflow.transformers.log_model(
                    transformers_model=pipe, name=name, task="text-classification", pip_requirements=requirements
                )
        finally:
            flavour_log.setLevel(level)
            mlflow.set_tracking_uri(previous)
        return info.model_uri

    # -- artifacts ------------------------------------------------------------------------------------------------
    @_timed
    def log_text(self, run_id: str | None, text: str, artifact_file: str) -> None:
        if not self.enabled or run_id is None:
            return
        self.client.log_text(run_id, text, artifact_file)

    def log_json(self, run_id: str | None, obj: Any, artifact_file: str) -> None:
        self.log_text(run_id, json.dumps(obj, indent=2, default=str), artifact_file)

    @_timed
    def log_file(self, run_id: str | None, path: Path, artifact_path: str | None = None) -> None:
        if not self.enabled or run_id is None:
            return
        self.client.log_artifact(run_id, str(path), artifact_path)

    @_timed
    def log_dir(self, run_id: str | None, path: Path, artifact_path: str | None = None) -> None:
        if not self.enabled or run_id is None:
            return
        self.client.log_artifacts(run_id, str(path), artifact_path)
