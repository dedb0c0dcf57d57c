"""The trial loop of one process: ask a trial, run it, record how it ended in Optuna and MLflow.

Trials are driven with Optuna's ask-and-tell interface rather than ``study.optimize`` because every way a trial can end
must be recorded in *both* Optuna and MLflow: complete, pruned, failed with a reason (NaN loss, out of memory, bad
hyperparameters), interrupted by Ctrl-C, or left behind by a worker that was killed (:mod:`sweeps.study.recovery`).
Every ending but "complete" goes through one :meth:`StudyRunner.finish`. Nothing here schedules work between workers:
they share the study through its storage.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from sweeps.config import StudySpec
from sweeps.config.search_space import STRATEGY_PARAM
from sweeps.errors import Interrupted, SpecError, SweepsError
from sweeps.phases import CLOCK, EVALUATION, MODEL_LOAD, since, timed
from sweeps.records import (
    Artifact,
    StudyAttr,
    Tag,
    TrialAttr,
    best_model_pointer,
    metric_attr,
    phases_file,
    trial_model_dir,
)
from sweeps.signals import deferring_stop_signals, ignoring_stop_signals
from sweeps.study.confirm import choose_finalists, confirmation_seed, enqueue_confirmations, is_confirmation
from sweeps.study.recovery import (
    HOST,
    budget_used,
    close_orphan_runs,
    counts_toward_budget,
    heartbeat,
    recover_dead_trials,
    study_storage,
)
from sweeps.study.storage import database_url, open_study, storage_lock, storage_url
from sweeps.study.suggest import TrialParams
from sweeps.study.test_split import TEST_ATTR, evaluate_test_split, test_metrics_of
from sweeps.track import Tracker

if TYPE_CHECKING:
    from sweeps.train import EpochResult, StudyContext, TrialOutcome

log = logging.getLogger(__name__)

MAX_DUPLICATES_IN_A_ROW = 5


@dataclass(frozen=True)
class Ending:
    """How one kind of trial ending is recorded in Optuna and MLflow."""

    state: TrialState
    mlflow_status: str  # FINISHED | FAILED | KILLED
    status_tag: str  # the run's sweeps.status
    reason_tag: str  # the tag the reason goes to


ENDINGS = {
    "pruned": Ending(TrialState.PRUNED, "FINISHED", "pruned", Tag.PRUNE_REASON),
    "failed": Ending(TrialState.FAIL, "FAILED", "failed", Tag.FAIL_REASON),
    "interrupted": Ending(TrialState.FAIL, "KILLED", "failed", Tag.FAIL_REASON),
}


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
        self, spec: StudySpec, output: Path, *, dataframe: Any = None, progress: Callable[[str], None] | None = None
    ) -> None:
        self.spec = spec
        self.output = output
        self.output.mkdir(parents=True, exist_ok=True)
        self.dataframe = dataframe
        self.say = progress or (lambda msg: log.info(msg))
        self.study = open_study(spec)
        assert spec.tracking.uri is not None and spec.tracking.experiment is not None  # resolved by sweeps.config
        tracking_uri = database_url(spec.tracking.uri)
        self.tracker = Tracker(
            tracking_uri,
            spec.tracking.experiment,
            artifact_root=output / "mlartifacts",
            enabled=spec.tracking.enabled,
            setup_lock=storage_lock(tracking_uri, "freeze-sweeps:mlflow-schema"),
        )
        self.ctx: StudyContext | None = None
        self.parent_run_id: str | None = None
        self._started = (time.perf_counter(), CLOCK.snapshot())

    # -- set-up ---------------------------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Load data, tokenizer and model source once; check every strategy against the real model before trial 0."""
        from sweeps.study.checks import check_against_model

        self.ctx, self.num_layers = check_against_model(self.spec, self.output, dataframe=self.dataframe)
        if self.study.user_attrs.get(StudyAttr.LABELS) != self.ctx.data.label_names:
            self.study.set_user_attr(StudyAttr.LABELS, self.ctx.data.label_names)  # the report's noise rule reads them
        self.parent_run_id = self.open_parent_run()
        if self.parent_run_id and not self._parent_has_params():
            self.tracker.log_text(self.parent_run_id, self.spec.dump_yaml(masked=True), Artifact.STUDY_YAML)
            self.tracker.log_params(
                self.parent_run_id,
                {
                    "study_name": self.study.study_name,
                    "objectives": ",".join(self.spec.objective_metrics),
                    "num_layers": str(self.num_layers),
                    "labels": ",".join(self.ctx.data.label_names),
                    **self.ctx.model_source.describe(),
                },
            )

    def open_parent_run(self) -> str | None:
        """The study's MLflow parent run, created by the first worker only: workers starting together (several
        machines, ``docker compose --scale``) each created one and split the trials between two parents."""
        with self._study_lock("parent-run"):
            return self.tracker.parent_run(self.study, self.spec.name, {Tag.STUDY: self.study.study_name})

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
        from sweeps.train import frozen_heap

        with frozen_heap():  # what is loaded by now lives until the end: per-trial collections skip it
            return self._run_trials()

    def _run_trials(self) -> list[TrialReport]:
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
        reports += self._confirm(deadline)
        self._evaluate_on_test()
        return reports

    # -- answers you can trust: confirmation, test split --------------------------------------------------------
    def _confirm(self, deadline: float | None) -> list[TrialReport]:
        """Retrain the finalists with further seeds (``optuna.confirm``), then run every waiting confirmation."""
        cfg = self.spec.optuna.confirm
        if cfg is None or self.spec.multi_objective:
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
        pointer = best_model_pointer(self.output)
        if not pointer.exists():
            return
        number = int(json.loads(pointer.read_text())["trial"])
        if test_metrics_of(self.study, number) is not None:
            return
        with self._study_lock("test"):
            if test_metrics_of(self.study, number) is None:
                self._record_test(number, trial_model_dir(self.output, number))

    def _record_test(self, number: int, model_dir: Path) -> None:
        from sweeps.predict import load_model_folder

        if not model_dir.exists():
            return
        with timed(MODEL_LOAD):
            model = load_model_folder(model_dir, number, max_length=self.spec.task.max_length)
        with timed(EVALUATION):
            metrics = evaluate_test_split(model, self.ctx.data, self.spec)
        self.study.set_user_attr(f"{TEST_ATTR}{number}", metrics)
        run_id = next((t.user_attrs.get(TrialAttr.MLFLOW_RUN) for t in self.study.get_trials(deepcopy=False)
                       if t.number == number), None)
        self.tracker.log_metrics(run_id, {f"test/{k}": v for k, v in metrics.items()}, step=0)
        self.say(
            f"held-out test, trial {number}: "
            + " ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k in ("accuracy", "f1_macro"))
        )

    def _study_lock(self, what: str) -> Any:
        """A lock shared by every worker of the study (through its storage): one of them does ``what`` at a time."""
        storage = study_storage(self.study, backend=True)
        return storage_lock(
            storage_url(self.spec),
            f"freeze-sweeps:{what}:{self.study.study_name}",
            engine=getattr(storage, "engine", None),
        )

    def _cover_strategies(self) -> None:
        """Every strategy in the study file gets ``optuna.min_trials_per_strategy`` trials (default 1) before the
        sampler takes over, in rounds (each strategy's first, then each one's second, ...) so that a budget too small
        for all of them is shared evenly: with a few trials, a sampler's random start-up could leave a strategy untried,
        or judge the baseline at one learning rate against a rival tried at three. Only the strategy is fixed; the
        sampler draws the rest. A strategy's trial counts when it ended on its own (complete, pruned, genuinely failed)
        or is running or waiting — not when it was interrupted or its worker died, and not a confirmation retrain."""
        if len(self.spec.strategies) < 2:
            return
        with self._study_lock("cover"):  # runners started at once would otherwise each enqueue the same rounds
            self._enqueue_cover_rounds()

    def _enqueue_cover_rounds(self) -> None:
        """Count each strategy's trials, then enqueue the missing ones round by round while the budget has room (trials
        already waiting take room too: they will use up ``n_trials`` once they run)."""
        counts = {entry.name: 0 for entry in self.spec.strategies}
        waiting = 0
        for t in self.study.get_trials(deepcopy=False):
            if is_confirmation(t):
                continue
            waiting += t.state == TrialState.WAITING
            strategy = t.params.get(STRATEGY_PARAM) or t.system_attrs.get("fixed_params", {}).get(STRATEGY_PARAM)
            live = t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
            if strategy in counts and (live or (t.state == TrialState.FAIL and counts_toward_budget(t))):
                counts[strategy] += 1
        n_trials = self.spec.optuna.n_trials
        room = None if n_trials is None else max(n_trials - budget_used(self.study) - waiting, 0)
        for round_ in range(self.spec.optuna.min_trials_per_strategy):
            for name, count in counts.items():
                if count > round_:
                    continue
                if room is not None and room <= 0:
                    return  # fewer trials left than the minimum asks for: the report says which strategies got fewer
                self.study.enqueue_trial({STRATEGY_PARAM: name})
                counts[name] += 1
                room = None if room is None else room - 1

    def run_one(self, n_trials: int | None) -> TrialReport | None:
        """Ask for one trial and run it (or skip it); where its wall time went is recorded on the study (attribute
        ``phases.<n>``, see :mod:`sweeps.phases`), after everything the trial costs, saving the best model included."""
        before, start = CLOCK.snapshot(), time.perf_counter()
        report = self._run_one(n_trials)
        if report is not None:
            spent = since(before, CLOCK.snapshot(), time.perf_counter() - start)
            self.study.set_user_attr(f"{StudyAttr.PHASES_PREFIX}{report.number}", spent)
        return report

    def time_by_phase(self) -> tuple[float, dict[str, float]]:
        """This process's wall seconds since the runner was made, and how they split by phase."""
        wall = time.perf_counter() - self._started[0]
        return wall, since(self._started[1], CLOCK.snapshot(), wall)

    def write_phases(self) -> Path:
        """This process's time by phase since the runner was made, as ``<out>/phases/<host>-<pid>.json``."""
        wall, spent = self.time_by_phase()
        path = phases_file(self.output, HOST, os.getpid())
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"wall_s": round(wall, 3), "phases": spent}, indent=1))
        return path

    def _run_one(self, n_trials: int | None) -> TrialReport | None:
        """Ask for a trial and see it to an end. A stop signal at *any* point after the ask records the trial as
        interrupted (Optuna FAIL, MLflow KILLED), not only during training: a worker's signal often lands while its
        trial is being set up, and a trial left RUNNING there used to be recovered as a dead worker's."""
        trial = None
        try:
            with deferring_stop_signals():  # asked and claimed (host, pid) as one step; a signal is raised after it
                trial = self.study.ask()
                if n_trials is not None and self._is_surplus(trial, n_trials):
                    self.study.set_user_attr(StudyAttr.LAST_SURPLUS, trial.number)
                    trial.set_user_attr(TrialAttr.SURPLUS, True)
                    trial.set_user_attr(TrialAttr.FAIL_REASON, "surplus: n_trials already reached by other workers")
                    self.study.tell(trial, state=TrialState.FAIL)
                    return None
                trial.set_user_attr(TrialAttr.HOST, HOST)
                trial.set_user_attr(TrialAttr.PID, os.getpid())
            return self._start(trial)
        except KeyboardInterrupt as exc:
            if trial is not None:
                with ignoring_stop_signals():  # a second signal must not cut the bookkeeping short
                    self._record_interrupt(trial, exc)
            raise

    def _record_interrupt(self, trial: optuna.Trial, exc: KeyboardInterrupt) -> None:
        """The trial as interrupted, wherever the signal landed: still RUNNING, it is finished as interrupted; already
        told (the signal came during the last bookkeeping), only its MLflow run may be left open. Either way an MLflow
        run started but not yet recorded on the trial is closed too (:func:`close_orphan_runs`)."""
        frozen = study_storage(self.study).get_trial(trial._trial_id)
        if frozen.state == TrialState.RUNNING:
            strategy = str(frozen.user_attrs.get(TrialAttr.STRATEGY, "?"))
            run_id = frozen.user_attrs.get(TrialAttr.MLFLOW_RUN)
            self.finish(trial, strategy, run_id, "interrupted", _interrupt_reason(exc))
        close_orphan_runs(self.study, self.tracker)

    def _start(self, trial: optuna.Trial) -> TrialReport | None:
        """Sample the trial's parameters, open its MLflow run and train it (or skip it as a duplicate)."""
        from sweeps.study.suggest import suggest
        from sweeps.train.context import resolve_precision

        try:
            params = suggest(trial, self.spec)
        except SpecError as exc:
            trial.set_user_attr(TrialAttr.FAIL_REASON, str(exc))
            self.study.tell(trial, state=TrialState.FAIL)
            raise
        trial.set_user_attr(TrialAttr.STRATEGY, params.strategy)
        seed = confirmation_seed(trial)
        if seed is not None:
            params.training = params.training.model_copy(update={"seed": seed})
        if self.ctx is not None:  # logged, keyed and trained at the precision it actually runs at
            precision = resolve_precision(params.training.precision, self.ctx.device)
            params.training = params.training.model_copy(update={"precision": precision})
            trial.set_user_attr(TrialAttr.PRECISION, precision)
        trial.set_user_attr(TrialAttr.SEED, params.training.seed)
        key = params.config_key()
        trial.set_user_attr(TrialAttr.CONFIG_KEY, key)
        duplicate = self._duplicate_of(trial.number, key)
        run_id = self.tracker.start_trial(
            self.parent_run_id,
            f"trial-{trial.number}-{params.strategy}",
            {
                Tag.STUDY: self.study.study_name,
                Tag.TRIAL_NUMBER: str(trial.number),
                Tag.STRATEGY: params.strategy,
                Tag.STATUS: "running",
                Tag.HOST: HOST,
            },
            {
                "strategy": params.strategy,
                "strategy_params": params.strategy_params,
                "training": params.training.model_dump(),
                **({"head": params.head} if params.head is not None else {}),
            },
        )
        if run_id:
            trial.set_user_attr(TrialAttr.MLFLOW_RUN, run_id)
        if duplicate is not None:
            return self._skip_duplicate(trial, duplicate, params, run_id)
        self._duplicates_in_a_row = 0
        searched_head = self.spec.task.head is not None and bool(self.spec.task.head.searched())
        head_note = f" head={params.head}" if searched_head else ""
        self.say(f"trial {trial.number}: {params.strategy} {params.strategy_params or ''}{head_note}")
        with heartbeat(self.study, trial):
            return self._execute(trial, params, run_id)

    def _duplicate_of(self, number: int, key: str) -> optuna.trial.FrozenTrial | None:
        """A completed trial that trained exactly this configuration (same key), if any."""
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            same = t.user_attrs.get(TrialAttr.CONFIG_KEY) == key
            if t.number != number and same and t.user_attrs.get(TrialAttr.DUPLICATE_OF) is None:
                return t
        return None

    def _skip_duplicate(
        self, trial: optuna.Trial, previous: optuna.trial.FrozenTrial, params: Any, run_id: str | None
    ) -> TrialReport | None:
        """Not trained again: recorded with the earlier trial's values (so the sampler learns it was tried) and
        ``duplicate_of``, and its MLflow run (every trial has one) says so; it does not use up ``n_trials`` and is never
        counted as evidence. Several duplicates in a row mean the sampler has nothing new left to propose: the search
        stops."""
        trial.set_user_attr(TrialAttr.DUPLICATE_OF, previous.number)
        self.study.tell(trial, values=previous.values if self.spec.multi_objective else previous.value)
        self.tracker.set_tags(run_id, {Tag.STATUS: "duplicate", Tag.DUPLICATE_OF: str(previous.number)})
        self.tracker.end_run(run_id, "FINISHED")
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

    def _execute(self, trial: optuna.Trial, params: TrialParams, run_id: str | None) -> TrialReport:
        """Run one trial; the trial reports its epochs to a :class:`~sweeps.study.observer.PruningObserver`, which
        logs them and asks the pruner. Every way it can end is recorded by :meth:`finish` or :meth:`_complete`."""
        from sweeps.study.observer import PruningObserver
        from sweeps.train import Stopped, TrialDiverged, run_trial

        assert self.ctx is not None
        observer = PruningObserver(trial, self.spec, self.tracker, run_id, self.say)
        model_dir = trial_model_dir(self.output, trial.number)
        verifications: list[bool] = []  # one per model trained (CV: per fold), whatever ended the training
        try:
            outcome = run_trial(
                self.ctx,
                params.strategy,
                params.strategy_params,
                params.training,
                observer=observer,
                model_dir=model_dir,
                on_verified=verifications.append,
                head=params.head,
            )
        except KeyboardInterrupt:
            raise  # recorded as interrupted by _run_one, wherever it lands
        except BaseException as exc:  # SystemExit & co. from user code (a strategy hook) fail the trial, not the study
            if not isinstance(exc, (TrialDiverged, SweepsError, ValueError, RuntimeError, MemoryError)):
                log.exception("trial %s raised", trial.number)
            reason = _failure_reason(exc)
            return self.finish(trial, params.strategy, run_id, "failed", reason, verifications=verifications)
        if isinstance(outcome, Stopped):
            return self.finish(
                trial, params.strategy, run_id, "pruned", outcome.reason, epochs=observer.epochs,
                verifications=verifications,
            )
        return self._complete(trial, params, run_id, outcome)

    def finish(
        self,
        trial: optuna.Trial,
        strategy: str,
        run_id: str | None,
        how: str,
        reason: str,
        *,
        epochs: Sequence[EpochResult] = (),
        verifications: Sequence[bool] = (),
    ) -> TrialReport:
        """Record a trial that did not complete (``how``: pruned, failed or interrupted, see :data:`ENDINGS`) with
        ``reason``, in Optuna and MLflow; its saved model (if any) is removed. A failed trial's memory is released
        before the next one starts; a pruned trial's epochs are kept for the report's learning curves. A trial that
        trained records ``frozen_params_verified`` from ``verifications`` (the checks of what was frozen up to where
        training stopped), as completed trials do. The reason is recorded *before* the trial is told: a finished trial's
        attributes can no longer be changed."""
        from sweeps.study.artifacts import remove_dir, write_epochs
        from sweeps.train import release_memory

        ending = ENDINGS[how]
        remove_dir(trial_model_dir(self.output, trial.number))
        if how == "failed" and self.ctx is not None:
            release_memory(self.ctx.device)
        if how == "pruned":
            write_epochs(self.output, trial.number, list(epochs))
        if how == "interrupted":
            trial.set_user_attr(TrialAttr.INTERRUPTED, True)
        if ending.state == TrialState.FAIL:
            trial.set_user_attr(TrialAttr.FAIL_REASON, reason)
        if verifications:
            trial.set_user_attr(TrialAttr.FROZEN_VERIFIED, all(verifications))
            self.tracker.set_tags(run_id, {Tag.FROZEN_VERIFIED: str(all(verifications)).lower()})
        self.study.tell(trial, state=ending.state)
        self.tracker.set_tags(run_id, {Tag.STATUS: ending.status_tag, ending.reason_tag: reason})
        self.tracker.end_run(run_id, ending.mlflow_status)
        if how == "pruned":
            self.say(f"trial {trial.number}: pruned ({reason})")
        elif how == "failed":
            self.say(f"trial {trial.number}: FAILED: {reason}")
        return TrialReport(trial.number, how, strategy, None, reason=reason)

    def _complete(
        self, trial: optuna.Trial, params: TrialParams, run_id: str | None, outcome: TrialOutcome
    ) -> TrialReport:
        from sweeps.study.artifacts import keep_if_best, log_best_to_parent, record_outcome

        assert self.ctx is not None
        values = [outcome.metrics[m] for m in self.spec.objective_metrics]
        record_outcome(
            trial,
            self.tracker,
            run_id,
            outcome,
            out=self.output,
            label_names=self.ctx.data.label_names,
            out_of_fold=self.spec.task.cv.enabled,
        )
        self.study.tell(trial, values=values if self.spec.multi_objective else values[0])
        self.tracker.set_tags(run_id, {Tag.STATUS: "complete"})
        if is_confirmation(trial) and self.ctx.data.test_labelled:  # a finalist: touches the test split once
            self._record_test(trial.number, trial_model_dir(self.output, trial.number))
        self.tracker.end_run(run_id, "FINISHED")
        max_length = self.spec.task.max_length
        keep_if_best(self.study, self.tracker, trial.number, run_id, out=self.output, max_length=max_length)
        log_best_to_parent(self.study, self.tracker, self.parent_run_id)
        m, metric = outcome.metrics, self.spec.task.metric
        self.say(
            f"trial {trial.number}: complete: {metric}={m[metric]:.4f} "
            f"f1_macro={m['f1_macro']:.4f} epoch_time={m['epoch_time_s']:.1f}s "
            f"peak_mem={m['peak_memory_mb']:.0f}MB trainable={int(m['trainable_params']):,}"
        )
        return TrialReport(trial.number, "complete", params.strategy, values, outcome.metrics)


