"""Real services for tests: a throw-away PostgreSQL server on loopback.

Debian/Ubuntu's ``postgresql`` package puts the server binaries in ``/usr/lib/postgresql/<version>/bin`` (not on
PATH); other systems put ``initdb``/``pg_ctl`` on PATH. ``.ci/run`` installs the package. The server runs from a
fresh data folder in /tmp, listens on 127.0.0.1 on a free port (its unix socket in the same temporary folder, so it
never clashes with a system cluster), with password authentication, and is stopped and deleted by :meth:`stop`.
PostgreSQL refuses to run as root: as root the commands run as the ``postgres`` user (``runuser``/``su``), which owns
the temporary folder.

    server = start_postgres()           # or postgres_or_skip() in a fixture
    server.create_database("optuna")
    url = server.url("optuna")          # postgresql://sweeps:<password>@127.0.0.1:<port>/optuna
    server.stop()
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

NOT_INSTALLED = "PostgreSQL server not installed; .ci/run installs it (apt-get install postgresql)"

_BLANK_MLFLOW: Path | None = None


def blank_mlflow_db(destination: Path) -> Path:
    """Copy an empty, fully migrated MLflow SQLite store to ``destination`` (a file path). MLflow runs its schema
    migrations on a new store, several seconds each time; tests of something else make it once per session."""
    global _BLANK_MLFLOW
    if _BLANK_MLFLOW is None or not _BLANK_MLFLOW.exists():
        from mlflow.tracking import MlflowClient

        folder = Path(tempfile.mkdtemp(prefix="sweeps-blank-mlflow-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}").search_experiments()
        _BLANK_MLFLOW = folder / "mlflow.db"
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(_BLANK_MLFLOW, destination)
    return destination


class ServiceUnavailable(RuntimeError):
    """The service cannot be started here; the message says why (tests skip with it)."""


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def find_postgres_bin() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``: the newest Debian-style versioned folder, else PATH."""
    def version(path: str) -> tuple[int, ...]:
        match = re.search(r"/postgresql/([\d.]+)/bin/", path)
        return tuple(int(x) for x in match.group(1).split(".")) if match else (0,)

    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version, reverse=True)
    for initdb in candidates:
        folder = Path(initdb).parent
        if (folder / "pg_ctl").exists() and (folder / "postgres").exists():
            return folder
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).parent
    return None


def _runner_prefix() -> tuple[list[str], str | None]:
    """How to run server commands: as ourselves, or (as root) as the ``postgres`` user."""
    if os.geteuid() != 0:
        return [], None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise ServiceUnavailable("running as root and there is no 'postgres' user to run the server as") from None
    if shutil.which("runuser"):
        return ["runuser", "-u", "postgres", "--"], "postgres"
    if shutil.which("su"):
        return ["su", "postgres", "-s", "/bin/sh", "-c"], "postgres"  # the command is passed as one string
    raise ServiceUnavailable("running as root without runuser/su to drop to the 'postgres' user")


@dataclass
class PostgresServer:
    bin_dir: Path
    root: Path
    port: int
    user: str = "sweeps"
    password: str = field(default_factory=lambda: "pw-" + secrets.token_hex(8))
    host: str = "127.0.0.1"
    _prefix: list[str] = field(default_factory=list)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        return self.root / "server.log"

    def url(self, database: str, driver: str = "postgresql") -> str:
        return f"{driver}://{self.user}:{self.password}@{self.host}:{self.port}/{database}"

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd = [str(a) for a in args]
        if self._prefix[-1:] == ["-c"]:  # su -c takes one shell string
            import shlex

            cmd = [*self._prefix, " ".join(shlex.quote(c) for c in cmd)]
        else:
            cmd = [*self._prefix, *cmd]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.root)
        if result.returncode != 0:
            log = self.log_file.read_text()[-2000:] if self.log_file.exists() else ""
            raise ServiceUnavailable(
                f"{' '.join(cmd[:8])} failed ({result.returncode}): {result.stderr.strip()[-2000:]}\n{log}"
            )
        return result

    def start(self) -> None:
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        self._chown(pwfile)
        self._run(
            self.bin_dir / "initdb", "-D", self.data_dir, "-U", self.user, f"--pwfile={pwfile}",
            "--auth=scram-sha-256", "-E", "UTF8", "--no-instructions", timeout=120,
        )
        pwfile.unlink()
        options = (
            f"-c listen_addresses={self.host} -c port={self.port} -c unix_socket_directories={self.root} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=100"
        )
        self._run(self.bin_dir / "pg_ctl", "-D", self.data_dir, "-o", options, "-l", self.log_file, "-w",
                  "-t", "60", "start", timeout=90)
        self._wait_ready()

    def _chown(self, path: Path) -> None:
        if self._prefix:
            entry = pwd.getpwnam("postgres")
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _wait_ready(self, timeout: float = 30) -> None:
        import psycopg2

        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg2.connect(
                    host=self.host, port=self.port, user=self.user, password=self.password, dbname="postgres"
                ).close()
                return
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def create_database(self, name: str) -> str:
        """Create ``name`` (owned by the server's user); returns its URL."""
        import psycopg2

        conn = psycopg2.connect(
            host=self.host, port=self.port, user=self.user, password=self.password, dbname="postgres"
        )
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return self.url(name)

    def stop(self) -> None:
        try:
            if (self.data_dir / "postmaster.pid").exists():
                self._run(self.bin_dir / "pg_ctl", "-D", self.data_dir, "-m", "immediate", "-w", "stop", timeout=60)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def start_postgres() -> PostgresServer:
    """Start a fresh server; :class:`ServiceUnavailable` says why it cannot be done here."""
    bin_dir = find_postgres_bin()
    if bin_dir is None:
        raise ServiceUnavailable(NOT_INSTALLED)
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        raise ServiceUnavailable("psycopg2 not installed (pip install -e '.[dev]' or psycopg2-binary)") from None
    prefix, owner = _runner_prefix()
    root = Path(tempfile.mkdtemp(prefix="sweeps-pg-"))
    server = PostgresServer(bin_dir=bin_dir, root=root, port=free_port(), _prefix=prefix)
    if owner:
        server._chown(root)
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    return server


def postgres_or_skip() -> PostgresServer:
    """:func:`start_postgres`, or skip the calling test (module) with the reason."""
    import pytest

    try:
        return start_postgres()
    except ServiceUnavailable as exc:
        pytest.skip(str(exc))
