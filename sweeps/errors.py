"""Errors users see. Every message names the field or the cause; the CLI maps them to exit codes."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1  # the run itself failed (no trial completed, a service unreachable, ...)
EXIT_INVALID = 2  # bad input: study file, CLI arguments, data, model; nothing was run
EXIT_INTERRUPTED = 130  # Ctrl-C: the current trial was recorded, rerun the same command to resume
EXIT_TERMINATED = 143  # SIGTERM (docker stop, Kubernetes, batch schedulers): recorded and resumable like Ctrl-C


class Interrupted(KeyboardInterrupt):
    """A stop signal (SIGINT or SIGTERM) turned into an exception by the CLI's handlers, so a SIGTERM unwinds through
    the same bookkeeping as Ctrl-C (trial recorded as interrupted, runs closed KILLED) instead of killing the process
    with the trial left RUNNING. A ``KeyboardInterrupt`` subclass: code that handles Ctrl-C handles it too."""

    def __init__(self, signum: int) -> None:
        import signal

        self.signum = signum
        self.signal_name = signal.Signals(signum).name
        super().__init__(self.signal_name)

    @property
    def reason(self) -> str:
        return "interrupted (Ctrl-C)" if self.signal_name == "SIGINT" else f"terminated ({self.signal_name})"

    @property
    def exit_code(self) -> int:
        return EXIT_INTERRUPTED if self.signal_name == "SIGINT" else EXIT_TERMINATED


class SweepsError(Exception):
    """Base of every error freeze-sweeps reports without a traceback."""

    exit_code = EXIT_FAILURE


class SpecError(SweepsError):
    """The study file (or a ``--set`` override) is invalid.

    ``path`` is the YAML path, e.g. ``strategies[1].params.n``."""

    exit_code = EXIT_INVALID

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.detail = message


class DataError(SweepsError):
    """The data cannot be used as configured (missing column, unparsable file, one class only, ...)."""

    exit_code = EXIT_INVALID


class ModelLoadError(SweepsError):
    """The model or tokenizer cannot be loaded from the configured source."""

    exit_code = EXIT_INVALID
