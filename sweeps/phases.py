"""Where a study's wall time goes: seconds per phase, accumulated in this process.

A study costs more than the sum of its training epochs: loading weights, tokenising, evaluating, saving the best
model, talking to MLflow and to the Optuna storage. :data:`CLOCK` adds up *exclusive* wall time per phase — a phase
timed inside another (MLflow calls made while a trial trains) is subtracted from the enclosing one — so the phases
of one trial add up to at most its wall time and "other" is what no phase claims (Optuna storage, Python overhead).

The runner snapshots the clock around every trial (the trial attribute ``phase_seconds``) and around the whole run
(``<out>/phases/<host>-<pid>.json``); ``bench/bench_study_cost.py`` reads both. Timing is ``time.perf_counter`` around
code that already runs: no synchronisation is added (on CUDA the training loop synchronises once per epoch anyway).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

# one owner for the phase names (the trial attribute, the per-process file and the benchmark all use these)
MODEL_LOAD = "model_load"  # from_pretrained / the factory, moving to the device
TOKENISATION = "tokenisation"  # reading data, tokenising (or reading the tokenisation cache), image processors
SETUP = "setup"  # per trial: layer discovery, the unused-parameter probe, optimizer, checksums of what is frozen
TRAINING = "training"  # training epochs: forward, backward, optimizer (includes building the activation cache)
EVALUATION = "evaluation"  # validation after each epoch, the held-out test split
FREEZE_CHECK = "freeze_check"  # per trial: comparing the frozen checksums after training (the bit-identical proof)
SAVING = "saving"  # writing the kept model to the study folder
TRACKING = "tracking"  # MLflow calls
REPORT = "report"  # the study report at the end
OTHER = "other"  # wall time no phase claims: Optuna storage, sampling, Python overhead

PHASES = (MODEL_LOAD, TOKENISATION, SETUP, TRAINING, EVALUATION, FREEZE_CHECK, SAVING, TRACKING, REPORT)
COMPUTE = (TRAINING, EVALUATION)  # a trial's useful work; everything else is fixed overhead


class PhaseClock:
    """Exclusive seconds per phase. Not thread-safe by design: a study process runs one trial at a time."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self._stack: list[list[float]] = []  # per open phase: [start, seconds claimed by nested phases]

    @contextlib.contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        frame = [time.perf_counter(), 0.0]
        self._stack.append(frame)
        try:
            yield
        finally:
            self._stack.pop()
            elapsed = time.perf_counter() - frame[0]
            self.totals[phase] = self.totals.get(phase, 0.0) + elapsed - frame[1]
            if self._stack:
                self._stack[-1][1] += elapsed

    def snapshot(self) -> dict[str, float]:
        return dict(self.totals)


def since(before: dict[str, float], after: dict[str, float], wall: float) -> dict[str, float]:
    """The phases between two snapshots, with ``other`` = ``wall`` minus what the phases claimed."""
    spent = {p: after.get(p, 0.0) - before.get(p, 0.0) for p in after}
    spent = {p: round(s, 4) for p, s in spent.items() if s > 0}
    spent[OTHER] = round(max(wall - sum(spent.values()), 0.0), 4)
    return spent


def overhead_fraction(phases: dict[str, float]) -> float:
    """Share of a trial's wall time that is not training or evaluation (the fixed per-trial cost)."""
    total = sum(phases.values())
    return 0.0 if total <= 0 else 1.0 - sum(phases.get(p, 0.0) for p in COMPUTE) / total


def describe(spent: dict[str, float], wall: float, top: int = 6) -> str:
    """One line for the terminal: ``412 s: training 71%, evaluation 12%, ...`` (largest phases first)."""
    parts = sorted(spent.items(), key=lambda kv: -kv[1])[:top]
    return f"{wall:.0f} s: " + ", ".join(f"{p} {s / wall:.0%}" for p, s in parts if wall > 0)


CLOCK = PhaseClock()
timed = CLOCK.timed
