"""Per-trial peak memory: a light trial that follows a heavy one reports its own, lower peak."""

from __future__ import annotations

import torch

from sweeps.train.memory import PeakMemory, current_rss_mb


def _touch(mb: int) -> torch.Tensor:
    t = torch.empty(mb * 2**20, dtype=torch.uint8)
    t.fill_(1)  # make the pages resident
    return t


def test_light_trial_after_heavy_trial_reports_its_own_peak() -> None:
    memory = PeakMemory(torch.device("cpu"))
    memory.reset()
    heavy = _touch(600)
    heavy_peak = memory.peak_mb()
    del heavy
    memory.reset()  # what StudyRunner does at every trial start
    light = _touch(50)
    light_peak = memory.peak_mb()
    del light
    memory.close()
    assert heavy_peak - light_peak > 400, (heavy_peak, light_peak)
    assert light_peak >= current_rss_mb() - 1  # the figure is a real process measurement, not a delta


def test_sampler_fallback_measures_a_peak(monkeypatch) -> None:
    import sweeps.train.memory as mem

    monkeypatch.setattr(mem, "_CLEAR_REFS", mem.Path("/nonexistent/clear_refs"))
    memory = PeakMemory(torch.device("cpu"))
    memory.reset()
    assert memory.method == "rss_sampled_50ms"
    base = memory.peak_mb()
    block = _touch(300)
    import time

    time.sleep(0.3)
    peak = memory.peak_mb()
    del block
    memory.close()
    assert peak - base > 200
