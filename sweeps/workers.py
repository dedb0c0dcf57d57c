"""``run --workers K``: K worker processes on one study, watched by their parent.

The workers share the study through its storage; the parent only starts them, watches them and speaks for them. It
knows every worker's pid, so a worker that dies (SIGKILL, OOM killer, a crash) is noticed at once rather than at the
next run: its RUNNING trial is marked failed in Optuna and MLflow by the usual recovery, and a replacement worker is
started while the budget is not used up (unless workers keep dying without any trial finishing: then the parent says
so and stops replacing them). A stop signal to the parent (Ctrl-C, SIGTERM) is forwarded to every worker.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sweeps.errors import EXIT_INTERRUPTED, EXIT_TERMINATED

log = logging.getLogger("sweeps")

WORKER_ENV = "SWEEPS_WORKER_OF"
"""Set in every worker's environment (to the parent's pid): a worker leaves the summary and the resume hint to it."""

STOPPED_CODES = (EXIT_INTERRUPTED, EXIT_TERMINATED, -signal.SIGINT, -signal.SIGTERM)
"""Exit codes of a worker that was asked to stop (its trial recorded as interrupted), not one that died."""


@dataclass
class Worker:
    index: int
    proc: subprocess.Popen[bytes]


@dataclass
class PoolResult:
    deaths: list[tuple[int, int, int]] = field(default_factory=list)  # (worker index, pid, exit code)
    not_replaced: str = ""  # why a dead worker was not replaced although the budget was not used up


class WorkerPool:
    """Starts workers with ``launch(index)``, replaces dead ones while ``budget_left()`` says trials remain, and calls
    ``recover()`` (mark the dead worker's trial failed) as soon as one dies."""

    def __init__(
        self,
        count: int,
        launch: Callable[[int], subprocess.Popen[bytes]],
        recover: Callable[[], list[int]],
        budget_left: Callable[[], int | None],
        finished: Callable[[], int],
        poll_s: float = 0.2,
    ) -> None:
        self.count = count
        self.launch = launch
        self.recover = recover
        self.budget_left = budget_left
        self.finished = finished
        self.poll_s = poll_s
        self.live: list[Worker] = []
        self.result = PoolResult()
        self._deaths_without_progress = 0
        self._finished_at_last_death = -1

    def start(self) -> None:
        for i in range(self.count):
            self._start(i)

    def _start(self, index: int) -> None:
        proc = self.launch(index)
        self.live.append(Worker(index, proc))

    def wait(self) -> PoolResult:
        """Until every worker has exited. Stop signals raise out of here (``Interrupted``/``KeyboardInterrupt``)."""
        while self.live:
            for worker in list(self.live):
                code = worker.proc.poll()
                if code is None:
                    continue
                self.live.remove(worker)
                if code != 0 and code not in STOPPED_CODES:
                    self._died(worker, code)
            time.sleep(self.poll_s)
        return self.result

    def _died(self, worker: Worker, code: int) -> None:
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        log.error("worker %d (pid %d) %s", worker.index, worker.proc.pid, how)
        self.result.deaths.append((worker.index, worker.proc.pid, code))
        recovered = self.recover()
        if recovered:
            log.warning("trial(s) %s of the dead worker marked failed (Optuna and MLflow)", recovered)
        finished = self.finished()
        self._deaths_without_progress = 0 if finished > self._finished_at_last_death else self._deaths_without_progress
        self._deaths_without_progress += 1
        self._finished_at_last_death = finished
        left = self.budget_left()
        if left is None:
            self.result.not_replaced = "optuna.timeout without n_trials: the surviving workers go on until it ends"
        elif left <= 0:
            return
        elif self._deaths_without_progress > self.count:
            self.result.not_replaced = (
                f"{self._deaths_without_progress} workers died without any trial finishing in between; not starting "
                f"more ({left} trial(s) of n_trials left): see their messages above"
            )
        else:
            self._start(worker.index)
            log.info("worker %d restarted (pid %d); %d trial(s) of n_trials left", worker.index,
                     self.live[-1].proc.pid, left)
            return
        log.warning("dead worker %d not replaced: %s", worker.index, self.result.not_replaced)

    def forward(self, signum: int) -> None:
        """Send ``signum`` to every live worker and wait for them (each records its trial as interrupted)."""
        for worker in self.live:
            if worker.proc.poll() is None:
                worker.proc.send_signal(signum)
        for worker in self.live:
            worker.proc.wait()


def worker_command(args: Any, spec: Any, out: Any, threads: int | None) -> list[str]:
    """The command line of one worker: the parent's study, overrides and output, no report (the parent writes it)."""
    import sys

    cmd = [
        sys.executable,
        "-m",
        "sweeps",
        "-v" if args.verbose else "--quiet",
        "run",
        args.study,
        "--output",
        str(out),
        "--no-report",
    ]
    for o in args.overrides:
        cmd += ["--set", o]
    if threads is not None:
        cmd += ["--set", f"training.num_threads={threads}"]
    return cmd
