"""Helpers for tests that drive a real MLflow server and look at its UI in headless Chromium.

- :class:`MlflowServer` starts ``mlflow server`` on a free loopback port with a database backend (SQLite file) and a
  local ``--artifacts-destination``, waits for ``/health`` and stops the whole process group on exit.
- :func:`chromium_path` finds the system Chromium (Debian's ``chromium`` package; ``.ci/run`` installs it). Playwright
  drives it through ``executable_path``: never ``playwright install`` (no browser downloads here).
- :func:`launch_chromium` starts it headless with background networking off (outside connections are refused on CI
  machines; Chromium would otherwise keep trying to reach update, sync and field-trial servers).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO_ROOT / "test-artifacts"  # gitignored; CI keeps what the tests leave there

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def chromium_path() -> str | None:
    """``$CHROMIUM`` if set, else the first system Chromium found; None when there is none."""
    env = os.environ.get("CHROMIUM")
    if env:
        return env if os.access(env, os.X_OK) else None
    for candidate in CHROMIUM_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("chromium")


def launch_chromium(playwright: Any, executable: str) -> Any:
    return playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)


def artifacts_dir(name: str) -> Path:
    path = ARTIFACTS / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 with a SQLite database backend and local artifact storage under ``root``.

    Use as a context manager; ``url`` is ready (``/health`` answered OK) inside the block. The server runs in its own
    session so that stopping it also stops its uvicorn and job workers.
    """

    def __init__(self, root: Path, startup_timeout: float = 180.0) -> None:
        self.root = root
        self.startup_timeout = startup_timeout
        self.port = 0
        self.url = ""
        self.log_path = root / "mlflow-server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> MlflowServer:
        self.root.mkdir(parents=True, exist_ok=True)
        last_error = ""
        for _ in range(2):  # a second try on a new port if the first one was taken in the meantime
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            self._start()
            try:
                self._wait_healthy()
                return self
            except RuntimeError as exc:
                last_error = str(exc)
                self.stop()
                if "address already in use" not in last_error.lower():
                    break
        raise RuntimeError(last_error)

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
        # no background job runner (7 huey consumer processes): the UI's runs pages do not need it; starts ~7 s faster
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        cmd = [
            sys.executable, "-m", "mlflow", "server",
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--workers", "1",
            "--backend-store-uri", f"sqlite:///{(self.root / 'mlflow.db').resolve()}",
            "--artifacts-destination", str((self.root / "artifacts").resolve()),
        ]  # fmt: skip
        log = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(
                cmd, cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        finally:
            log.close()

    def _wait_healthy(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        raise RuntimeError(f"mlflow server not healthy after {self.startup_timeout:.0f}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL after 15 s."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        # children that outlived the leader (uvicorn / job workers) share its group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
