"""Trials left behind by a worker that died, and what counts toward ``n_trials``.

How ``n_trials`` is counted: trials that ran to an end (complete, pruned, failed by their own error) plus
trials still running. Trials that were interrupted (Ctrl-C) or whose worker died do not use up the budget:
they are retried with the same parameters (``optuna.retry_failed`` times) or their slot goes to a new
sample.
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import datetime

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


def _dead_reason(trial: optuna.trial.FrozenTrial, stale: set[int], grace_s: float) -> str | None:
    """Why a RUNNING trial's worker is known to be dead, or None while it may be alive."""
    if trial._trial_id in stale:
        return "worker stopped sending heartbeats (killed, crashed or its machine was lost)"
    host, pid = trial.user_attrs.get(TrialAttr.HOST), trial.user_attrs.get(TrialAttr.PID)
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
    from optuna.storages._heartbeat import is_heartbeat_enabled

    storage = study._storage
    stale: set[int] = set()
    grace_s = 60.0
    if is_heartbeat_enabled(storage):
        stale = set(storage._get_stale_trial_ids(study._study_id))
        backend = getattr(storage, "_backend", storage)
        grace_s = float(getattr(backend, "grace_period", None) or grace_s)
    recovered = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        reason = _dead_reason(trial, stale, grace_s)
        if reason is None:
            continue
        try:
            storage.set_trial_user_attr(trial._trial_id, TrialAttr.WORKER_DIED, True)
            storage.set_trial_user_attr(trial._trial_id, TrialAttr.FAIL_REASON, reason)
            if not storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
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


def _heartbeat(study: optuna.Study, trial: optuna.Trial):
    from optuna.storages._heartbeat import get_heartbeat_thread

    return get_heartbeat_thread(trial._trial_id, study._storage)
