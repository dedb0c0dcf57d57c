"""The MLflow UI shows a study the way the README says: one parent run, nested trial runs, the contract's metrics.

A real ``mlflow server`` (SQLite database backend, proxied artifacts in tmp) on a free loopback port; a tiny study
(2 trials, 2 epochs) run with ``python -m sweeps run ... --set tracking.uri=http://127.0.0.1:PORT``; then the UI in
headless Chromium (Playwright driving the system ``chromium``): the runs table with the parent expanded and the metric
columns added, each trial's run page, the parent run's page (the best trial's metrics) and the report inside MLflow's
artifact view, with every embedded plot decoded by the browser. Screenshots go to ``test-artifacts/mlflow_ui/``.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from browser import MlflowServer, artifacts_dir, chromium_path, launch_chromium
from e2e_helpers import make_dataset, make_tiny_model, write_study

pytestmark = [pytest.mark.slow, pytest.mark.services]

# What the README tells users to add as columns; accuracy, F1, epoch time and memory are what this test is about.
UI_METRICS = ["accuracy", "f1_macro", "epoch_time_s", "peak_memory_mb"]
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def chromium() -> str:
    path = chromium_path()
    if path is None:
        pytest.skip("Chromium not found (/usr/bin/chromium): apt-get install chromium chromium-driver (.ci/run does)")
    pytest.importorskip("playwright.sync_api", reason="playwright not installed (it is in the dev extras)")
    return path


def _number(text: str) -> float:
    match = re.search(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?", text.replace(",", ""), re.IGNORECASE)
    assert match, f"no number in {text!r}"
    return float(match.group())


def _close(shown: str, value: float) -> bool:
    """The UI may round: the shown number equals the logged one to the shown precision (or 0.1 %)."""
    decimals = len(shown.split(".")[1]) if "." in shown else 0
    return math.isclose(_number(shown), value, rel_tol=1e-3, abs_tol=0.5 * 10**-decimals + 1e-12)


@pytest.mark.timeout(600)
def test_mlflow_ui_lists_parent_nested_trials_and_metrics(chromium: str, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient
    from playwright.sync_api import sync_playwright

    shots = artifacts_dir("mlflow_ui")
    for old in [*shots.glob("*.png"), *shots.glob("*.html")]:
        old.unlink()
    started = time.monotonic()
    model, data = make_tiny_model(tmp_path / "model"), make_dataset(tmp_path / "data")
    study = write_study(tmp_path / "study.yaml", model, data, name="ui-study")

    with MlflowServer(tmp_path / "server") as server:
        server_seconds = time.monotonic() - started
        # -- the study, over HTTP, through the real command line --------------------------------------------------
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
        proc = subprocess.run(
            [sys.executable, "-m", "sweeps", "run", str(study), "--output", str(tmp_path / "out"),
             "--set", f"tracking.uri={server.url}", "--set", "optuna.n_trials=2", "--set", "training.epochs=2"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=420,
        )  # fmt: skip
        assert proc.returncode == 0, f"sweeps run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        assert not (tmp_path / "out" / "mlflow.db").exists(), "tracking.uri was not used: a local store was made"
        # artifacts went through the server's proxy into --artifacts-destination
        assert any((tmp_path / "server" / "artifacts").rglob("epochs.json")), "no trial artifacts on the server"

        # -- what the server holds: the UI is checked against these ---------------------------------------------
        client = MlflowClient(tracking_uri=server.url)
        experiment = client.get_experiment_by_name("ui-study")
        assert experiment is not None
        runs = client.search_runs([experiment.experiment_id])
        parents = [r for r in runs if r.data.tags.get("sweeps.role") == "study"]
        trials = [r for r in runs if r.data.tags.get("sweeps.role") == "trial"]
        assert len(parents) == 1 and len(trials) == 2, [r.info.run_name for r in runs]
        parent = parents[0]
        for trial in trials:
            assert trial.data.tags["mlflow.parentRunId"] == parent.info.run_id
            assert set(UI_METRICS) <= set(trial.data.metrics), sorted(trial.data.metrics)
        study_seconds = time.monotonic() - started

        # -- the UI ---------------------------------------------------------------------------------------------
        page_errors: list[str] = []
        with sync_playwright() as pw:
            browser = launch_chromium(pw, chromium)
            try:
                page = browser.new_page(viewport={"width": 1920, "height": 1080})
                page.set_default_timeout(TIMEOUT_MS)
                page.on("pageerror", lambda exc: page_errors.append(str(exc)))
                try:
                    _check_runs_table(page, server.url, experiment.experiment_id, parent, trials, shots)
                    for trial in trials:
                        _check_run_page(page, server.url, experiment.experiment_id, parent, trial, shots)
                    best = next(t for t in trials
                                if t.data.tags["optuna.trial_number"] == parent.data.tags["sweeps.best.trial"])
                    _check_parent_run_page(page, server.url, experiment.experiment_id, parent, best, shots)
                    _check_report_in_artifact_view(page, server.url, experiment.experiment_id, parent, shots)
                except Exception as exc:
                    with contextlib.suppress(Exception):
                        page.screenshot(path=str(shots / "failure.png"), full_page=True)
                        (shots / "failure.html").write_text(page.content())
                    raise AssertionError(
                        f"MLflow UI check failed: {type(exc).__name__}: {exc}\nscreenshot: {shots / 'failure.png'}; "
                        f"page errors: {page_errors}; server log:\n{server.log_tail(10)}"
                    ) from exc
            finally:
                browser.close()

    taken = sorted(p.name for p in shots.glob("*.png"))
    total = time.monotonic() - started
    print(f"\nserver up {server_seconds:.0f}s, study done {study_seconds:.0f}s, total {total:.0f}s; {shots}: {taken}")


def _dismiss_assistant(page: Any) -> None:
    """MLflow 3 opens an assistant side panel that takes a third of the width; close it when present."""
    close = page.locator('button[data-component-id="mlflow.assistant.chat_panel.close"]')
    if close.count():
        with contextlib.suppress(Exception):
            close.first.click(timeout=5_000)


def _row(page: Any, run_id: str) -> Any:
    """The AG Grid row of a run (rows carry the run id; the scrolling, non-pinned part holds the metric cells)."""
    return page.locator(f'.ag-center-cols-container [role="row"][row-id="{run_id}"]')


def _check_runs_table(page: Any, url: str, exp_id: str, parent: Any, trials: list[Any], shots: Path) -> None:
    page.goto(f"{url}/#/experiments/{exp_id}/runs")
    parent_row = page.locator(f'[role="row"][row-id="{parent.info.run_id}"]').first
    parent_row.wait_for()
    _dismiss_assistant(page)
    assert parent_row.get_by_text(parent.info.run_name, exact=True).is_visible()
    page.screenshot(path=str(shots / "01_runs_table_parent.png"))

    # expand the parent: its nested trial runs appear under it (tick "show nested" is the older UI's way)
    first_trial = page.locator(f'[role="row"][row-id="{trials[0].info.run_id}"]').first
    if not first_trial.is_visible():
        parent_row.locator('button[data-component-id*="runnamecellrenderer"]').first.click()
    for trial in trials:
        row = page.locator(f'[role="row"][row-id="{trial.info.run_id}"]').first
        row.wait_for()
        assert row.get_by_text(trial.info.run_name, exact=True).is_visible(), trial.info.run_name

    # add the metric columns, as the README says
    page.get_by_role("button", name="Columns", exact=True).click()
    search = page.get_by_placeholder("Search columns")
    for name in UI_METRICS:
        search.fill(name)
        title = page.locator(".du-bois-light-tree-title", has_text=re.compile(rf"^{re.escape(name)}$"))
        node = page.locator(".du-bois-light-tree-treenode").filter(has=title).first
        node.wait_for()
        node.locator(".du-bois-light-tree-checkbox").click()
    page.keyboard.press("Escape")
    for name in UI_METRICS:
        page.locator(f'[role="columnheader"][col-id="metrics.`{name}`"]').first.wait_for()
    page.wait_for_timeout(500)  # let the grid settle before the screenshot
    page.screenshot(path=str(shots / "02_runs_table_nested_metrics.png"))

    for trial in trials:
        row = _row(page, trial.info.run_id)
        for name in UI_METRICS:
            cell = row.locator(f'[col-id="metrics.`{name}`"]')
            cell.wait_for()
            shown = cell.inner_text().strip()
            assert _close(shown, trial.data.metrics[name]), (trial.info.run_name, name, shown, trial.data.metrics[name])


def _check_run_page(page: Any, url: str, exp_id: str, parent: Any, trial: Any, shots: Path) -> None:
    run_id = trial.info.run_id
    page.goto(f"{url}/#/experiments/{exp_id}/runs/{run_id}")
    page.get_by_text(trial.info.run_name, exact=True).first.wait_for()
    _dismiss_assistant(page)
    # "Parent run" links to the study's run
    page.locator(f'a[href*="{parent.info.run_id}"]', has_text=parent.info.run_name).first.wait_for()
    # the metrics table: a row per metric, name (a link) then value
    for name in UI_METRICS:
        link = page.get_by_role("link", name=name, exact=True)
        row = page.locator('[role="row"]').filter(has=link).first
        row.wait_for()
        shown = row.locator('[role="cell"]').nth(1).inner_text().strip()
        assert _close(shown, trial.data.metrics[name]), (trial.info.run_name, name, shown, trial.data.metrics[name])
    table = page.locator('[role="row"]').filter(has=page.get_by_role("link", name="accuracy", exact=True)).first
    table.scroll_into_view_if_needed()
    page.wait_for_timeout(300)
    page.screenshot(path=str(shots / f"03_run_page_{trial.info.run_name}.png"))


def _metric_rows_match(page: Any, metrics: dict[str, float], who: str) -> None:
    """The run page's metrics table: a row per metric, name (a link) then value, equal to ``metrics``."""
    for name in UI_METRICS:
        link = page.get_by_role("link", name=name, exact=True)
        row = page.locator('[role="row"]').filter(has=link).first
        row.wait_for()
        shown = row.locator('[role="cell"]').nth(1).inner_text().strip()
        assert _close(shown, metrics[name]), (who, name, shown, metrics[name])


