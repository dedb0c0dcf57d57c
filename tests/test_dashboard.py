"""``python -m sweeps dashboard``: real optuna-dashboard and MLflow UI processes on loopback, HTTP GET, SIGINT.

The study is made directly in the stores the command reads (an Optuna SQLite study with named metrics and an MLflow
SQLite store), so the test needs no training; what is tested is the command: what it starts, where, what it prints,
and that Ctrl-C stops every server and exits 0.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from e2e_helpers import make_dataset, make_tiny_model, write_study
from services import free_port

pytestmark = pytest.mark.slow


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read()


@pytest.mark.timeout(420)
def test_dashboard_serves_both_uis_on_loopback_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    pytest.importorskip("optuna_dashboard", reason="optuna-dashboard not installed (dashboard/dev extras)")
    import optuna
    from mlflow.tracking import MlflowClient

    out = tmp_path / "out"
    out.mkdir()
    study_file = write_study(tmp_path / "study.yaml", make_tiny_model(tmp_path / "model"),
                             make_dataset(tmp_path / "data"))
    from sweeps.config import load_spec
    from sweeps.study.storage import open_study

    study = open_study(load_spec(str(study_file), [], output=str(out)))  # names its metrics, as `run` does
    study.add_trial(optuna.trial.create_trial(value=0.75))
    client = MlflowClient(f"sqlite:///{(out / 'mlflow.db').resolve()}")
    client.create_experiment("tiny")

    port, mlflow_port = free_port(), free_port()
    project = str(Path(__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([project, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sweeps", "dashboard", str(study_file), "--output", str(out), "--port", str(port),
         "--mlflow-port", str(mlflow_port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path,
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 280
        while not any(line.startswith("Ctrl-C") for line in lines):
            assert time.monotonic() < deadline, f"no URLs printed: {lines}"
            line = proc.stdout.readline()
            assert line or proc.poll() is None, f"dashboard exited early ({proc.poll()}): {lines}"
            lines.append(line.strip())
        urls = dict(re.match(r"(.+?): (http://\S+)", line).groups() for line in lines if "http://" in line)
        assert urls == {"optuna-dashboard": f"http://127.0.0.1:{port}/", "MLflow UI": f"http://127.0.0.1:{mlflow_port}/"}

        status, body = _get(f"http://127.0.0.1:{port}/api/studies")
        assert status == 200
        studies = json.loads(body)["study_summaries"]
        assert [s["study_name"] for s in studies] == ["tiny"]
        _, body = _get(f"http://127.0.0.1:{port}/api/studies/{studies[0]['study_id']}")
        assert json.loads(body)["objective_names"] == ["accuracy"]  # not "Objective 0"
        api = f"http://127.0.0.1:{mlflow_port}/ajax-api/2.0/mlflow/experiments/get-by-name?experiment_name=tiny"
        status, body = _get(api)
        assert status == 200 and json.loads(body)["experiment"]["name"] == "tiny"

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        rest = proc.stdout.read()
        assert "Traceback" not in rest, rest
    finally:
        if proc.poll() is None:  # Ctrl-C first: a SIGKILL would leave its servers running
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    for p in (port, mlflow_port):  # both servers are gone with it
        with pytest.raises(OSError):
            _get(f"http://127.0.0.1:{p}/")


def test_help_has_no_raw_rst_and_lists_the_dashboard() -> None:
    from sweeps.cli import build_parser

    text = build_parser().format_help()
    assert "``" not in text and "dashboard" in text
