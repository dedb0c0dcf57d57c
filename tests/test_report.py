"""The report: table, plots, computed recommendation and MLflow logging, on Optuna studies built by hand.

The studies are made with ``create_trial``/``add_trial`` and hand-picked numbers so every figure the recommendation
states can be recomputed here from the inputs — the point of the recommendation is that it is measured, not written.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from sweeps.report import pareto_front, recommendation, to_markdown, trials_table, write_report

optuna.logging.set_verbosity(optuna.logging.WARNING)

STRATEGIES = ["none", "embeddings", "bottom_n", "discriminative"]
DIST = {
    "strategy": CategoricalDistribution(STRATEGIES),
    "bottom_n.n": IntDistribution(1, 6),
    "discriminative.decay": FloatDistribution(0.5, 1.0),
    "training.learning_rate": FloatDistribution(1e-5, 1e-3, log=True),
}
EPOCHS = 3

# number -> (strategy, strategy params, learning rate, accuracy, epoch_time_s, peak_memory_mb, trainable, verified)
COMPLETE: dict[int, tuple[str, dict[str, Any], float, float, float, float, int, bool]] = {
    0: ("none", {}, 2e-5, 0.860, 10.0, 2000.0, 1_000_000, True),
    1: ("embeddings", {}, 3e-5, 0.870, 9.0, 1900.0, 900_000, True),
    2: ("bottom_n", {"n": 2}, 5e-5, 0.874, 8.0, 1700.0, 700_000, True),
    3: ("bottom_n", {"n": 4}, 4e-5, 0.868, 5.0, 1200.0, 400_000, True),
    4: ("bottom_n", {"n": 6}, 6e-5, 0.860, 3.5, 900.0, 100_000, True),
    5: ("discriminative", {"decay": 0.8}, 1e-4, 0.871, 10.5, 2050.0, 1_000_000, False),
}
PNGS = [
    "metric_vs_epoch_time.png",
    "metric_vs_peak_memory.png",
    "metric_by_strategy.png",
    "metric_vs_bottom_n.png",
    "learning_curves.png",
    "optimization_history.png",
    "param_importances.png",
    "parallel_coordinates.png",
    "freeze_schedule.png",
    "lr_per_group.png",
]


def make_spec(metric: str = "accuracy", objectives: list[Any] | None = None) -> SimpleNamespace:
    """The parts of a resolved StudySpec the report reads (objectives: the task metric unless given)."""
    items = [SimpleNamespace(metric=o, direction=None) if isinstance(o, str) else o for o in objectives or [metric]]
    return SimpleNamespace(
        name="report-test",
        task=SimpleNamespace(metric=metric),
        objectives=items,
        training=SimpleNamespace(epochs=EPOCHS),
    )


def _params(strategy: str, own: dict[str, Any], lr: float) -> tuple[dict[str, Any], dict[str, Any]]:
    params = {"strategy": strategy, **{f"{strategy}.{k}": v for k, v in own.items()}, "training.learning_rate": lr}
    return params, {k: DIST[k] for k in params}


def _metrics(
    acc: float, et: float, mem: float, trainable: int, loss: float | None = None, epochs_run: int = EPOCHS
) -> dict[str, Any]:
    values = {
        "accuracy": acc, "f1_macro": acc - 0.01, "f1_weighted": acc - 0.005, "eval_loss": loss or 1.2 - acc,
        "train_loss": 0.3, "epoch_time_s": et, "eval_time_s": 1.0, "samples_per_s": 100.0, "peak_memory_mb": mem,
        "trainable_params": trainable, "best_epoch": epochs_run - 1, "epochs_run": epochs_run,
    }
    return {f"metric.{k}": v for k, v in values.items()}


def _write_epochs(out: Path, number: int, final: float) -> None:
    epochs = [
        {"epoch": e, "accuracy": final - 0.05 * (EPOCHS - 1 - e), "eval_loss": 1.2 - final + 0.05 * (EPOCHS - 1 - e),
         "lr/embeddings": 0.0 if e == 0 else 2e-5, "lr/layer.0": 5e-5, "lr/head": 1e-4}
        for e in range(EPOCHS)
    ]
    (out / "trials").mkdir(parents=True, exist_ok=True)
    (out / "trials" / f"trial_{number}_epochs.json").write_text(json.dumps(epochs))


def build_study(out: Path) -> optuna.Study:
    """Six completed trials (one per strategy, three bottom_n), one pruned, one failed and one surplus trial."""
    study = optuna.create_study(direction="maximize", study_name="report-test")
    study.set_user_attr("objectives", ["accuracy"])
    for number, (strategy, own, lr, acc, et, mem, trainable, verified) in COMPLETE.items():
        params, dists = _params(strategy, own, lr)
        attrs = {"strategy": strategy, **_metrics(acc, et, mem, trainable), "frozen_params_verified": verified,
                 "mlflow_run_id": f"run{number}"}
        study.add_trial(create_trial(value=acc, params=params, distributions=dists, user_attrs=attrs))
        _write_epochs(out, number, acc)
    params, dists = _params("embeddings", {}, 1e-5)
    study.add_trial(create_trial(state=TrialState.PRUNED, params=params, distributions=dists,
                                 user_attrs={"strategy": "embeddings"}, intermediate_values={0: 0.55, 1: 0.6}))
    params, dists = _params("discriminative", {"decay": 0.6}, 1e-3)
    study.add_trial(create_trial(state=TrialState.FAIL, params=params, distributions=dists,
                                 user_attrs={"strategy": "discriminative", "fail_reason": "out of memory: CUDA"}))
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"surplus": True, "fail_reason": "surplus"}))
    return study


def assert_png(path: Path) -> None:
    assert path.is_file(), path
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    assert len(data) > 1024, path


def sentence(lines: list[str], start: str) -> str:
    found = [s for s in lines if s.startswith(start)]
    assert found, f"no sentence starting with {start!r} in {lines}"
    return found[0]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, str, Path]:
    """One report of the hand-built study, logged to a real local MLflow store (sqlite + file artifacts): written
    once for the whole module because creating an MLflow database takes seconds."""
    from sweeps.track import Tracker

    tmp = tmp_path_factory.mktemp("report")
    out = tmp / "study"
    study = build_study(out)
    tracker = Tracker(f"sqlite:///{tmp}/m.db", "report-test", artifact_root=tmp / "art")
    parent = tracker.client.create_run(tracker.experiment_id, run_name="study").info.run_id
    index = write_report(make_spec(), out, study=study, tracker=tracker, parent_run_id=parent)
    return out, tracker, parent, index


# -- table ----------------------------------------------------------------------------------------------------------
def test_table_rows_columns_and_order(tmp_path: Path) -> None:
    study = build_study(tmp_path)
    table = trials_table(study)
    # best accuracy first; the 0.860 tie goes to the cheaper epoch (trial 4); trials without a metric last, by
    # number; surplus dropped
    assert table["number"].tolist() == [2, 5, 1, 3, 4, 0, 6, 7]
    assert table["state"].tolist() == ["complete"] * 6 + ["pruned", "failed"]
    for col in ["number", "state", "strategy", "n", "decay", "learning_rate", "accuracy", "f1_macro", "epoch_time_s",
                "peak_memory_mb", "trainable_params", "frozen_params_verified", "fail_reason", "duration_s"]:
        assert col in table.columns, col
    assert table.loc[table["number"] == 3, "n"].item() == 4
    assert table.loc[table["number"] == 7, "fail_reason"].item() == "out of memory: CUDA"
    assert table.loc[table["number"] == 5, "frozen_params_verified"].item() is False
    assert pd.isna(table.loc[table["number"] == 6, "accuracy"].item())


def test_param_name_clash_keeps_dotted_names() -> None:
    study = optuna.create_study()
    params = {"strategy": "x", "x.learning_rate": 0.5, "training.learning_rate": 1e-4}
    dists = {"strategy": CategoricalDistribution(["x"]), "x.learning_rate": FloatDistribution(0, 1),
             "training.learning_rate": FloatDistribution(1e-5, 1e-3)}
    study.add_trial(create_trial(value=1.0, params=params, distributions=dists, user_attrs={"strategy": "x"}))
    table = trials_table(study)
    assert {"x.learning_rate", "training.learning_rate"} <= set(table.columns)


def test_pareto_front() -> None:
    # cost, value: (1, .5) (2, .7) (3, .6) dominated by (2, .7), (4, .9)
    assert pareto_front([1, 2, 3, 4], [0.5, 0.7, 0.6, 0.9], "maximize") == [0, 1, 3]
    assert pareto_front([1, 2, 3], [0.5, 0.4, 0.6], "minimize") == [0, 1]


def test_markdown_without_tabulate() -> None:
    table = pd.DataFrame({"strategy": ["a|b"], "accuracy": [0.87654], "trainable_params": [1234567.0], "x": [None]})
    assert to_markdown(table).splitlines() == [
        "| strategy | accuracy | trainable_params | x |", "|---|---|---|---|", "| a\\|b | 0.8765 | 1,234,567 |  |"
    ]


# -- files ----------------------------------------------------------------------------------------------------------
def test_report_files(report: tuple[Path, Any, str, Path]) -> None:
    out, _, _, index = report
    assert index == out / "report" / "index.html"
    text = index.read_text()
    for strategy in STRATEGIES:
        assert f"{strategy}</td>" in text, strategy
    for png in PNGS:
        assert_png(out / "report" / png)
        # embedded, so it renders from MLflow's artifact view and when mailed: the data URI is the file itself
        match = re.search(rf'<figure data-file="{re.escape(png)}"><img src="data:image/png;base64,([^"]+)"', text)
        assert match, png
        assert base64.b64decode(match.group(1)) == (out / "report" / png).read_bytes(), png
    assert 'src="' not in re.sub(r'src="data:[^"]*"', "", text), "a linked (not embedded) resource"
    assert "pareto_front.png" not in text  # single objective
    assert "<style>" in text and "out of memory: CUDA" in text
    csv = pd.read_csv(out / "report" / "trials.csv")
    assert csv["number"].tolist() == [2, 5, 1, 3, 4, 0, 6, 7]  # one ranking rule: accuracy ties go to the cheaper
    best = pd.read_csv(out / "report" / "best_per_strategy.csv")
    assert best["strategy"].tolist() == ["bottom_n", "discriminative", "embeddings", "none"]
    assert best["number"].tolist() == [2, 5, 1, 0]
    assert best.loc[best["strategy"] == "bottom_n", "complete_trials"].item() == 3
    md = (out / "report" / "trials.md").read_text().splitlines()
    assert md[0].startswith("| number | state | strategy |") and len(md) == 2 + 8


def test_recommendation_numbers(report: tuple[Path, Any, str, Path]) -> None:
    out, _, _, index = report
    lines = (out / "report" / "recommendation.txt").read_text().splitlines()
    html_text = index.read_text()
    assert all(line.replace("'", "&#x27;") in html_text for line in lines)
    acc = {n: v[3] for n, v in COMPLETE.items()}
    et = {n: v[4] for n, v in COMPLETE.items()}
    mem = {n: v[5] for n, v in COMPLETE.items()}
    best = max(acc, key=lambda n: acc[n])
    assert lines[0] == "8 trials: 6 complete, 1 pruned, 1 failed."
    assert "out of memory: CUDA (1×)" in sentence(lines, "Failure reasons")

    s = sentence(lines, "Best:")
    assert s.startswith(f"Best: trial {best}, bottom_n (n=2): accuracy {acc[best]:.4f}")
    assert f"{et[best]:.2f} s/epoch" in s and f"{mem[best]:.0f} MB" in s

    # the baseline is the best none trial; without stored predictions no noise rule applies, and it says so
    s = sentence(lines, "Against the best full fine-tuning, trial 0, none (accuracy 0.8600): trial 2, bottom_n (n=2)")
    assert f"differs by {acc[best] - acc[0]:+.4f} accuracy (no noise estimate: predictions not stored)" in s
    pcts = [float(x) for x in re.findall(r"([\d.]+)%", s)]
    assert pcts == pytest.approx([100 * et[best] / et[0], 100 * mem[best] / mem[0]], abs=0.51)
    assert not any(line.startswith("Cheapest within") for line in lines)  # thresholds that ignore noise are gone
    counts = sentence(lines, "Trials per strategy:")
    assert "bottom_n: 3 complete" in counts and "discriminative: 1 complete, 1 failed" in counts
    assert "embeddings: 1 complete, 1 pruned" in counts
    assert sentence(lines, "Warning:").startswith("Warning: frozen parameters changed during training in trial 5 ")


def test_single_and_zero_completed(tmp_path: Path) -> None:
    study = optuna.create_study(direction="maximize")
    params, dists = _params("bottom_n", {"n": 3}, 1e-4)
    study.add_trial(create_trial(state=TrialState.FAIL, params=params, distributions=dists,
                                 user_attrs={"strategy": "bottom_n", "fail_reason": "RuntimeError: NaN loss"}))
    study.add_trial(create_trial(state=TrialState.PRUNED, params=params, distributions=dists,
                                 user_attrs={"strategy": "bottom_n"}, intermediate_values={0: 0.4}))
    index = write_report(make_spec(), tmp_path, study=study)
    text = index.read_text()
    assert "No trial completed" in text and "RuntimeError: NaN loss" in text
    assert "not computed" in text  # parameter importances
    assert not (tmp_path / "report" / "metric_vs_epoch_time.png").exists()
    assert_png(tmp_path / "report" / "learning_curves.png")  # the pruned trial's reported values

    empty = optuna.create_study()
    index = write_report(make_spec(), tmp_path / "empty", study=empty)
    assert "0 trials." in index.read_text() and trials_table(empty).empty

    single = optuna.create_study(direction="maximize")
    single.add_trial(create_trial(value=0.8, params=params, distributions=dists,
                                  user_attrs={"strategy": "bottom_n", **_metrics(0.8, 2.0, 500.0, 1000)}))
    lines = recommendation(trials_table(single), "accuracy", "maximize")
    assert "Only one trial completed: there is nothing to compare it with yet." in lines
    index = write_report(make_spec(), tmp_path / "single", study=single)
    assert "bottom_n (n=3): accuracy 0.8000" in index.read_text()
    assert 'data-file="metric_vs_bottom_n.png"' in index.read_text()


def test_minimize_metric(tmp_path: Path) -> None:
    losses = {0: 0.40, 1: 0.36, 2: 0.362, 3: 0.50}  # trial 2 is within 1% of the best loss and cheaper
    costs = {0: (10.0, 2000.0), 1: (8.0, 1800.0), 2: (4.0, 1000.0), 3: (2.0, 500.0)}
    strategies = {0: "none", 1: "embeddings", 2: "bottom_n", 3: "bottom_n"}
    study = optuna.create_study(direction="minimize")
    study.set_user_attr("objectives", ["eval_loss"])
    for n, loss in losses.items():
        own = {"n": n} if strategies[n] == "bottom_n" else {}
        params, dists = _params(strategies[n], own, 1e-4 * (n + 1))
        attrs = {"strategy": strategies[n], **_metrics(0.8, *costs[n], 1000, loss=loss, epochs_run=2 if n == 3 else 3)}
        study.add_trial(create_trial(value=loss, params=params, distributions=dists, user_attrs=attrs))
    assert trials_table(study)["number"].tolist() == [1, 2, 0, 3]
    index = write_report(make_spec("eval_loss"), tmp_path, study=study)
    lines = (tmp_path / "report" / "recommendation.txt").read_text().splitlines()
    assert sentence(lines, "Best:").startswith("Best: trial 1, embeddings: eval_loss 0.3600")
    s = sentence(lines, "Against the best full fine-tuning, trial 0, none (eval_loss 0.4000): trial 1, embeddings")
    assert "differs by -0.0400 eval_loss (no noise estimate: no evaluation-noise rule for eval_loss" in s
    assert re.findall(r"([\d.]+)%", s) == ["80", "90"]
    assert "Stopped early (fewer than 3 epochs): trial 3." in lines
    assert_png(tmp_path / "report" / "metric_vs_epoch_time.png")
    assert "eval_loss" in index.read_text()


def test_multi_objective_pareto(tmp_path: Path) -> None:
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr("objectives", ["accuracy", "peak_memory_mb"])
    for strategy, own, lr, acc, et, mem, trainable, verified in COMPLETE.values():
        params, dists = _params(strategy, own, lr)
        attrs = {"strategy": strategy, **_metrics(acc, et, mem, trainable), "frozen_params_verified": verified}
        study.add_trial(create_trial(values=[acc, mem], params=params, distributions=dists, user_attrs=attrs))
    spec = make_spec(objectives=[SimpleNamespace(metric="accuracy", direction="maximize"),
                                 SimpleNamespace(metric="peak_memory_mb", direction=None)])
    index = write_report(spec, tmp_path, study=study)
    # accuracy vs peak memory is the "metric vs peak memory" plot (with its front): not drawn twice
    assert not (tmp_path / "report" / "pareto_front.png").exists()
    assert_png(tmp_path / "report" / "metric_vs_peak_memory.png")
    lines = (tmp_path / "report" / "recommendation.txt").read_text().splitlines()
    # non-dominated on (accuracy up, memory down): 2 (best), 3 and 4 (cheaper), nothing else
    assert sentence(lines, "3 trials are Pareto-optimal").endswith("trials 2, 3, 4.")
    assert "Pareto-optimal trials" in index.read_text()


# -- MLflow -----------------------------------------------------------------------------------------------------------
def test_logs_to_parent_run(report: tuple[Path, Any, str, Path]) -> None:
    out, tracker, parent, _ = report
    top = {a.path for a in tracker.client.list_artifacts(parent)}
    assert {"report", "trials.csv"} <= top
    inside = {a.path for a in tracker.client.list_artifacts(parent, "report")}
    expected = ["index.html", "trials.csv", "trials.md", "best_per_strategy.csv", "recommendation.txt", *PNGS]
    assert {f"report/{f}" for f in expected} <= inside
    stored = Path(tracker.client.download_artifacts(parent, "report/index.html", str(out / "dl")))
    assert stored.read_text() == (out / "report" / "index.html").read_text()


# -- plots that tell what happened ----------------------------------------------------------------------------------
def _figure_axes(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Capture each saved figure by file name, to check what was drawn (not only that a PNG exists)."""
    from sweeps.report import plots

    figures: dict[str, Any] = {}
    real = plots._save

    def save(fig: Any, path: Path) -> None:
        figures[path.name] = fig
        real(fig, path)

    monkeypatch.setattr(plots, "_save", save)
    import sweeps.report.schedule_plots as sp

    monkeypatch.setattr(sp, "_save", save)
    return figures


