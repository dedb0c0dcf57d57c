"""Where a study's wall time goes: the phase clock's exclusive accounting, and a tiny study recording it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import optuna
import pytest
from e2e_helpers import make_dataset, make_tiny_model, write_study

from sweeps.cli import main
from sweeps.phases import COMPUTE, OTHER, PhaseClock, describe, overhead_fraction, since
from sweeps.records import StudyAttr


def test_nested_phase_is_subtracted_from_the_enclosing_one() -> None:
    clock = PhaseClock()
    with clock.timed("training"):
        time.sleep(0.05)
        with clock.timed("tracking"):
            time.sleep(0.1)
    totals = clock.snapshot()
    assert totals["tracking"] == pytest.approx(0.1, abs=0.04)
    assert totals["training"] == pytest.approx(0.05, abs=0.04)  # not 0.15: the MLflow call is not training


def test_same_phase_nested_is_counted_once() -> None:
    clock = PhaseClock()
    start = time.perf_counter()
    with clock.timed("tracking"), clock.timed("tracking"):
        time.sleep(0.05)
    assert clock.snapshot()["tracking"] == pytest.approx(time.perf_counter() - start, abs=0.01)


def test_since_puts_unclaimed_time_in_other_and_overhead_excludes_compute() -> None:
    spent = since({"training": 1.0}, {"training": 4.0, "tracking": 0.5}, wall=4.0)
    assert spent == {"training": 3.0, "tracking": 0.5, OTHER: 0.5}
    assert overhead_fraction(spent) == pytest.approx(1 / 4)
    assert overhead_fraction({p: 1.0 for p in COMPUTE}) == 0.0
    assert describe(spent, 4.0) == "4 s: training 75%, tracking 12%, other 12%"


@pytest.mark.slow
def test_a_study_records_each_trials_phases_and_the_process_total(tmp_path: Path, capsys) -> None:
    model, data = make_tiny_model(tmp_path / "model"), make_dataset(tmp_path / "data")
    study_file = write_study(tmp_path / "study.yaml", model, data)
    out = tmp_path / "out"
    assert main(["run", str(study_file), "--output", str(out)]) == 0
    assert "time in this process, by phase: " in capsys.readouterr().out

    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{out / 'optuna.db'}")
    trials = study.get_trials()
    assert len(trials) == 2
    for t in trials:
        phases = study.user_attrs[f"{StudyAttr.PHASES_PREFIX}{t.number}"]
        for name in ("model_load", "training", "evaluation", "tracking"):
            assert phases[name] > 0, (t.number, name, phases)
        # the trial's phases add up to the wall time between its start and its end as Optuna saw it (± the
        # bookkeeping after tell: keeping the best model, logging it)
        optuna_wall = (t.datetime_complete - t.datetime_start).total_seconds()
        assert sum(phases.values()) >= optuna_wall * 0.9
    assert "saving" in study.user_attrs[f"{StudyAttr.PHASES_PREFIX}{trials[0].number}"]  # the first is the best so far

    (written,) = (out / "phases").glob("*.json")
    process = json.loads(written.read_text())
    assert process["phases"]["tokenisation"] > 0 and process["phases"]["report"] > 0
    per_trial = sum(sum(study.user_attrs[f"{StudyAttr.PHASES_PREFIX}{t.number}"].values()) for t in trials)
    assert per_trial <= process["wall_s"] + 1e-3
    assert sum(process["phases"].values()) == pytest.approx(process["wall_s"], abs=0.01)
