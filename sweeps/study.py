"""The Optuna study: storage, sampler, pruner, and the trial loop with its bookkeeping.

Trials are driven with Optuna's ask-and-tell interface rather than ``study.optimize`` because every way a trial can
end must be recorded in *both* Optuna and MLflow: complete, pruned, failed with a reason (NaN loss, out of memory,
bad hyperparameters), interrupted by Ctrl-C, or left behind by a worker that was killed. Nothing here schedules work
between workers: several processes on one study share it through Optuna's storage (SQLite by default, PostgreSQL
across machines).

How ``n_trials`` is counted: trials that ran to an end (complete, pruned, failed by their own error) plus trials still
running. Trials that were interrupted (Ctrl-C) or whose worker died do not use up the budget: they are retried with the
same parameters (``optuna.retry_failed`` times) or their slot goes to a new sample.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from sweeps.errors import SpecError, SweepsError
from sweeps.metrics import direction
from sweeps.tracking import RUN_ATTR, Tracker, default_tracking_uri

log = logging.getLogger(__name__)

FINGERPRINT_ATTR = "spec_fingerprint"
HOST = socket.gethostname()


# -- construction -------------------------------------------------------------------------------------------------
def storage_url(spec: Any, output: Path) -> str:
    return database_url(spec.optuna.storage or f"sqlite:///{(output / 'optuna.db').resolve()}")


def database_url(url: str) -> str:
    """A PostgreSQL URL with a driver that is installed. SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3,
    2.0 to psycopg2; the dev extras and the Docker image ship psycopg2-binary, so without this a documented
    ``postgresql://user:pw@host/db`` failed with "No module named 'psycopg'". ``postgres://`` (Heroku style) too."""
    import importlib.util

    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("postgresql", "postgres"):
        return url
    if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
        return f"postgresql+psycopg2://{rest}"
    return f"postgresql://{rest}"


def open_storage(spec: Any, output: Path) -> optuna.storages.BaseStorage:
    """Optuna storage with heartbeats (RDB) so trials of a dead worker on another machine are detected too."""
    url = storage_url(spec, output)
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        path = Path(url.split(":", 1)[1])
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": 120}
    import warnings

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # we run the heartbeat thread ourselves around each asked trial (ask/tell), which Optuna warns about
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    try:
        # workers starting together on a fresh database raced to create Optuna's tables ("duplicate key ... pg_type")
        with storage_lock(url, "freeze-sweeps:create-storage"):
            storage = optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=spec.optuna.heartbeat_interval,
                grace_period=max(2 * spec.optuna.heartbeat_interval, 60),
            )
    except Exception as exc:
        from sweeps.spec import mask_secrets

        detail = mask_secrets(f"{type(exc).__name__}: {exc}")
        raise SweepsError(f"optuna.storage: cannot open {mask_secrets(url)}: {detail}") from exc
    if url.startswith("sqlite"):
        _serialize_sqlite(storage.engine)
    return storage