def test_schedule_heatmap_and_lr_plot_show_the_best_trial_of_each_strategy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    figures = _figure_axes(monkeypatch)
    study = build_study(tmp_path)
    write_report(make_spec(), tmp_path, study=study)
    heat = figures["freeze_schedule.png"]
    panels = [ax for ax in heat.axes if ax.get_visible() and ax.get_images()]
    assert sorted(ax.get_title() for ax in panels) == [
        "bottom_n (trial 2)", "discriminative (trial 5)", "embeddings (trial 1)", "none (trial 0)"]
    cells = panels[0].get_images()[0].get_array()  # groups × epochs; frozen cells are masked (grey)
    assert cells.shape == (3, EPOCHS)
    assert bool(cells.mask[0, 0]) and not cells.mask[0, 1:].any()  # embeddings frozen in epoch 1 only
    assert cells[2, 0] == pytest.approx(1.0) and cells[1, 0] == pytest.approx(0.5)  # LR relative to the head's
    lr = figures["lr_per_group.png"]
    panel = next(ax for ax in lr.axes if ax.get_title() == "bottom_n (trial 2)")
    lines = {line.get_label(): line.get_ydata() for line in panel.get_lines()}
    assert list(lines["head"]) == pytest.approx([1e-4] * EPOCHS)
    assert np.isnan(lines["embeddings"][0]) and lines["embeddings"][1] == pytest.approx(2e-5)


