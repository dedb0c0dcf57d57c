"""Where the study lives: the Optuna storage, cross-process locks, and creating or resuming the study.

Several processes on one study share it through this storage (SQLite by default, PostgreSQL across
machines); nothing else coordinates them, so the get-or-create steps here are done under a lock.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna

from sweeps.config import StudySpec
from sweeps.errors import SpecError, SweepsError
from sweeps.records import StudyAttr, TrialAttr
from sweeps.study.sampling import make_pruner, make_sampler


# -- construction -------------------------------------------------------------------------------------------------
def storage_url(spec: StudySpec) -> str:
    """The study's storage URL (resolved by :mod:`sweeps.config`), with an installed PostgreSQL driver."""
    assert spec.optuna.storage is not None, "an unresolved spec: use sweeps.config.load_spec/parse_spec"
    return database_url(spec.optuna.storage)


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


def open_storage(spec: StudySpec) -> optuna.storages.BaseStorage:
    """Optuna storage with heartbeats (RDB) so trials of a dead worker on another machine are detected too."""
    url = storage_url(spec)
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
        from sweeps.config import mask_secrets

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
    path = lock_file_target(url)
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


def lock_file_target(url: str) -> Path | None:
    """The database file a lock file for ``url`` goes next to (None: no file to lock). The URL's query is dropped:
    ``sqlite:///optuna.db?password=...`` made a lock file named ``optuna.db?password=S3CRETPW.lock``, a secret in a
    file name that every ``ls`` and backup listing shows."""
    scheme = url.split(":", 1)[0].split("+", 1)[0]
    if scheme == "sqlite":
        database = url.split(":///", 1)[1] if ":///" in url else ""
        database = database.split("?", 1)[0]
        return Path(database) if database and not database.startswith(":memory:") else None
    if url.startswith("journal:"):
        return Path(url.split(":", 1)[1].split("?", 1)[0])
    return None


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


def open_study(spec: StudySpec) -> optuna.Study:
    """Create or resume the study; refuse to resume when the study file changed in a way that makes old trials
    incomparable (model, data, metric, CV, objectives)."""
    study_name = spec.optuna.study_name
    dirs = spec.directions
    storage = open_storage(spec)
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
    old = study.user_attrs.get(StudyAttr.FINGERPRINT)
    if old is not None and old != fingerprint and not _has_finished_trials(study):
        old = None  # nothing to compare with yet: a study without finished trials takes the new fingerprint
    if old is None:
        study.set_user_attr(StudyAttr.FINGERPRINT, fingerprint)
        study.set_user_attr(StudyAttr.OBJECTIVES, spec.objective_metrics)
    elif old != fingerprint:
        raise SpecError(
            "task",
            f"study {study_name!r} already has trials for a different model/data/metric (the study file changed in a "
            "way that makes old and new trials incomparable). Use a new study name (--set name=...) or a new "
            "--output folder; harmless changes such as optuna.n_trials are accepted.",
        )
    _name_metrics(study, list(spec.objective_metrics))
    return study


def _has_finished_trials(study: optuna.Study) -> bool:
    """Whether any trial ran to an end (surplus asks, which never ran, do not count)."""
    return any(
        t.state.is_finished() and not t.user_attrs.get(TrialAttr.SURPLUS) for t in study.get_trials(deepcopy=False)
    )


def _name_metrics(study: optuna.Study, names: list[str]) -> None:
    """Objective names for optuna-dashboard and ``trials_dataframe`` (else "Objective 0"); set on resume too, so
    studies created before this existed get them."""
    import warnings

    if study.metric_names == names:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(names)