@contextlib.contextmanager
def storage_lock(url: str, name: str, engine: Any = None) -> Iterator[None]:
    """An exclusive lock shared by every process using the storage at ``url`` — on every machine for PostgreSQL
    (advisory lock) and MySQL (``GET_LOCK``), on this machine for SQLite and journal files (a lock file next to the
    database, which is where those storages can be shared) — around get-or-create steps that must happen once: the
    storage's tables, the study's MLflow parent run. ``engine``: an existing SQLAlchemy engine for ``url``."""
    scheme = url.split(":", 1)[0].split("+", 1)[0]
    if scheme in ("postgresql", "mysql"):
        import sqlalchemy

        own = engine is None
        if own:
            engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
        lock, unlock = (
            ("SELECT pg_advisory_lock(:key)", "SELECT pg_advisory_unlock(:key)")
            if scheme == "postgresql"
            else ("SELECT GET_LOCK(:name, 600)", "SELECT RELEASE_LOCK(:name)")
        )
        bind = {"key": key} if scheme == "postgresql" else {"name": name[:64]}
        try:
            with engine.connect() as connection:
                connection.execute(sqlalchemy.text(lock), bind)
                connection.commit()
                try:
                    yield
                finally:
                    connection.execute(sqlalchemy.text(unlock), bind)
                    connection.commit()
        finally:
            if own:
                engine.dispose()
        return
    path = None
    if scheme == "sqlite":
        database = url.split(":///", 1)[1] if ":///" in url else ""
        path = Path(database) if database and not database.startswith(":memory:") else None
    elif url.startswith("journal:"):
        path = Path(url.split(":", 1)[1])
    try:
        import fcntl
    except ImportError:  # Windows: no cross-process file lock here
        path = None
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _serialize_sqlite(engine: Any) -> None:
    """Make every SQLite transaction ``BEGIN IMMEDIATE`` so workers sharing ``optuna.db`` serialise their writes.

    Python's sqlite3 driver only opens a transaction at the first INSERT/UPDATE, so Optuna's read-then-write steps
    (``SELECT ... FOR UPDATE`` is a no-op in SQLite) are not atomic across processes: two workers popping the queue
    both saw the same WAITING trial, both set it RUNNING and ran the same trial number (the second then crashed on
    ``tell``). With the write lock taken at BEGIN the second waits (``timeout``) and then sees the trial taken.
    """
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _no_driver_transactions(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself (below)

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened while the storage was created predate the hooks


def objectives(spec: Any) -> list[tuple[str, str]]:
    """(metric, direction) per objective."""
    out = []
    for item in spec.optuna.objectives:
        if isinstance(item, str):
            out.append((item, direction(item)))
        else:
            out.append((item.metric, item.direction or direction(item.metric)))
    return out


def make_sampler(spec: Any) -> optuna.samplers.BaseSampler:
    seed = spec.optuna.sampler_seed if spec.optuna.sampler_seed is not None else spec.training.seed
    name = spec.optuna.sampler
    if name == "tpe":
        return TrialSeededSampler(lambda s: optuna.samplers.TPESampler(seed=s), seed)
    if name == "random":
        return TrialSeededSampler(lambda s: optuna.samplers.RandomSampler(seed=s), seed)
    if name == "grid":
        from sweeps.search import grid_search_space

        space = grid_search_space(spec)
        return TrialSeededSampler(lambda s: optuna.samplers.GridSampler(space, seed=s), seed)
    if name == "cmaes":
        return TrialSeededSampler(lambda s: optuna.samplers.CmaEsSampler(seed=s), seed)
    if name == "nsga2":
        return TrialSeededSampler(lambda s: optuna.samplers.NSGAIISampler(seed=s), seed)
    if name == "qmc":  # its sequence position is kept in the study, so one seed (scramble) for every worker is right
        return optuna.samplers.QMCSampler(seed=seed)
    raise SpecError("optuna.sampler", f"unknown sampler {name!r}")


def trial_seed(seed: int, number: int) -> int:
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """A sampler re-created for every trial with a seed derived from (``seed``, trial number).

    A sampler seeded once per process replays the same random draws in every process: two workers on one study (or a
    resumed run) proposed identical parameters for different trial numbers — TPE's random start-up trials, the random
    sampler's every trial. Seeding from the trial number keeps a study reproducible (same file, same seed, same
    trials) while every trial of every worker gets its own draws. The samplers' state lives in the study storage, so
    building a fresh one per trial loses nothing.
    """

    def __init__(self, build: Callable[[int], optuna.samplers.BaseSampler], seed: int) -> None:
        self._build = build
        self._seed = seed
        self._sampler = build(seed)

    def __repr__(self) -> str:
        return f"TrialSeededSampler({self._sampler!r}, seed={self._seed})"

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self._sampler = self._build(trial_seed(self._seed, trial.number))
        self._sampler.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
        return self._sampler.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, search_space: Any) -> dict:
        return self._sampler.sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: optuna.trial.FrozenTrial, param_name: str, param_distribution: Any
    ) -> Any:
        return self._sampler.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, state: TrialState, values: Any) -> None:
        self._sampler.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._sampler.reseed_rng()


def make_pruner(spec: Any) -> optuna.pruners.BasePruner:
    name = spec.optuna.pruner
    warmup = spec.optuna.pruner_warmup_epochs
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=warmup)
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, warmup))
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=spec.training.epochs)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise SpecError("optuna.pruner", f"unknown pruner {name!r}")


