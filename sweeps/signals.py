"""Stop signals as exceptions: SIGINT and SIGTERM both unwind through the trial's bookkeeping.

SIGTERM (``docker stop``, Kubernetes, batch schedulers) used to kill the process outright, leaving the trial and its
MLflow runs RUNNING until the next run; with :func:`install_stop_handlers` it raises
:class:`~sweeps.errors.Interrupted`, a ``KeyboardInterrupt``, and is recorded like Ctrl-C.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from typing import Any

from sweeps.errors import Interrupted

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _raise_interrupted(signum: int, _frame: Any) -> None:
    raise Interrupted(signum)


def install_stop_handlers() -> None:
    """SIGINT and SIGTERM raise :class:`Interrupted` in the main thread (the CLI's ``run``)."""
    for s in STOP_SIGNALS:
        signal.signal(s, _raise_interrupted)


@contextlib.contextmanager
def _stop_handler(handler: Any) -> Iterator[bool]:
    """``handler`` for SIGINT and SIGTERM inside the block, the previous handlers back after it. Yields whether it
    was installed: signals can only be set in the main thread, and elsewhere none arrive."""
    try:
        previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    except ValueError:  # not the main thread
        yield False
        return
    try:
        yield True
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


@contextlib.contextmanager
def ignoring_stop_signals() -> Iterator[None]:
    """SIGINT and SIGTERM ignored inside the block (main thread only): a second Ctrl-C, or the SIGTERM that follows a
    Ctrl-C, must not cut bookkeeping short."""
    with _stop_handler(signal.SIG_IGN):
        yield


@contextlib.contextmanager
def deferring_stop_signals() -> Iterator[None]:
    """SIGINT and SIGTERM that arrive inside the block take effect as it ends (the signal is raised again once the
    previous handlers are back), so a few storage calls that belong together, a trial asked *and* claimed by this
    process, are never split by Ctrl-C: a trial left RUNNING without its pid is recovered only after the grace period,
    and as a dead worker's rather than as interrupted. Main thread only, like :func:`ignoring_stop_signals`."""
    arrived: list[int] = []
    try:
        with _stop_handler(lambda signum, _frame: arrived.append(signum)):
            yield
    finally:
        if arrived:
            signal.raise_signal(arrived[0])
