"""``python -m sweeps dashboard STUDY``: optuna-dashboard and the MLflow UI on the study's own stores, on loopback.

Both are started as child processes in their own session, so a Ctrl-C in the terminal reaches this process only and
the servers are stopped here, in order, instead of each printing its own traceback. Loopback (127.0.0.1) only: the
stores hold everything the study logged, and neither server has authentication.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweeps.errors import EXIT_OK, SweepsError

log = logging.getLogger(__name__)

HOST = "127.0.0.1"


@dataclass
class Server:
    name: str
    url: str
    command: list[str]
    ready_path: str = ""  # polled until it answers; the URL itself when empty
    process: subprocess.Popen | None = None


def _sibling_script(name: str) -> str | None:
    """A console script of this interpreter's environment (a venv's ``bin/`` need not be on PATH)."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else shutil.which(name)


def plan_servers(spec: Any, out: Path, optuna_port: int | None, mlflow_port: int | None) -> list[Server]:
    """The servers to start for this study (a port of None: that one is not started)."""
    from sweeps.study import storage_url

    servers = []
    if optuna_port is not None:
        script = _sibling_script("optuna-dashboard")
        if script is None:
            raise SweepsError("dashboard: optuna-dashboard is not installed: pip install 'freeze-sweeps[dashboard]' "
                              "(or pass --no-optuna)")
        servers.append(Server("optuna-dashboard", f"http://{HOST}:{optuna_port}/",
                              [script, storage_url(spec), "--host", HOST, "--port", str(optuna_port)]))
    if mlflow_port is not None:
        uri = spec.tracking.uri  # resolved when the study file loads (the study folder's store by default)
        if uri.startswith(("http://", "https://")):
            log.info("MLflow: the study tracks to a server already: %s", uri)
        else:
            servers.append(Server("MLflow UI", f"http://{HOST}:{mlflow_port}/",
                                  [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
                                   "--host", HOST, "--port", str(mlflow_port), "--workers", "1"],
                                  ready_path="health"))  # one worker: a viewer, not a shared tracking server
    return servers


def _wait_ready(server: Server, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert server.process is not None
        if server.process.poll() is not None:
            raise SweepsError(f"dashboard: {server.name} exited with code {server.process.returncode} "
                              f"(is port {server.url.rsplit(':', 1)[1].strip('/')} in use?)")
        try:
            with urllib.request.urlopen(server.url + server.ready_path, timeout=2):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    raise SweepsError(f"dashboard: {server.name} did not answer at {server.url} within {timeout_s:.0f} s")


def _stop(servers: list[Server]) -> None:
    """SIGTERM to each server's process group (uvicorn and gunicorn have worker children), SIGKILL after 15 s."""
    for server in servers:
        if server.process is not None and server.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.process.pid, signal.SIGTERM)
    for server in servers:
        if server.process is None:
            continue
        try:
            server.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait()


def serve(servers: list[Server], timeout_s: float = 180.0) -> int:
    """Start the servers, print their URLs once they answer, wait for Ctrl-C (or SIGTERM), stop them; exit 0.
    A Ctrl-C while they start raises KeyboardInterrupt as anywhere else; they are stopped either way."""
    if not servers:
        raise SweepsError("dashboard: nothing to start (both --no-optuna and --no-mlflow)")
    stop = {"now": False}

    def on_signal(signum: int, frame: Any) -> None:
        stop["now"] = True

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM while starting: same as Ctrl-C
    try:
        for server in servers:
            server.process = subprocess.Popen(server.command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL, start_new_session=True)
        for server in servers:
            _wait_ready(server, timeout_s)
        for s in previous:
            signal.signal(s, on_signal)
        for server in servers:
            print(f"{server.name}: {server.url}", flush=True)
        print("Ctrl-C to stop.", flush=True)
        while not stop["now"]:
            for server in servers:
                assert server.process is not None
                if server.process.poll() is not None:
                    raise SweepsError(f"dashboard: {server.name} stopped (exit code {server.process.returncode})")
            time.sleep(0.3)
        print("stopping the dashboards", flush=True)
        return EXIT_OK
    finally:
        _stop(servers)
        for s, handler in previous.items():
            signal.signal(s, handler)
