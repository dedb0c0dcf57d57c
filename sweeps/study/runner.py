"""The trial loop of one process: ask a trial, run it, record how it ended in Optuna and MLflow.

Trials are driven with Optuna's ask-and-tell interface rather than ``study.optimize`` because every way a
trial can end must be recorded in *both* Optuna and MLflow: complete, pruned, failed with a reason (NaN
loss, out of memory, bad hyperparameters), interrupted by Ctrl-C, or left behind by a worker that was
killed. Nothing here schedules work between workers: they share the study through its storage.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState

from sweeps.errors import SpecError, SweepsError
from sweeps.study.recovery import HOST, _heartbeat, budget_used, counts_toward_budget, recover_dead_trials
from sweeps.study.sampling import objectives
from sweeps.study.storage import database_url, open_study, storage_lock, storage_url
from sweeps.track import RUN_ATTR, Tracker, default_tracking_uri

log = logging.getLogger(__name__)


@dataclass
class TrialReport:
    number: int
    state: str
    strategy: str
    values: list[float] | None
    metrics: dict[str, float] = field(default_factory=dict)
    reason: str = ""


class StudyRunner:
    """Runs trials of one study in this process until the budget (``n_trials``/``timeout``) is used up."""

    def __init__(
        self, spec: Any, output: Path, *, dataframe: Any = None, progress: Callable[[str], None] | None = None
    ) -> None:
        self.spec = spec
        self.output = output
        self.output.mkdir(parents=True, exist_ok=True)
        self.dataframe = dataframe
        self.say = progress or (lambda msg: log.info(msg))
        self.study = open_study(spec, output)
        self.tracker = Tracker(
            database_url(spec.tracking.uri) if spec.tracking.uri else default_tracking_uri(output),
            spec.tracking.experiment or spec.name,
            artifact_root=output / "mlartifacts",
            enabled=spec.tracking.enabled,
        )
        self.objectives = objectives(spec)
        self.ctx = None
        self.parent_run_id: str | None = None

    # -- set-up ---------------------------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Load data, tokenizer and model source once; check every strategy against the real model before trial 0."""
        from strategies import discover_layers
        from sweeps.config.search_space import check_strategy_bounds
        from sweeps.train import StudyContext, check_strategy, layer_spec

        self.ctx = StudyContext.prepare(self.spec, self.output, dataframe=self.dataframe)
        model = self.ctx.build_model()
        try:
            layer_map = discover_layers(model, layer_spec(self.spec))
        except ValueError as exc:
            raise SpecError("layers", str(exc)) from exc
        check_strategy_bounds(self.spec, layer_map.num_layers)
        for i, entry in enumerate(self.spec.strategies):
            if not _has_search(entry):  # searched values are range-checked above; fixed ones are checked here
                check_strategy(entry.name, dict(entry.params), layer_map, index=i)
        self.num_layers = layer_map.num_layers
        del model, layer_map
        self.parent_run_id = self.open_parent_run()
        if self.parent_run_id and not self._parent_has_params():
            self.tracker.log_text(self.parent_run_id, self.spec.dump_yaml(masked=True), "study.yaml")
            self.tracker.log_params(
                self.parent_run_id,
                {
                    "study_name": self.study.study_name,
                    "objectives": ",".join(m for m, _ in self.objectives),
                    "num_layers": str(self.num_layers),
                    "labels": ",".join(self.ctx.data.label_names),
                    **self.ctx.model_source.describe(),
                },
            )

    def open_parent_run(self) -> str | None:
        """The study's MLflow parent run, created by the first worker only: workers starting together (several
        machines, ``docker compose --scale``) each created one and split the trials between two parents."""
        storage = getattr(self.study._storage, "_backend", self.study._storage)
        with storage_lock(
            storage_url(self.spec, self.output),
            f"freeze-sweeps:parent-run:{self.study.study_name}",
            engine=getattr(storage, "engine", None),
        ):
            return self.tracker.parent_run(self.study, self.spec.name, {"sweeps.study": self.study.study_name})

    def _parent_has_params(self) -> bool:
        try:
            return bool(self.tracker.client.get_run(self.parent_run_id).data.params)
        except Exception:
            return False

    # -- loop -----------------------------------------------------------------------------------------------------
    def run(self) -> list[TrialReport]:
        recovered = recover_dead_trials(self.study, self.tracker, self.spec.optuna.retry_failed)
        if recovered:
            self.say(f"recovered trials {recovered} left running by a dead worker: marked failed")
        if self.ctx is None:
            self.prepare()
        self._cover_strategies()
        n_trials = self.spec.optuna.n_trials
        deadline = time.monotonic() + self.spec.optuna.timeout if self.spec.optuna.timeout else None
        reports = []
        if n_trials is not None and (used := budget_used(self.study)) >= n_trials:
            self.say(f"study complete: {used} of {n_trials} trials; nothing to run")
        while True:
            if n_trials is not None and budget_used(self.study) >= n_trials:
                break
            if deadline is not None and time.monotonic() >= deadline:
                self.say("optuna.timeout reached: no new trials")
                break
            report = self.run_one(n_trials)
            if report is None:
                break
            reports.append(report)
        return reports

    def _cover_strategies(self) -> None:
        """Every strategy in the study file gets a trial before the sampler takes over: with a few trials, a sampler's
        random start-up could otherwise leave a strategy untried and the comparison would be silent about it."""
        if len(self.spec.strategies) < 2:
            return
        tried = {t.params.get("strategy") for t in self.study.get_trials(deepcopy=False)}
        for entry in self.spec.strategies:
            if entry.name not in tried:
                self.study.enqueue_trial({"strategy": entry.name}, skip_if_exists=True)

    def run_one(self, n_trials: int | None) -> TrialReport | None:
        from sweeps.study.suggest import suggest

        trial = self.study.ask()
        if n_trials is not None and self._is_surplus(trial, n_trials):
            self.study.set_user_attr("_last_surplus", trial.number)
            trial.set_user_attr("surplus", True)
            trial.set_user_attr("fail_reason", "surplus: n_trials already reached by other workers")
            self.study.tell(trial, state=TrialState.FAIL)
            return None
        trial.set_user_attr("host", HOST)
        trial.set_user_attr("pid", os.getpid())
        try:
            params = suggest(trial, self.spec)
        except SpecError as exc:
            trial.set_user_attr("fail_reason", str(exc))
            self.study.tell(trial, state=TrialState.FAIL)
            raise
        trial.set_user_attr("strategy", params.strategy)
        run_id = self.tracker.start_trial(
            self.parent_run_id,
            f"trial-{trial.number}-{params.strategy}",
            {
                "sweeps.study": self.study.study_name,
                "optuna.trial_number": str(trial.number),
                "sweeps.strategy": params.strategy,
                "sweeps.status": "running",
                "sweeps.host": HOST,
            },
            {"strategy": params.strategy, "strategy_params": params.strategy_params, "training": params.training},
        )
        if run_id:
            trial.set_user_attr(RUN_ATTR, run_id)
        self.say(f"trial {trial.number}: {params.strategy} {params.strategy_params or ''}")
        with _heartbeat(self.study, trial):
            return self._execute(trial, params, run_id)

    def _is_surplus(self, trial: optuna.Trial, n_trials: int) -> bool:
        before = [
            t for t in self.study.get_trials(deepcopy=False) if t.number < trial.number and counts_toward_budget(t)
        ]
        return len(before) >= n_trials

    def _execute(self, trial: optuna.Trial, params: Any, run_id: str | None) -> TrialReport:
        from sweeps.train import TrialDiverged, release_memory, remove_dir, run_trial

        multi = len(self.objectives) > 1
        metric = self.spec.task.metric
        model_dir = self.output / "models" / f"trial_{trial.number}"

        epochs_so_far: list[Any] = []

        def on_epoch_end(result: Any) -> None:
            epochs_so_far.append(result)
            lrs = {f"lr/{name}": lr for name, lr in result.learning_rates.items()}
            self.tracker.log_metrics(run_id, {**result.metrics, **lrs}, step=result.epoch)
            self.say(
                f"  trial {trial.number} epoch {result.epoch + 1}/{self.spec.training.epochs}: "
                f"{metric}={result.metrics[metric]:.4f} train_loss={result.metrics['train_loss']:.4f} "
                f"epoch_time={result.metrics['epoch_time_s']:.1f}s peak_mem={result.metrics['peak_memory_mb']:.0f}MB"
            )
            if multi:
                return  # Optuna cannot prune multi-objective trials
            if result.epoch + 1 <= self._prune_warmup(params):
                return
            trial.report(result.metrics[metric], step=result.epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {result.epoch + 1}: {metric}={result.metrics[metric]:.4f}")

        def on_fold_end(fold: int, running: dict[str, float]) -> None:
            self.tracker.log_metrics(run_id, {f"cv/{k}": v for k, v in running.items()}, step=fold)
            self.say(
                f"  trial {trial.number} fold {fold + 1}/{self.spec.task.cv.folds}: mean {metric}={running[metric]:.4f}"
            )
            if not multi:
                trial.report(running[metric], step=fold)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned after fold {fold + 1}: mean {metric}={running[metric]:.4f}")

        try:
            outcome = run_trial(
                self.ctx,
                params.strategy,
                params.strategy_params,
                params.training,
                on_epoch_end=on_epoch_end,
                on_fold_end=on_fold_end,
                model_dir=model_dir,
            )
        except optuna.TrialPruned as exc:
            remove_dir(model_dir)
            self._write_epochs(trial.number, epochs_so_far)
            self.study.tell(trial, state=TrialState.PRUNED)
            self.tracker.set_tags(run_id, {"sweeps.status": "pruned", "sweeps.prune_reason": str(exc)})
            self.tracker.end_run(run_id, "FINISHED")
            self.say(f"trial {trial.number}: pruned ({exc})")
            return TrialReport(trial.number, "pruned", params.strategy, None, reason=str(exc))
        except KeyboardInterrupt:
            with _ignoring_sigint():  # a second Ctrl-C must not cut the bookkeeping short (trial left RUNNING)
                remove_dir(model_dir)
                trial.set_user_attr("interrupted", True)
                trial.set_user_attr("fail_reason", "interrupted (Ctrl-C)")
                self.study.tell(trial, state=TrialState.FAIL)
                self.tracker.set_tags(
                    run_id, {"sweeps.status": "failed", "sweeps.fail_reason": "interrupted (Ctrl-C)"}
                )
                self.tracker.end_run(run_id, "KILLED")
            raise
        except Exception as exc:
            remove_dir(model_dir)
            release_memory(self.ctx.device)
            reason = _failure_reason(exc)
            trial.set_user_attr("fail_reason", reason)
            self.study.tell(trial, state=TrialState.FAIL)
            self.tracker.set_tags(run_id, {"sweeps.status": "failed", "sweeps.fail_reason": reason})
            self.tracker.end_run(run_id, "FAILED")
            self.say(f"trial {trial.number}: FAILED: {reason}")
            if not isinstance(exc, (TrialDiverged, SweepsError, ValueError, RuntimeError, MemoryError)):
                log.exception("trial %s raised", trial.number)
            return TrialReport(trial.number, "failed", params.strategy, None, reason=reason)
        values = [outcome.metrics[m] for m, _ in self.objectives]
        self._log_outcome(trial, run_id, outcome)
        self.study.tell(trial, values=values if multi else values[0])
        self.tracker.set_tags(run_id, {"sweeps.status": "complete"})
        self.tracker.end_run(run_id, "FINISHED")
        self._keep_if_best(trial.number, model_dir, run_id)
        self._log_best_to_parent()
        self.say(
            f"trial {trial.number}: complete: {metric}={outcome.metrics[metric]:.4f} "
            f"f1_macro={outcome.metrics['f1_macro']:.4f} epoch_time={outcome.metrics['epoch_time_s']:.1f}s "
            f"peak_mem={outcome.metrics['peak_memory_mb']:.0f}MB trainable={int(outcome.metrics['trainable_params']):,}"
        )
        return TrialReport(trial.number, "complete", params.strategy, values, outcome.metrics)

    def _prune_warmup(self, params: Any) -> int:
        """No pruning before the strategy's schedule completes (gradual unfreezing) nor before the pruner warm-up."""
        from strategies import build_strategy

        strategy = build_strategy(params.strategy, params.strategy_params)
        return max(strategy.schedule_end(_LayerCount(self.num_layers)), 0)

    def _log_outcome(self, trial: optuna.Trial, run_id: str | None, outcome: Any) -> None:
        last = len(outcome.epochs) - 1
        final = {k: v for k, v in outcome.metrics.items()}
        self.tracker.log_metrics(run_id, final, step=max(last, 0))
        for k, v in outcome.metrics.items():
            trial.set_user_attr(f"metric.{k}", v)
        trial.set_user_attr("frozen_params_verified", outcome.frozen_params_verified)
        tags = {"frozen_params_verified": str(outcome.frozen_params_verified).lower()}
        for k, v in outcome.cache_stats.items():
            if isinstance(v, (int, float, str, bool)):
                tags[f"cache.{k}"] = v
        self.tracker.set_tags(run_id, tags)
        self.tracker.log_text(run_id, outcome.layer_table_text, "layer_groups.txt")
        self.tracker.log_json(run_id, outcome.layer_table, "layer_groups.json")
        self.tracker.log_json(
            run_id, {"labels": self.ctx.data.label_names, "matrix": outcome.confusion.tolist()}, "confusion_matrix.json"
        )
        epochs = self._write_epochs(trial.number, outcome.epochs)
        self.tracker.log_json(run_id, epochs, "epochs.json")
        preds_dir = self.output / "predictions"
        preds_dir.mkdir(parents=True, exist_ok=True)
        path = preds_dir / f"trial_{trial.number}_{'oof' if self.spec.task.cv.folds >= 2 else 'validation'}.csv"
        _write_predictions(path, outcome, self.ctx.data.label_names)
        self.tracker.log_file(run_id, path, "predictions")

    def _write_epochs(self, number: int, results: list[Any]) -> list[dict[str, Any]]:
        """Per-epoch series in the study folder (the report's learning curves; pruned trials too)."""
        epochs = [
            {"epoch": e.epoch, **e.metrics, **{f"lr/{k}": v for k, v in e.learning_rates.items()}} for e in results
        ]
        trial_dir = self.output / "trials"
        trial_dir.mkdir(parents=True, exist_ok=True)
        (trial_dir / f"trial_{number}_epochs.json").write_text(json.dumps(epochs, indent=1))
        return epochs

    def _keep_if_best(self, number: int, model_dir: Path, run_id: str | None) -> None:
        """Keep the saved model of the best trial only (by the first objective); remove the others."""
        from sweeps.train import remove_dir

        best = self._best_trial_number()
        if best is None:
            return
        pointer = self.output / "models" / "best.json"
        previous = json.loads(pointer.read_text()).get("trial") if pointer.exists() else None
        if best == number:
            tmp = pointer.with_suffix(".tmp")
            tmp.write_text(json.dumps(
                    {
                        "trial": number,
                        "path": model_dir.name,
                        "mlflow_run_id": run_id,
                        "max_length": self.spec.task.max_length,
                    }
                ))
            os.replace(tmp, pointer)
            if previous is not None and previous != number:
                remove_dir(self.output / "models" / f"trial_{previous}")
            if run_id and model_dir.exists():
                self.tracker.set_tags(run_id, {"sweeps.best_model": "true"})
                self._log_model(run_id, model_dir)
        else:
            remove_dir(model_dir)

    def _best_trial_number(self) -> int | None:
        """The study's best trial by the report's rule (one helper owns it: :func:`sweeps.report.best_trial_number`)."""
        from sweeps.report.table import best_trial_number, primary_metric

        return best_trial_number(self.study, *primary_metric(self.spec))

    def _log_best_to_parent(self) -> None:
        """The best trial's metrics, number, strategy and parameters on the parent run, refreshed after each trial."""
        if not self.parent_run_id:
            return
        number = self._best_trial_number()
        if number is None:
            return
        best = self.study.trials[number]
        metrics = {k[len("metric.") :]: v for k, v in best.user_attrs.items() if k.startswith("metric.")}
        complete = sum(t.state == TrialState.COMPLETE for t in self.study.get_trials(deepcopy=False))
        try:
            self.tracker.log_best(
                self.parent_run_id, number, str(best.user_attrs.get("strategy", "?")),
                {k: v for k, v in best.params.items() if k != "strategy"}, metrics, step=complete,
            )
        except Exception as exc:  # the study's record is Optuna's; the parent run is a view of it
            log.warning("best trial %s not logged to the MLflow parent run: %s", number, exc)

    def _log_model(self, run_id: str, model_dir: Path) -> None:
        """The best model as an MLflow transformers model (a Logged Model); the plain folder if the flavour fails
        (CV trials save one folder per fold, which is no single pipeline)."""
        try:
            if (model_dir / "config.json").exists():
                uri = self.tracker.log_transformers_model(run_id, model_dir)
                self.tracker.set_tags(run_id, {"sweeps.model_uri": uri or ""})
                return
        except Exception as exc:
            log.warning("best model not logged with the MLflow transformers flavour (%s); logging the folder", exc)
        self.tracker.log_dir(run_id, model_dir, "model")


class _LayerCount:
    """The bits of a LayerMap that ``schedule_end`` needs, without rebuilding the model."""

    def __init__(self, num_layers: int) -> None:
        from strategies.layers import EMBEDDINGS, HEAD, layer_name

        self.num_layers = num_layers
        self.names = [EMBEDDINGS, *(layer_name(i) for i in range(num_layers)), HEAD]
        self.shared_layers = False


def _is_search(value: Any) -> bool:
    return isinstance(value, dict) or (hasattr(value, "model_fields") and hasattr(value, "type"))


def _has_search(entry: Any) -> bool:
    return any(_is_search(v) for v in entry.params.values())


@contextlib.contextmanager
def _ignoring_sigint() -> Iterator[None]:
    """SIGINT ignored inside the block (main thread only; elsewhere signals cannot be set and none arrive)."""
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _failure_reason(exc: BaseException) -> str:
    import torch

    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return f"out of memory: {exc}".strip()
    return f"{type(exc).__name__}: {exc}"


def _write_predictions(path: Path, outcome: Any, label_names: list[str]) -> None:

    probs = outcome.eval_probs
    frame = pd.DataFrame(probs, columns=[f"prob_{n}" for n in label_names])
    frame.insert(0, "example_id", outcome.oof_index if outcome.oof_index is not None else np.arange(len(probs)))
    frame.insert(1, "label", [label_names[i] for i in outcome.eval_labels])
    frame.insert(2, "prediction", [label_names[i] for i in probs.argmax(-1)])
    frame.to_csv(path, index=False)
