"""Trials left behind by a worker that died, and what counts toward ``n_trials``.

How ``n_trials`` is counted: trials that ran to an end (complete, pruned, failed by their own error) plus
trials still running; confirmation trials (``optuna.confirm``) and skipped duplicates are extra. Trials
that were interrupted (Ctrl-C) or whose worker died do not use up the budget: they are retried with the
same parameters (``optuna.retry_failed`` times) or their slot goes to a new sample.

Why not Optuna's ``fail_stale_trials`` and ``RetryHeartbeatStaleTrialCallback`` (checked against optuna 5.0): the first
sets a stale trial to FAIL before anything can be recorded on it, and a finished trial's attributes are immutable, so
the reason (``fail_reason``, ``worker_died``) that the budget count, the report and MLflow rely on could not be
written; the second copies every user attribute of the dead trial (its ``fail_reason``, ``worker_died``, host, pid) onto
the retry, so a retry that then failed by its own error would not count toward ``n_trials``. What they do is done here
in the same order — reason first, then the RUNNING → FAIL transition that only one process wins, then the retry — with
Optuna's public storage methods; the private pieces Optuna offers no public access to (a study's storage, a trial's
storage id, the stale-trial query) are reached in :func:`study_storage`, :func:`_trial_id` and
:func:`_stale_trial_ids` only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import optuna
from optuna.trial import TrialState

from sweeps.records import Tag, TrialAttr
from sweeps.track import Tracker

log = logging.getLogger(__name__)


HOST = socket.gethostname()


# -- bookkeeping --------------------------------------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def counts_toward_budget(trial: optuna.trial.FrozenTrial) -> bool:
    """Trials that ran to an end (complete, pruned, failed by their own error) and running ones use up ``n_trials``;
    interrupted trials, trials whose worker died and surplus asks do not."""
    if trial.user_attrs.get(TrialAttr.SURPLUS):
        return False
    extra = (TrialAttr.CONFIRM_OF, TrialAttr.DUPLICATE_OF)
    if any(trial.user_attrs.get(key) is not None for key in extra):
        return False  # confirmation trials come after the budget; duplicates were not trained
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING):
        return True
    if trial.state == TrialState.FAIL:
        # our own bookkeeping always records a fail_reason before telling FAIL: a FAIL without one was failed from
        # outside (e.g. Optuna's own stale-trial check), i.e. its worker died
        return not (
            trial.user_attrs.get(TrialAttr.INTERRUPTED)
            or trial.user_attrs.get(TrialAttr.WORKER_DIED)
            or TrialAttr.FAIL_REASON not in trial.user_attrs
        )
    return False


def budget_used(study: optuna.Study) -> int:
    return sum(counts_toward_budget(t) for t in study.get_trials(deepcopy=False))


def study_storage(study: optuna.Study, backend: bool = False) -> Any:
    """The storage ``study`` was opened on (private on Study); with ``backend`` the RDBStorage behind Optuna's cache
    wrapper (for its SQLAlchemy engine and grace period)."""
    storage = study._storage
    return getattr(storage, "_backend", storage) if backend else storage


def _trial_id(trial: optuna.trial.FrozenTrial | optuna.Trial) -> int:
    """The trial's id in the storage: what the storage methods take; Optuna keeps it private on trial objects."""
    return trial._trial_id


def _heartbeat_interval(storage: Any) -> int | None:
    """The storage's heartbeat interval (seconds), ``None`` when it has no heartbeat (journal, in-memory)."""
    get = getattr(storage, "get_heartbeat_interval", None)
    return get() if callable(get) else None


def _stale_trial_ids(study: optuna.Study) -> set[int]:
    """Ids of RUNNING trials whose heartbeat is older than the grace period (Optuna's own query; it is private,
    and its public wrapper ``fail_stale_trials`` fails the trials before their reason can be recorded)."""
    storage = study_storage(study)
    if _heartbeat_interval(storage) is None:
        return set()
    return set(storage._get_stale_trial_ids(storage.get_study_id_from_name(study.study_name)))


def _grace_period(study: optuna.Study, default: float = 60.0) -> float:
    return float(getattr(study_storage(study, backend=True), "grace_period", None) or default)