def _strategy_of(trial: optuna.trial.FrozenTrial) -> str:
    return str(trial.user_attrs.get(TrialAttr.STRATEGY) or trial.params.get(STRATEGY_PARAM) or "?")


def _metric_attr(trial: optuna.trial.FrozenTrial, metric: str) -> float | None:
    value = trial.user_attrs.get(metric_attr(metric))
    return None if value is None else float(value)


def _interrupt_reason(exc: KeyboardInterrupt) -> str:
    """Ctrl-C or SIGTERM (the CLI's handlers raise :class:`Interrupted`); a bare ``KeyboardInterrupt`` raised by code
    inside the trial (a strategy hook) says where it came from, so the cause is not lost."""
    if isinstance(exc, Interrupted):
        return exc.reason
    return f"interrupted: KeyboardInterrupt raised{_raised_at(exc)}"


def _raised_at(exc: BaseException) -> str:
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    return f" at {Path(frames[-1].filename).name}:{frames[-1].lineno} ({frames[-1].name})" if frames else ""


def _failure_reason(exc: BaseException) -> str:
    import torch

    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return f"out of memory: {exc}".strip()
    if not isinstance(exc, Exception):  # SystemExit, GeneratorExit or a user BaseException (e.g. sys.exit in a hook)
        return f"{type(exc).__name__}({exc}) raised inside the trial{_raised_at(exc)}"
    return f"{type(exc).__name__}: {exc}"