def test_one_distinct_value_is_not_drawn_as_a_range(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    figures = _figure_axes(monkeypatch)
    study = optuna.create_study(direction="maximize")
    study.set_user_attr("objectives", ["accuracy"])
    for acc, mem in ((0.80, 650.0), (0.82, 651.5), (0.78, 652.0)):
        params, dists = _params("bottom_n", {"n": 4}, 1e-4)
        attrs = {"strategy": "bottom_n", **_metrics(acc, 2.0 + acc, mem, 1000)}
        study.add_trial(create_trial(value=acc, params=params, distributions=dists, user_attrs=attrs))
    params, dists = _params("none", {}, 1e-4)
    study.add_trial(create_trial(value=0.81, params=params, distributions=dists,
                                 user_attrs={"strategy": "none", **_metrics(0.81, 3.0, 651.0, 2000)}))
    index = write_report(make_spec(), tmp_path, study=study)
    ax = figures["metric_vs_bottom_n.png"].axes[0]
    assert list(ax.get_xticks()) == [4.0]  # one sampled n: one tick, not 3.80 … 4.20
    assert "mean per n" not in [line.get_label() for line in ax.get_lines()]
    assert "Only one n was sampled" in index.read_text()
    box = figures["metric_by_strategy.png"].axes[0]
    xs = [x for line in box.get_lines() for x in line.get_xdata()]
    assert xs and all(0.5 < x < 1.5 for x in xs)  # a box at bottom_n (3 trials, position 1), none for "none" (1)
    mem = figures["metric_vs_peak_memory.png"].axes[0]
    assert "Pareto front" not in [c.get_label() for c in mem.collections]  # 2 MB spread: noise, no front
    assert "no Pareto front is drawn" in index.read_text()


def test_report_calls_a_small_gap_a_tie_from_stored_predictions_and_shows_the_test_split(tmp_path: Path) -> None:
    """End to end through write_report: validation predictions on disk feed the paired bootstrap, and the finalists'
    held-out test scores (study attributes) are reported, never used for ranking."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    study = optuna.create_study(direction="maximize")
    study.set_user_attr("objectives", ["accuracy"])
    study.set_user_attr("labels", ["neg", "pos"])
    (tmp_path / "predictions").mkdir()
    for number, (strategy, wrong) in enumerate([("none", 60), ("bottom_n", 58)]):
        preds = labels.copy()
        preds[rng.choice(400, wrong, replace=False)] ^= 1
        pd.DataFrame({"example_id": np.arange(400), "label": np.array(["neg", "pos"])[labels],
                      "prediction": np.array(["neg", "pos"])[preds]}).to_csv(
            tmp_path / "predictions" / f"trial_{number}_validation.csv", index=False)
        acc = float((preds == labels).mean())
        params, dists = _params(strategy, {"n": 4} if strategy == "bottom_n" else {}, 1e-4)
        attrs = {"strategy": strategy, **_metrics(acc, 10.0 if strategy == "none" else 4.0, 1000.0, 1000),
                 "learned": True}
        study.add_trial(create_trial(value=acc, params=params, distributions=dists, user_attrs=attrs))
    study.set_user_attr("test.1", {"accuracy": 0.851, "f1_macro": 0.85, "rows": 872.0})
    write_report(make_spec(), tmp_path, study=study)
    lines = (tmp_path / "report" / "recommendation.txt").read_text().splitlines()
    s = sentence(lines, "Against the best full fine-tuning, trial 0, none")
    assert "a tie within evaluation noise" in s and "Call it a tie" in s and "40% of its epoch time" in s
    s = sentence(lines, "Held-out test (872 rows")
    assert "trial 1, bottom_n (n=4): accuracy 0.8510, f1_macro 0.8500" in s