def open_study(spec: Any, output: Path) -> optuna.Study:
    """Create or resume the study; refuse to resume when the study file changed in a way that makes old trials
    incomparable (model, data, metric, CV, objectives)."""
    study_name = spec.optuna.study_name or spec.name
    dirs = [d for _, d in objectives(spec)]
    storage = open_storage(spec, output)
    study = optuna.create_study(
        storage=storage,
        sampler=make_sampler(spec),
        pruner=make_pruner(spec),
        study_name=study_name,
        directions=dirs,
        load_if_exists=True,
    )
    if [d.name.lower() for d in study.directions] != dirs:
        raise SpecError(
            "optuna.objectives",
            f"study {study_name!r} exists with directions {[d.name.lower() for d in study.directions]}; "
            "give a new optuna.study_name (or name) to start a new study",
        )
    fingerprint = spec.fingerprint()
    old = study.user_attrs.get(FINGERPRINT_ATTR)
    if old is None:
        study.set_user_attr(FINGERPRINT_ATTR, fingerprint)
        study.set_user_attr("objectives", [m for m, _ in objectives(spec)])
    elif old != fingerprint:
        raise SpecError(
            "task",
            f"study {study_name!r} already has trials for a different model/data/metric (the study file changed in a "
            "way that makes old and new trials incomparable). Use a new study name (--set name=...) or a new "
            "--output folder; harmless changes such as optuna.n_trials are accepted.",
        )
    return study


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
    if trial.user_attrs.get("surplus"):
        return False
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING):
        return True
    if trial.state == TrialState.FAIL:
        # our own bookkeeping always records a fail_reason before telling FAIL: a FAIL without one was failed from
        # outside (e.g. Optuna's own stale-trial check), i.e. its worker died
        return not (
            trial.user_attrs.get("interrupted")
            or trial.user_attrs.get("worker_died")
            or "fail_reason" not in trial.user_attrs
        )
    return False


def budget_used(study: optuna.Study) -> int:
    return sum(counts_toward_budget(t) for t in study.get_trials(deepcopy=False))


def _dead_reason(trial: optuna.trial.FrozenTrial, stale: set[int], grace_s: float) -> str | None:
    """Why a RUNNING trial's worker is known to be dead, or None while it may be alive."""
    if trial._trial_id in stale:
        return "worker stopped sending heartbeats (killed, crashed or its machine was lost)"
    host, pid = trial.user_attrs.get("host"), trial.user_attrs.get("pid")
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
            storage.set_trial_user_attr(trial._trial_id, "worker_died", True)
            storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason)
            if not storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another process recovered it first (or its worker finished it after all)
        run_id = trial.user_attrs.get(RUN_ATTR)
        if run_id:
            tracker.set_tags(run_id, {"sweeps.status": "failed", "sweeps.fail_reason": reason})
            tracker.end_run(run_id, "FAILED")
        attempt = int(trial.user_attrs.get("attempt", 0))
        if attempt < retry_failed:
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number, "attempt": attempt + 1})
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
            filter_string=f"attributes.status = 'RUNNING' and tags.`sweeps.study` = '{study.study_name}'",
            max_results=5000,
        )
    except Exception as exc:  # a tracking hiccup must not stop the study
        log.debug("could not look for orphan MLflow runs: %s", exc)
        return []
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    closed = []
    for run in runs:
        number = run.data.tags.get("optuna.trial_number")
        trial = by_number.get(int(number)) if number and number.isdigit() else None
        if trial is None or not trial.state.is_finished():
            continue  # the parent run, or a trial still running somewhere
        if trial.state == TrialState.FAIL:
            status = "KILLED" if trial.user_attrs.get("interrupted") else "FAILED"
            reason = trial.user_attrs.get("fail_reason") or "worker process died"
            tracker.set_tags(run.info.run_id, {"sweeps.status": "failed", "sweeps.fail_reason": reason})
        else:
            status = "FINISHED"
            tracker.set_tags(run.info.run_id, {"sweeps.status": trial.state.name.lower()})
        tracker.end_run(run.info.run_id, status)
        closed.append(run.info.run_id)
    return closed


@dataclass
class TrialReport:
    number: int
    state: str
    strategy: str
    values: list[float] | None
    metrics: dict[str, float] = field(default_factory=dict)
    reason: str = ""


def _heartbeat(study: optuna.Study, trial: optuna.Trial):
    from optuna.storages._heartbeat import get_heartbeat_thread

    return get_heartbeat_thread(trial._trial_id, study._storage)


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
        from sweeps.search import check_strategy_bounds
        from sweeps.trial import StudyContext, check_strategy, layer_spec

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
        from sweeps.search import suggest

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
        from sweeps.loop import TrialDiverged
        from sweeps.trial import release_memory, remove_dir, run_trial

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
        from sweeps.trial import remove_dir

        try:
            best = self.study.best_trials[0] if len(self.objectives) > 1 else self.study.best_trial
        except ValueError:
            return
        pointer = self.output / "models" / "best.json"
        previous = json.loads(pointer.read_text()).get("trial") if pointer.exists() else None
        if best.number == number:
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
    import pandas as pd

    probs = outcome.eval_probs
    frame = pd.DataFrame(probs, columns=[f"prob_{n}" for n in label_names])
    frame.insert(0, "example_id", outcome.oof_index if outcome.oof_index is not None else np.arange(len(probs)))
    frame.insert(1, "label", [label_names[i] for i in outcome.eval_labels])
    frame.insert(2, "prediction", [label_names[i] for i in probs.argmax(-1)])
    frame.to_csv(path, index=False)