def _check_parent_run_page(page: Any, url: str, exp_id: str, parent: Any, best: Any, shots: Path) -> None:
    """The study's parent run shows the best trial's metrics (not an empty metrics table)."""
    page.goto(f"{url}/#/experiments/{exp_id}/runs/{parent.info.run_id}")
    page.get_by_text(parent.info.run_name, exact=True).first.wait_for()
    _dismiss_assistant(page)
    _metric_rows_match(page, best.data.metrics, "parent run")
    page.get_by_text("sweeps.best.strategy").first.wait_for()
    page.wait_for_timeout(300)
    page.screenshot(path=str(shots / "04_parent_run_best_trial.png"), full_page=True)


def _check_report_in_artifact_view(page: Any, url: str, exp_id: str, parent: Any, shots: Path) -> None:
    """report/index.html opened in the parent run's artifact view renders with its plots (embedded: a relative
    image link would 404 there)."""
    page.goto(f"{url}/#/experiments/{exp_id}/runs/{parent.info.run_id}/artifacts/report/index.html")
    _dismiss_assistant(page)
    frame = page.frame_locator("iframe").first
    frame.locator("h2", has_text="Recommendation").wait_for()
    images = frame.locator("figure img")
    images.first.wait_for()
    assert images.count() >= 5, images.count()
    for i in range(images.count()):
        img = images.nth(i)
        img.scroll_into_view_if_needed()
        loaded = img.evaluate("el => el.complete && el.naturalWidth > 0")
        assert loaded, f"plot {img.get_attribute('alt')!r} did not render in the artifact view"
    frame.locator("figure").first.scroll_into_view_if_needed()
    page.wait_for_timeout(300)
    page.screenshot(path=str(shots / "05_report_in_artifact_view.png"))
