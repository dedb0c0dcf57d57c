"""Command line: ``python -m sweeps {run,validate,report,inspect,list-strategies,predict,dashboard}``.

Exit codes scripts can rely on: 0 success, 1 the run failed (e.g. no trial completed, a ``--workers`` worker died),
2 invalid input (study file, arguments, data, model; nothing was run), 130 interrupted by Ctrl-C and 143 by SIGTERM
(the current trial was recorded; rerun to resume).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweeps.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_INVALID, EXIT_OK, EXIT_TERMINATED, SweepsError
from sweeps.records import StudyAttr, TrialAttr

if TYPE_CHECKING:
    from sweeps.config import StudySpec
    from sweeps.study import StudyRunner

log = logging.getLogger("sweeps")


def _setup_logging(output: Path | None, quiet: bool, verbose: bool) -> None:
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    root = logging.getLogger()
    root.handlers.clear()
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(MaskingFormatter("%(message)s"))
    console.setLevel(level)
    root.addHandler(console)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(output / "sweeps.log")
        handler.setFormatter(MaskingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.setLevel(logging.DEBUG if verbose else logging.INFO)
        root.addHandler(handler)
    optuna_logging_off()
    for noisy in ("optuna", "mlflow", "alembic", "urllib3", "transformers", "datasets", "httpx", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING if not verbose else logging.INFO)
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    # MLflow's own stderr handler would bypass the masking above; its records reach ours instead
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        import datasets

        datasets.disable_progress_bars()
    except ImportError:
        pass


class MaskingFormatter(logging.Formatter):
    """Log lines and tracebacks with passwords in URLs masked: a storage or tracking URL can turn up in any library's
    message (MLflow's connection errors quote the full URL)."""

    def format(self, record: logging.LogRecord) -> str:
        from sweeps.config import mask_secrets

        return mask_secrets(super().format(record))


def _masked(exc: BaseException) -> str:
    from sweeps.config import mask_secrets

    return mask_secrets(str(exc))


def _masked_excepthook(kind: type[BaseException], exc: BaseException, tb: Any) -> None:
    import traceback

    from sweeps.config import mask_secrets

    sys.stderr.write(mask_secrets("".join(traceback.format_exception(kind, exc, tb))))


def optuna_logging_off() -> None:
    """Optuna logs every trial itself; our own progress lines say more (strategy, epoch, memory)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _add_spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", help="study file (YAML)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field, typed like the YAML (repeatable), e.g. --set training.epochs=1",
    )
    p.add_argument("--output", help="study folder (default: the file's `output`, else runs/<name>)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sweeps", description=__doc__.split("\n")[0].replace("``", ""))
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and the final summary")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run (or resume) the study: every trial logged to MLflow")
    _add_spec_args(run)
    run.add_argument(
        "--workers", type=int, default=1, help="worker processes on this machine (one GPU each when available)"
    )
    run.add_argument("--no-report", action="store_true", help="skip writing the HTML report at the end")

    validate = sub.add_parser("validate", help="check a study file without running it")
    _add_spec_args(validate)
    validate.add_argument("--model", action="store_true", help="also load the model and check strategies against it")

    report = sub.add_parser("report", help="comparison table and HTML report of a study's trials")
    _add_spec_args(report)
    report.add_argument("--format", choices=["table", "csv", "json", "markdown"], default="table")

    inspect = sub.add_parser("inspect", help="layer-group table for a model and a strategy")
    inspect.add_argument("model", help="hub id, local folder, package:<name>, or a study file (its task.model)")
    inspect.add_argument("--strategy", default="none", help="strategy name (composed with +, or module:Class)")
    inspect.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="strategy hyperparameter")
    inspect.add_argument("--epoch", type=int, default=0, help="plan at this epoch (gradual unfreezing)")
    inspect.add_argument("--format", choices=["table", "json"], default="table")
    inspect.add_argument(
        "--num-labels", type=int, default=None, help="head size (default: the checkpoint's config.id2label)"
    )

    sub.add_parser("list-strategies", help="built-in, registered and entry-point strategies with their parameters")

    predict = sub.add_parser(
        "predict", help="write submission.csv for a test file from the study's best trial (scored if it has labels)"
    )
    _add_spec_args(predict)
    predict.add_argument("--test", "--data", dest="test", help="file to predict (default: task.data.test)")
    predict.add_argument("--out", default=None, help="output CSV (default: <study folder>/submission.csv)")
    predict.add_argument("--proba", action="store_true", help="write class probabilities instead of labels")
    predict.add_argument(
        "--trial", type=int, default=None,
        help="predict with this completed trial instead of the best (retrained first if its model was not kept)",
    )

    dash = sub.add_parser("dashboard", help="optuna-dashboard and the MLflow UI on the study's stores (127.0.0.1)")
    _add_spec_args(dash)
    dash.add_argument("--port", type=int, default=8080, help="optuna-dashboard port (default 8080)")
    dash.add_argument("--mlflow-port", type=int, default=5000, help="MLflow UI port (default 5000)")
    dash.add_argument("--no-optuna", action="store_true", help="do not start optuna-dashboard")
    dash.add_argument("--no-mlflow", action="store_true", help="do not start the MLflow UI")
    return parser


def cmd_dashboard(args: argparse.Namespace) -> int:
    from sweeps.dashboard import plan_servers, serve

    spec = _load(args)
    _setup_logging(None, args.quiet, args.verbose)
    servers = plan_servers(spec, spec.output_dir, None if args.no_optuna else args.port,
                           None if args.no_mlflow else args.mlflow_port)
    return serve(servers)


def _load(args: argparse.Namespace):
    from sweeps.config import load_spec

    return load_spec(args.study, args.overrides, output=args.output)


def _warn_about(spec: Any) -> None:
    """Study-file choices that are valid but make the comparison unfair (logged, never fatal)."""
    from sweeps.config.load import shared_fixed_lr_warning

    warning = shared_fixed_lr_warning(spec)
    if warning:
        log.warning("warning: %s", warning)


def cmd_run(args: argparse.Namespace) -> int:
    spec = _load(args)
    out = spec.output_dir
    _setup_logging(out, args.quiet, args.verbose)
    _warn_about(spec)
    from sweeps.signals import install_stop_handlers

    install_stop_handlers()
    if args.workers > 1:
        return _run_workers(args, spec, out)
    return _run_here(spec, out, report=not args.no_report, resume=_resume_command(args))


def _resume_command(args: argparse.Namespace) -> str:
    """The command that resumes this run: the same study file, ``--output`` and ``--set`` overrides (passwords
    masked: they are printed)."""
    import shlex

    from sweeps.config import mask_secrets

    parts = ["python", "-m", "sweeps", "run", args.study]
    if args.output:
        parts += ["--output", args.output]
    for override in args.overrides:
        parts += ["--set", override]
    if args.workers > 1:
        parts += ["--workers", str(args.workers)]
    command = " ".join(shlex.quote(p) for p in parts)
    masked = mask_secrets(command)
    return masked + ("   (with your password in place of ***)" if masked != command else "")


def _interrupted(resume: str, exc: BaseException | None = None) -> int:
    """Exit code 130 for Ctrl-C, 143 for SIGTERM, after saying how to resume."""
    code = getattr(exc, "exit_code", EXIT_INTERRUPTED)
    what = "Terminated (SIGTERM)" if code == EXIT_TERMINATED else "Interrupted"
    if _is_worker():  # a worker of --workers: its parent prints the command to resume
        log.info("worker %d %s; its trial was recorded", os.getpid(), what.lower())
        return code
    log.warning(
        "\n%s: the current trial was recorded as failed (interrupted); completed trials are kept and the "
        "interrupted one does not count toward n_trials.\nResume with the same command: %s",
        what,
        resume,
    )
    return code


def _is_worker() -> bool:
    from sweeps.workers import WORKER_ENV

    return bool(os.environ.get(WORKER_ENV))


def _run_here(spec: StudySpec, out: Path, report: bool = True, resume: str | None = None) -> int:
    from sweeps.study import StudyRunner, storage_url

    runner = StudyRunner(spec, out, progress=log.info)
    try:
        runner.prepare()
        reports = runner.run()
    except KeyboardInterrupt as stop:
        if runner.parent_run_id and not _is_worker():  # reopened (RUNNING) by the next run of the study
            try:
                runner.tracker.end_run(runner.parent_run_id, "KILLED")
            except Exception as exc:
                log.debug("parent run not ended: %s", exc)
        return _interrupted(resume or f"python -m sweeps run {spec.source_path} --output {out}", stop)
    if not _is_worker():  # one summary, the parent's: it also ends the parent run once every worker is done
        from sweeps.phases import REPORT, timed

        with timed(REPORT):
            _summary(runner, out, report)
    log.debug("time by phase: %s", runner.write_phases())
    completed = [t for t in runner.study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    del reports
    if not completed:
        log.error("no trial completed; see the failure reasons above and in %s", out / "sweeps.log")
        return EXIT_FAILURE
    from sweeps.config import mask_secrets

    log.debug("storage: %s", mask_secrets(storage_url(spec)))
    return EXIT_OK


def _summary(runner: StudyRunner, out: Path, report: bool) -> None:
    from sweeps.config import mask_secrets
    from sweeps.phases import describe

    study = runner.study
    report_path = None
    if report:
        try:
            from sweeps.report import write_report

            report_path = write_report(
                runner.spec, out, study=study, tracker=runner.tracker, parent_run_id=runner.parent_run_id
            )
        except Exception as exc:
            log.warning("report not written: %s", exc)
    still_running = any(t.state.name == "RUNNING" for t in study.get_trials(deepcopy=False))
    if runner.parent_run_id and not still_running:  # other workers may still be logging under the parent
        runner.tracker.end_run(runner.parent_run_id, "FINISHED")
    states: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        if not t.user_attrs.get(TrialAttr.SURPLUS):
            states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
    lines = ["", f"study {study.study_name}: " + ", ".join(f"{n} {s}" for s, n in sorted(states.items()))]
    try:
        from sweeps.report import trials_table

        table = trials_table(study)
        shown = [c for c in ("number", "state", "strategy", "accuracy", "f1_macro", "epoch_time_s", "peak_memory_mb",
                             "trainable_params") if c in table.columns]
        if len(table):
            lines.append(table[shown].head(15).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    except Exception as exc:  # the summary must not hide the study's results
        log.debug("summary table failed: %s", exc)
    lines.extend(_answer(study, out))
    uri = mask_secrets(runner.tracker.uri)
    experiment = runner.tracker.experiment_name
    if uri.startswith(("http://", "https://")):
        page = f"{uri}/#/experiments/{runner.tracker.experiment_id}/runs"
        lines.append(f"MLflow: open {page}  (experiment {experiment!r})")
    else:
        lines.append(f"MLflow: {sys.executable} -m mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"
                     f"  (experiment {experiment!r})")
        lines.append(f"dashboards: python -m sweeps dashboard {runner.spec.source_path} --output {out}")
    if report_path:
        lines.append(f"report: {report_path}")
    wall, spent = runner.time_by_phase()
    lines.append(f"time in this process, by phase: {describe(spent, wall)}")
    lines.append(f"study folder: {out}")
    print("\n".join(lines), flush=True)


def _answer(study: Any, out: Path) -> list[str]:
    """The best trial (the one ranking rule everywhere) and the verdict's sentences: health warnings first, then the
    best, the baseline comparison with its noise rule, the cheapest tie and the evidence per strategy."""
    from sweeps.report import recommendation, trials_table
    from sweeps.report.recommend import prediction_reader
    from sweeps.report.table import _study_metric, all_test_metrics, trial_labels

    if len(study.directions) > 1:
        return [f"Pareto-optimal trials: {', '.join(str(t.number) for t in study.best_trials[:10])}"]
    try:
        metric, direction = _study_metric(study)
        table = trials_table(study, metric, direction)
        names = study.user_attrs.get(StudyAttr.LABELS) or []
        sentences = recommendation(
            table, metric, direction, trial_labels(study),
            predictions=prediction_reader(out, names) if names else None, num_labels=len(names) or None,
            test_metrics=all_test_metrics(study),
        )
    except Exception as exc:  # the summary must not hide the study's results
        log.debug("verdict failed: %s", exc)
        return []
    return ["", *sentences[1:]]  # the first sentence (trial counts) repeats the line above the table



def _run_workers(args: argparse.Namespace, spec: StudySpec, out: Path) -> int:
    """K worker processes on one study through Optuna's storage; one GPU each when there are enough GPUs. A worker
    that dies has its trial failed at once and is replaced while the budget lasts; the exit code is then 1."""
    import torch

    from sweeps.signals import ignoring_stop_signals
    from sweeps.study import StudyRunner, budget_used, recover_dead_trials
    from sweeps.workers import WORKER_ENV, WorkerPool, worker_command

    runner = StudyRunner(spec, out, progress=log.info)  # creates the study and storage once, before the workers race
    runner.parent_run_id = runner.open_parent_run()
    runner._cover_strategies()  # enqueued once here rather than by every worker at once
    gpus = torch.cuda.device_count()
    cores = os.cpu_count() or 1
    threads = max(1, cores // args.workers) if spec.training.num_threads is None and gpus < args.workers else None
    cmd = worker_command(args, spec, out, threads)

    def launch(i: int) -> subprocess.Popen[bytes]:
        env = {**os.environ, WORKER_ENV: str(os.getpid())}
        if gpus >= args.workers:
            env["CUDA_VISIBLE_DEVICES"] = str(i)
        proc = subprocess.Popen(cmd, env=env)
        log.info("worker %d started (pid %d)%s", i, proc.pid, f" on GPU {i}" if gpus >= args.workers else "")
        return proc

    n_trials = spec.optuna.n_trials
    pool = WorkerPool(
        args.workers,
        launch,
        recover=lambda: recover_dead_trials(runner.study, runner.tracker, spec.optuna.retry_failed),
        budget_left=lambda: None if n_trials is None else n_trials - budget_used(runner.study),
        finished=lambda: sum(t.state.is_finished() for t in runner.study.get_trials(deepcopy=False)),
    )
    try:
        pool.start()
        result = pool.wait()
    except KeyboardInterrupt as exc:
        # Ctrl-C in a terminal reaches the workers too; a SIGINT or SIGTERM sent to this process alone must stop them
        # as well (each records its current trial as interrupted; a second signal during that bookkeeping is ignored)
        with ignoring_stop_signals():
            pool.forward(getattr(exc, "signum", signal.SIGINT))
            recover_dead_trials(runner.study, runner.tracker, spec.optuna.retry_failed)
            if runner.parent_run_id:
                runner.tracker.end_run(runner.parent_run_id, "KILLED")
        return _interrupted(_resume_command(args), exc)
    _summary(runner, out, report=not args.no_report)
    if result.deaths:
        log.error(
            "%d worker(s) died (%s)%s; the trials they were running are recorded as failed. Rerun the same command "
            "to finish the study: %s",
            len(result.deaths),
            ", ".join(f"worker {i} pid {pid}: code {code}" for i, pid, code in result.deaths),
            f"; {result.not_replaced}" if result.not_replaced else "",
            _resume_command(args),
        )
        return EXIT_FAILURE
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    spec = _load(args)
    _setup_logging(None, args.quiet, args.verbose)
    _warn_about(spec)
    if args.model:  # in a throw-away folder: validation writes nothing to the study folder
        import tempfile

        from sweeps.study.checks import check_against_model

        with tempfile.TemporaryDirectory(prefix="sweeps-validate-") as scratch:
            check_against_model(spec, Path(scratch))
    print(f"{args.study}: OK ({len(spec.strategies)} strategies, objectives {spec.objective_metrics})")
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    spec = _load(args)
    out = spec.output_dir
    _setup_logging(None, args.quiet, args.verbose)
    from sweeps.report import trials_table, write_report
    from sweeps.study import open_study

    study = open_study(spec)
    table = trials_table(study)
    if args.format == "csv":
        print(table.to_csv(index=False))
    elif args.format == "json":
        print(table.to_json(orient="records", indent=2))
    elif args.format == "markdown":
        from sweeps.report import to_markdown

        print(to_markdown(table))
    else:
        print(table.to_string(index=False) if len(table) else "(no trials yet)")
    path = write_report(spec, out, study=study)
    print(f"\nreport: {path}", file=sys.stderr)
    return EXIT_OK


def _parse_params(items: list[str]) -> dict[str, Any]:
    import yaml

    out = {}
    for item in items:
        if "=" not in item:
            raise SweepsError(f"--param {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def cmd_inspect(args: argparse.Namespace) -> int:
    _setup_logging(None, True, args.verbose)
    import torch

    from strategies import describe, discover_layers, format_table
    from sweeps.train import check_strategy, layer_spec
    from sweeps.train.inspect_model import inspect_model, probe_batch
    from sweeps.train.unused import annotate_unused, probe_unused, unused_text

    spec = None
    model_ref, base = args.model, None
    if args.model.endswith((".yaml", ".yml")) and Path(args.model).is_file():
        from sweeps.config import load_spec

        spec = load_spec(args.model)
        model_ref, base = spec.task.model, spec.base_dir
    model, location, tokenizer = inspect_model(model_ref, spec, base, args.num_labels)
    layer_map = discover_layers(model, layer_spec(spec) if spec else None)
    strategy = check_strategy(args.strategy, _parse_params(args.param), layer_map)
    unused = probe_unused(model, probe_batch(tokenizer), torch.device("cpu")) if tokenizer is not None else set()
    rows = annotate_unused(describe(layer_map, strategy.plan(layer_map, args.epoch, 0)), layer_map, unused)
    if args.format == "json":
        print(json.dumps(rows, indent=2))
    else:
        print(f"{location} — {layer_map.source}")
        print(format_table(rows))
        if note := unused_text(rows):
            print(note)
    return EXIT_OK


def cmd_list_strategies(args: argparse.Namespace) -> int:
    import dataclasses

    from strategies import available, resolve

    for name, origin in sorted(available().items()):
        (cls,) = resolve(name)
        params = ", ".join(
            f"{k}" + ("" if v is dataclasses.MISSING else f"={v!r}") for k, v in cls.param_defaults().items()
        )
        doc = (cls.__doc__ or sys.modules[cls.__module__].__doc__ or "").strip().split("\n")[0]
        print(f"{name:<16} {params or '-':<70} {origin}\n{'':<16} {doc}")
    return EXIT_OK


def cmd_predict(args: argparse.Namespace) -> int:
    spec = _load(args)
    out = spec.output_dir
    _setup_logging(None, args.quiet, args.verbose)
    from sweeps.predict import predict_submission

    trial = args.trial
    if trial is not None:
        from sweeps.study.retrain import ensure_trial_model

        trial = ensure_trial_model(spec, out, trial, say=log.info)
    result = predict_submission(
        spec, out, test=args.test, out_path=Path(args.out) if args.out else None, proba=args.proba, trial=trial
    )
    print(f"wrote {result.path}")
    if result.scores is not None:
        print(f"trial {result.trial}: {result.scores.summary()}")
    return EXIT_OK


COMMANDS = {
    "run": cmd_run,
    "validate": cmd_validate,
    "report": cmd_report,
    "inspect": cmd_inspect,
    "list-strategies": cmd_list_strategies,
    "predict": cmd_predict,
    "dashboard": cmd_dashboard,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sys.excepthook = _masked_excepthook  # an unexpected traceback must not print a password either
    try:
        return COMMANDS[args.command](args)
    except SweepsError as exc:
        print(f"error: {_masked(exc)}", file=sys.stderr)
        return exc.exit_code
    except (ValueError, LookupError) as exc:
        from strategies import LayerDiscoveryError, StrategyConfigError, UnknownStrategyError

        if isinstance(exc, (LayerDiscoveryError, StrategyConfigError, UnknownStrategyError)):
            print(f"error: {_masked(exc)}", file=sys.stderr)
            return EXIT_INVALID
        raise
    except KeyboardInterrupt as exc:
        print("interrupted", file=sys.stderr)
        return getattr(exc, "exit_code", EXIT_INTERRUPTED)


if __name__ == "__main__":
    sys.exit(main())
