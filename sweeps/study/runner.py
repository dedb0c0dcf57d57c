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
from sweeps.health import trial_health
from sweeps.report.verdict import best_trial_number
from sweeps.study.confirm import choose_finalists, confirmation_seed, enqueue_confirmations, is_confirmation
from sweeps.study.recovery import HOST, _heartbeat, budget_used, counts_toward_budget, recover_dead_trials
from sweeps.study.sampling import objectives
from sweeps.study.storage import database_url, open_study, storage_lock, storage_url
from sweeps.study.test_split import TEST_ATTR, evaluate_test_split, test_metrics_of
from sweeps.track import RUN_ATTR, Tracker, default_tracking_uri

log = logging.getLogger(__name__)

CONFIG_KEY_ATTR = "config_key"
DUPLICATE_ATTR = "duplicate_of"
MAX_DUPLICATES_IN_A_ROW = 5


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
                strategy = check_strategy(entry.name, dict(entry.params), layer_map, index=i)
                self._check_schedule_fits(i, entry, strategy, layer_map)
        self.num_layers = layer_map.num_layers
        del model, layer_map
        if self.study.user_attrs.get("labels") != self.ctx.data.label_names:
            self.study.set_user_attr("labels", self.ctx.data.label_names)  # the report's noise rule reads them
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

    def _check_schedule_fits(self, index: int, entry: Any, strategy: Any, layer_map: Any) -> None:
        """Refuse a schedule (gradual unfreezing, explicit phases) whose last change comes after the last epoch: its
        trials would be judged before the strategy ever trained as configured."""
        from strategies import schedule_end_epoch

        epochs = int(entry.training.get("epochs", self.spec.training.epochs))
        end = schedule_end_epoch(strategy, layer_map)
        if end >= epochs:
            raise SpecError(
                f"strategies[{index}].params",
                f"{entry.name}'s schedule changes for the last time at the start of epoch {end + 1}, but training "
                f"runs {epochs} epoch{'s' if epochs != 1 else ''}: use epochs >= {end + 1} (training.epochs or "
                f"strategies[{index}].training.epochs), or unfreeze faster (e.g. groups_per_step)",
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
        reports += self._confirm(deadline)
        self._evaluate_on_test()
        return reports

    # -- answers you can trust: confirmation, test split --------------------------------------------------------
    def _confirm(self, deadline: float | None) -> list[TrialReport]:
        """Retrain the finalists with further seeds (``optuna.confirm``), then run every waiting confirmation."""
        cfg = self.spec.optuna.confirm
        if cfg is None or len(self.objectives) > 1:
            return []
        metric, direction = self.spec.task.metric, self.spec.task.direction
        with self._study_lock("confirm"):
            trials = self.study.get_trials(deepcopy=False)
            finalists = choose_finalists(trials, lambda t: _metric_attr(t, metric), direction, cfg.top_k, _strategy_of)
            added = enqueue_confirmations(self.study, finalists, cfg.seeds)
        if added:
            names = ", ".join(f"trial {t.number} ({_strategy_of(t)})" for t in finalists)
            self.say(f"confirmation: retraining {names} with {cfg.seeds} seeds each ({added} trials)")
        reports = []
        while any(is_confirmation(t) for t in self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))):
            if deadline is not None and time.monotonic() >= deadline:
                self.say("optuna.timeout reached: confirmation trials left waiting (a rerun trains them)")
                break
            report = self.run_one(None)
            if report is None:
                break
            reports.append(report)
        return reports

    def _evaluate_on_test(self) -> None:
        """Evaluate the best trial's saved model on a labelled test split, once (never used for selection)."""
        if self.ctx is None or not self.ctx.data.test_labelled:
            return
        pointer = self.output / "models" / "best.json"
        if not pointer.exists():
            return
        number = int(json.loads(pointer.read_text())["trial"])
        if test_metrics_of(self.study, number) is not None:
            return
        with self._study_lock("test"):
            if test_metrics_of(self.study, number) is None:
                self._record_test(number, self.output / "models" / f"trial_{number}")

    def _record_test(self, number: int, model_dir: Path) -> None:
        from sweeps.predict import load_model_folder

        if not model_dir.exists():
            return
        model = load_model_folder(model_dir, number, max_length=self.spec.task.max_length)
        metrics = evaluate_test_split(model, self.ctx.data, self.spec)
        self.study.set_user_attr(f"{TEST_ATTR}{number}", metrics)
        run_id = next((t.user_attrs.get(RUN_ATTR) for t in self.study.get_trials(deepcopy=False)
                       if t.number == number), None)
        self.tracker.log_metrics(run_id, {f"test/{k}": v for k, v in metrics.items()}, step=0)
        self.say(
            f"held-out test, trial {number}: "
            + " ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k in ("accuracy", "f1_macro"))
        )

    def _study_lock(self, what: str) -> Any:
        storage = getattr(self.study._storage, "_backend", self.study._storage)
        return storage_lock(
            storage_url(self.spec, self.output),
            f"freeze-sweeps:{what}:{self.study.study_name}",
            engine=getattr(storage, "engine", None),
        )

    def _cover_strategies(self) -> None:
        """Every strategy in the study file gets a trial before the sampler takes over: with a few trials, a sampler's
        random start-up could otherwise leave a strategy untried and the comparison would be silent about it. A
        strategy counts as covered by a trial that ended on its own (complete, pruned, genuinely failed) or is
        running or waiting — not by one that was interrupted or whose worker died."""
        if len(self.spec.strategies) < 2:
            return
        covered = set()
        for t in self.study.get_trials(deepcopy=False):
            strategy = t.params.get("strategy") or t.system_attrs.get("fixed_params", {}).get("strategy")
            live = t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
            if live or (t.state == TrialState.FAIL and counts_toward_budget(t)):
                covered.add(strategy)
        n_trials = self.spec.optuna.n_trials
        room = None if n_trials is None else max(n_trials - budget_used(self.study), 0)
        for entry in self.spec.strategies:
            if entry.name in covered:
                continue
            if room is not None and room <= 0:
                break  # fewer trials left than strategies: the rest stay untried (the report says so)
            self.study.enqueue_trial({"strategy": entry.name}, skip_if_exists=True)
            room = None if room is None else room - 1

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
        seed = confirmation_seed(trial)
        if seed is not None:
            params.training["seed"] = seed
        trial.set_user_attr("seed", params.training["seed"])
        key = params.config_key()
        trial.set_user_attr(CONFIG_KEY_ATTR, key)
        duplicate = self._duplicate_of(trial.number, key)
        if duplicate is not None:
            return self._skip_duplicate(trial, duplicate, params)
        self._duplicates_in_a_row = 0
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

    def _duplicate_of(self, number: int, key: str) -> optuna.trial.FrozenTrial | None:
        """A completed trial that trained exactly this configuration (same key), if any."""
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if t.number != number and t.user_attrs.get(CONFIG_KEY_ATTR) == key and not t.user_attrs.get(DUPLICATE_ATTR):
                return t
        return None

    def _skip_duplicate(
        self, trial: optuna.Trial, previous: optuna.trial.FrozenTrial, params: Any
    ) -> TrialReport | None:
        """Not trained again: recorded with the earlier trial's values (so the sampler learns it was tried) and
        ``duplicate_of``; it does not use up ``n_trials`` and is never counted as evidence. Several duplicates in a
        row mean the sampler has nothing new left to propose: the search stops."""
        trial.set_user_attr(DUPLICATE_ATTR, previous.number)
        self.study.tell(trial, values=previous.values if len(self.objectives) > 1 else previous.value)
        self._duplicates_in_a_row = getattr(self, "_duplicates_in_a_row", 0) + 1
        self.say(f"trial {trial.number}: same configuration as trial {previous.number}: not trained again")
        if self._duplicates_in_a_row >= MAX_DUPLICATES_IN_A_ROW:
            self.say(f"{MAX_DUPLICATES_IN_A_ROW} duplicate proposals in a row: the search space is exhausted")
            return None
        return TrialReport(trial.number, "duplicate", params.strategy, None, reason=f"duplicate of {previous.number}")

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
        if is_confirmation(trial) and self.ctx.data.test_labelled:  # a finalist: touches the test split once
            self._record_test(trial.number, model_dir)
        self.tracker.end_run(run_id, "FINISHED")
        self._keep_if_best(trial.number, model_dir, run_id)
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
        self.tracker.log_metrics(run_id, {f"final/{k}": v for k, v in final.items()}, step=0)
        for k, v in outcome.metrics.items():
            trial.set_user_attr(f"metric.{k}", v)
        trial.set_user_attr("frozen_params_verified", outcome.frozen_params_verified)
        health = trial_health(outcome.eval_labels, outcome.eval_probs.argmax(-1), len(self.ctx.data.label_names))
        dead = ", ".join(self.ctx.data.label_names[i] for i in health.dead_classes)
        trial.set_user_attr("learned", health.learned)
        trial.set_user_attr("degenerate", health.degenerate)
        trial.set_user_attr("chance_rate", health.majority_rate)
        trial.set_user_attr("dead_classes", dead)
        trial.set_user_attr("cache_warm", outcome.cache_stats.get("cache_hit") is True)
        tags = {
            "frozen_params_verified": str(outcome.frozen_params_verified).lower(),
            "sweeps.learned": str(health.learned).lower(),
            "sweeps.degenerate": str(health.degenerate).lower(),
        }
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

        best = best_trial_number(self.study)
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
                self.tracker.log_dir(run_id, model_dir, "model")
        else:
            remove_dir(model_dir)


class _LayerCount:
    """The bits of a LayerMap that ``schedule_end`` needs, without rebuilding the model."""

    def __init__(self, num_layers: int) -> None:
        from strategies.layers import EMBEDDINGS, HEAD, layer_name

        self.num_layers = num_layers
        self.names = [EMBEDDINGS, *(layer_name(i) for i in range(num_layers)), HEAD]
        self.shared_layers = False


def _strategy_of(trial: optuna.trial.FrozenTrial) -> str:
    return str(trial.user_attrs.get("strategy") or trial.params.get("strategy") or "?")


def _metric_attr(trial: optuna.trial.FrozenTrial, metric: str) -> float | None:
    value = trial.user_attrs.get(f"metric.{metric}")
    return None if value is None else float(value)


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