@contextlib.contextmanager
def heartbeat(study: optuna.Study, trial: optuna.Trial) -> Iterator[None]:
    """Record the trial's heartbeat every interval while the block runs, so workers elsewhere can tell that it is
    alive (``study.optimize`` does this itself; with ask-and-tell it is ours to do). Public storage methods only."""
    storage = study_storage(study)
    interval = _heartbeat_interval(storage)
    if interval is None:
        yield
        return
    trial_id, stop = _trial_id(trial), threading.Event()

    def beat() -> None:
        while True:
            storage.record_heartbeat(trial_id)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-trial-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _dead_reason(trial: optuna.trial.FrozenTrial, stale: set[int], grace_s: float) -> str | None:
    """Why a RUNNING trial's worker is known to be dead, or None while it may be alive."""
    if _trial_id(trial) in stale:
        return "worker stopped sending heartbeats (killed, crashed or its machine was lost)"
    host, pid = trial.user_attrs.get(TrialAttr.HOST), trial.user_attrs.get(TrialAttr.PID)
    # pid fast path: a heartbeat goes stale only after the grace period (>= 60 s), a dead pid on this host is known now
    if host == HOST and pid is not None and (int(pid) == os.getpid() or not _pid_alive(int(pid))):
        return "worker process died (killed or crashed)"
    # asked, but its worker died before recording where it runs (and before any heartbeat): after the grace period
    if host is None and trial.datetime_start and (datetime.now() - trial.datetime_start).total_seconds() > grace_s:
        return "worker died right after asking for the trial"
    return None


def recover_dead_trials(study: optuna.Study, tracker: Tracker, retry_failed: int) -> list[int]:
    """Mark RUNNING trials whose worker died as failed (Optuna and MLflow), and re-enqueue them if configured.

    A trial of this host whose recorded PID is gone is recovered at once; trials of other hosts once their heartbeat
    is older than the grace period. The reason is recorded *before* the trial is set to FAIL (a finished trial's
    attributes can no longer be changed), and only the process whose RUNNING -> FAIL transition succeeds re-enqueues
    it and ends its MLflow run, so several workers starting at once recover a trial exactly once.
    """
    storage = study_storage(study)
    stale = _stale_trial_ids(study)
    grace_s = _grace_period(study) if _heartbeat_interval(storage) is not None else 60.0
    recovered = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        reason = _dead_reason(trial, stale, grace_s)
        if reason is None:
            continue
        try:
            trial_id = _trial_id(trial)
            storage.set_trial_user_attr(trial_id, TrialAttr.WORKER_DIED, True)
            storage.set_trial_user_attr(trial_id, TrialAttr.FAIL_REASON, reason)
            if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another process recovered it first (or its worker finished it after all)
        run_id = trial.user_attrs.get(TrialAttr.MLFLOW_RUN)
        if run_id:
            tracker.set_tags(run_id, {Tag.STATUS: "failed", Tag.FAIL_REASON: reason})
            tracker.end_run(run_id, "FAILED")
        attempt = int(trial.user_attrs.get(TrialAttr.ATTEMPT, 0))
        if attempt < retry_failed:
            retry = {TrialAttr.RETRY_OF: trial.number, TrialAttr.ATTEMPT: attempt + 1}
            study.enqueue_trial(trial.params, user_attrs=retry)
        recovered.append(trial.number)
    close_orphan_runs(study, tracker)
    return recovered


def close_orphan_runs(study: optuna.Study, tracker: Tracker) -> list[str]:
    """End MLflow trial runs left RUNNING although their Optuna trial is over (a worker killed between Optuna's
    bookkeeping and MLflow's, or a trial failed from outside), with the status the trial ended in."""
    if not tracker.enabled or tracker.experiment_id is None:
        return []
    try:
        runs = tracker.client.search_runs(
            [tracker.experiment_id],
            filter_string=f"attributes.status = 'RUNNING' and tags.`{Tag.STUDY}` = '{study.study_name}'",
            max_results=5000,
        )
    except Exception as exc:  # a tracking hiccup must not stop the study
        log.debug("could not look for orphan MLflow runs: %s", exc)
        return []
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    closed = []
    for run in runs:
        number = run.data.tags.get(Tag.TRIAL_NUMBER)
        trial = by_number.get(int(number)) if number and number.isdigit() else None
        if trial is None or not trial.state.is_finished():
            continue  # the parent run, or a trial still running somewhere
        if trial.state == TrialState.FAIL:
            status = "KILLED" if trial.user_attrs.get(TrialAttr.INTERRUPTED) else "FAILED"
            reason = trial.user_attrs.get(TrialAttr.FAIL_REASON) or "worker process died"
            tracker.set_tags(run.info.run_id, {Tag.STATUS: "failed", Tag.FAIL_REASON: reason})
        else:
            status = "FINISHED"
            tracker.set_tags(run.info.run_id, {Tag.STATUS: trial.state.name.lower()})
        tracker.end_run(run.info.run_id, status)
        closed.append(run.info.run_id)
    return closed
