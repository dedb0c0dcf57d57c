"""Peak memory of *one trial*, not of the process.

On CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``. On CPU the process's high-water mark
(VmHWM) would keep the peak of the heaviest earlier trial, so a light trial that follows a heavy one would report the
heavy one's peak; Linux lets a process reset its own high-water mark (``echo 5 > /proc/self/clear_refs``), which gives
each trial its own figure. Where that is not available a sampling thread reads the resident size instead.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kb(field: str) -> int | None:
    try:
        match = re.search(rf"^{field}:\s+(\d+)\s+kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def current_rss_mb() -> float:
    kb = _status_kb("VmRSS")
    return kb / 1024.0 if kb is not None else float("nan")


class PeakMemory:
    """Measures the peak memory between :meth:`reset` and :meth:`peak_mb` on ``device``."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._sampler: threading.Thread | None = None
        self._stop = threading.Event()
        self._sampled_peak = 0.0
        self.method = "unknown"

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.method = "cuda_max_memory_allocated"
            return
        try:
            _CLEAR_REFS.write_text("5")
            if _status_kb("VmHWM") is None:
                raise OSError("no VmHWM")
            self.method = "rss_high_water_mark"
        except OSError:
            self._start_sampler()

    def _start_sampler(self) -> None:
        self.method = "rss_sampled_50ms"
        self._stop.clear()
        self._sampled_peak = current_rss_mb()

        def sample() -> None:
            while not self._stop.wait(0.05):
                self._sampled_peak = max(self._sampled_peak, current_rss_mb())

        self._sampler = threading.Thread(target=sample, name="peak-memory", daemon=True)
        self._sampler.start()

    def peak_mb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        if self._sampler is not None:
            return max(self._sampled_peak, current_rss_mb())
        kb = _status_kb("VmHWM")
        return kb / 1024.0 if kb is not None else float("nan")

    def close(self) -> None:
        self._stop.set()
        if self._sampler is not None:
            self._sampler.join(timeout=1)
            self._sampler = None
