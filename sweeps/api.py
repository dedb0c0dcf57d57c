"""A notebook-friendly API: run a study, reload its best model and predict, with pandas objects in and out.

    from sweeps.api import run_study, predict
    table = run_study("studies/kaggle_csv_cv.yaml", overrides=["optuna.n_trials=4"])   # one row per trial
    preds = predict("studies/kaggle_csv_cv.yaml", test_df)                            # prediction + prob_<label>
    preds.attrs["metrics"]        # when test_df has the label column: accuracy, f1_macro, f1_weighted, rows, ...
    predict("studies/kaggle_csv_cv.yaml", test_df, trial=3)   # any completed trial (retrained if not kept)

``study`` is a study file (str/Path), the same data as a dict, or a :class:`~sweeps.config.StudySpec`; where a study
folder is enough (:func:`load_best`, :func:`predict`) the folder itself (or a loaded :class:`BestModel`) works too.
Running is the same as ``python -m sweeps run``: the same Optuna study and MLflow runs, resumable from either side.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sweeps.errors import DataError, SpecError
from sweeps.predict import BestModel, predict_labels, predict_proba, score_labels
from sweeps.predict import load_best as _load_best_folder
from sweeps.records import TrialAttr, default_storage_url, default_tracking_uri, trial_metrics

log = logging.getLogger(__name__)

__all__ = ["BestModel", "load_best", "load_study_spec", "predict", "run_study", "trials_frame"]


def load_study_spec(study: Any, overrides: Sequence[str] = (), output: str | Path | None = None) -> Any:
    """A :class:`~sweeps.config.StudySpec` from a study file, a dict (relative paths against the current directory)
    or a spec (copied when ``overrides``/``output`` change it)."""
    from sweeps.config import StudySpec, apply_overrides, load_spec, parse_spec

    overrides = [overrides] if isinstance(overrides, str) else list(overrides)
    out = str(output) if output is not None else None
    if isinstance(study, StudySpec):
        if not overrides and out is None:
            return study
        data = study.to_dict()
        if out is not None:  # the old folder's default storage/tracking locations must follow the new folder
            old = Path(study.output_dir)
            if data["optuna"].get("storage") == default_storage_url(old):
                data["optuna"]["storage"] = None
            if data["tracking"].get("uri") == default_tracking_uri(old):
                data["tracking"]["uri"] = None
        data = apply_overrides(data, overrides) if overrides else data
        return parse_spec(data, study.base_dir, output=out, source_path=study.source_path)
    if isinstance(study, dict):
        data = apply_overrides(study, overrides) if overrides else study
        return parse_spec(data, Path.cwd(), output=out)
    if isinstance(study, (str, Path)):
        return load_spec(study, overrides, output=out)
    raise SpecError("", f"study: expected a study file path, a dict or a StudySpec, got {type(study).__name__}")


def trials_frame(study: Any) -> Any:
    """One row per trial of an Optuna study: number, state, strategy, params, fail reason and the ``metric.<name>``
    user attributes as columns (the fallback when :mod:`sweeps.report` is not available)."""
    import pandas as pd

    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get(TrialAttr.SURPLUS):
            continue
        row: dict[str, Any] = {
            "number": t.number,
            "state": t.state.name.lower(),
            "strategy": t.user_attrs.get(TrialAttr.STRATEGY),
            "params": dict(t.params),
        }
        row.update(sorted(trial_metrics(t.user_attrs).items()))
        row["fail_reason"] = t.user_attrs.get(TrialAttr.FAIL_REASON)
        rows.append(row)
    columns = ["number", "state", "strategy", "params"]
    return pd.DataFrame(rows, columns=None if rows else columns)


def _table(study: Any) -> Any:
    try:
        from sweeps.report import trials_table
    except ImportError:
        return trials_frame(study)
    return trials_table(study)


def run_study(
    study: Any,
    *,
    overrides: Sequence[str] = (),
    output: str | Path | None = None,
    dataframe: Any = None,
) -> Any:
    """Run (or resume) the study until its budget is used up and return its trials as a DataFrame.

    ``overrides`` are ``--set`` items (``"training.epochs=1"``); ``output`` replaces the study folder; ``dataframe``
    (pandas or ``datasets.Dataset``) replaces the training file. Ctrl-C records the current trial (interrupted) and
    re-raises ``KeyboardInterrupt``; running again resumes.
    """
    from sweeps.study import StudyRunner

    spec = load_study_spec(study, overrides, output)
    runner = StudyRunner(spec, spec.output_dir, dataframe=dataframe, progress=log.info)
    try:
        runner.prepare()
        runner.run()
    finally:
        if runner.parent_run_id:
            runner.tracker.end_run(runner.parent_run_id, "FINISHED")
    return _table(runner.study)


def _best_and_spec(study_or_out: Any, trial: int | None = None) -> tuple[BestModel, Any]:
    from sweeps.config import StudySpec

    if isinstance(study_or_out, BestModel):
        if trial is not None and trial != study_or_out.trial:
            raise SpecError("", f"trial={trial}: the BestModel passed is trial {study_or_out.trial}'s")
        return study_or_out, None
    if isinstance(study_or_out, (str, Path)) and Path(study_or_out).is_dir():
        return _load_best_folder(Path(study_or_out), trial=trial), None  # a folder alone cannot retrain: no spec
    if isinstance(study_or_out, (str, Path, dict, StudySpec)):
        spec = load_study_spec(study_or_out)
        if trial is not None:
            from sweeps.study.retrain import ensure_trial_model

            trial = ensure_trial_model(spec, spec.output_dir, trial)
        device = spec.training.device if spec.training.device != "auto" else None
        return _load_best_folder(spec.output_dir, device=device, max_length=spec.task.max_length, trial=trial), spec
    raise SpecError(
        "",
        f"expected a study file, a study folder, a dict, a StudySpec or a BestModel, got {type(study_or_out).__name__}",
    )


def load_best(study_or_out: Any, *, trial: int | None = None) -> BestModel:
    """The best trial's model(s) of a study (file, dict or spec) or of a study folder (see
    :func:`sweeps.predict.load_best`); with ``trial`` that completed trial's, retrained first from the study file
    when its model was not kept (a study folder alone only has the kept models)."""
    return _best_and_spec(study_or_out, trial)[0]


def predict(
    study_or_out: Any,
    data: Any,
    *,
    text_column: str | None = None,
    text_pair_column: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    batch_size: int = 64,
    trial: int | None = None,
) -> Any:
    """Predictions of the study's best trial (or of the completed trial ``trial``, see :func:`load_best`) as a
    DataFrame: ``prediction`` (the label name) and one ``prob_<label>`` column per class, indexed like ``data``.

    When ``data`` is a DataFrame with the label column (``label_column``, else the study's
    ``task.data.label_column``, else ``label``), the predictions are scored against it: ``frame.attrs["metrics"]``
    holds accuracy, f1_macro and f1_weighted (as training computes them) over the ``rows`` labelled rows, and
    ``unlabelled``, the rows without a label (not scored). Labels the model does not know are a logged warning and
    no metrics.

    ``data`` is a text, a list of texts, a pandas Series or a DataFrame (its text column is ``text_column``, else the
    study's ``task.data.text_column``, else ``text``; likewise for the pair column). Pass a :class:`BestModel` from
    :func:`load_best` to avoid reloading the models on every call.

    For an image classifier ``data`` is an image (a path or a PIL image), a list or Series of them, or a DataFrame
    whose ``image_column`` (else the study's ``task.data.image_column``, else ``image``) holds them; relative paths
    are relative to the current folder.
    """
    import pandas as pd

    best, spec = _best_and_spec(study_or_out, trial)
    if best.modality == "image":
        frame, probs = _predict_images(best, spec, data, image_column, batch_size)
    else:
        frame, probs = _predict_texts(best, spec, data, text_column, text_pair_column, batch_size)
    if isinstance(data, pd.DataFrame):
        column = label_column or (spec.task.data.label_column if spec is not None else "label")
        if column in data.columns:
            _attach_scores(frame, best, probs, data[column].tolist(), column)
    return frame


def _attach_scores(frame: Any, best: BestModel, probs: Any, values: list[Any], column: str) -> None:
    from sweeps.data import label_texts

    try:
        scores = score_labels(best.label_names, probs, label_texts(values), column=column, where="predict")
    except DataError as exc:
        log.warning("warning: no metrics: %s", exc)
        return
    if scores is None:
        log.info("predict: column %r has no labels: no metrics", column)
        return
    frame.attrs["metrics"] = {**scores.metrics, "rows": scores.rows, "unlabelled": scores.unlabelled}
    log.info("trial %d: %s", best.trial, scores.summary())


def _predict_texts(
    best: BestModel, spec: Any, data: Any, text_column: str | None, text_pair_column: str | None, batch_size: int
) -> tuple[Any, Any]:
    import pandas as pd

    pairs = None
    index = None
    if isinstance(data, pd.DataFrame):
        cfg = spec.task.data if spec is not None else None
        column = text_column or (cfg.text_column if cfg is not None else "text")
        if column not in data.columns:
            found = ", ".join(repr(str(c)) for c in data.columns)
            raise DataError(f"predict: no text column {column!r} in the DataFrame; columns found: {found}")
        pair_column = text_pair_column or (cfg.text_pair_column if cfg is not None else None)
        if pair_column is not None:
            if pair_column not in data.columns:
                found = ", ".join(repr(str(c)) for c in data.columns)
                raise DataError(
                    f"predict: no text pair column {pair_column!r} in the DataFrame; columns found: {found}"
                )
            pairs = data[pair_column].tolist()
        texts, index = data[column].tolist(), data.index
    elif isinstance(data, pd.Series):
        texts, index = data.tolist(), data.index
    elif isinstance(data, str):
        texts = [data]
    else:
        texts = list(data)
    probs = predict_proba(best, texts, pairs, batch_size=batch_size)
    return _frame(best, probs, index), probs


def _frame(best: BestModel, probs: Any, index: Any) -> Any:
    import pandas as pd

    frame = pd.DataFrame({"prediction": predict_labels(best, probs)}, index=index)
    for j, name in enumerate(best.label_names):
        frame[f"prob_{name}"] = probs[:, j]
    return frame


def _predict_images(
    best: BestModel, spec: Any, data: Any, image_column: str | None, batch_size: int
) -> tuple[Any, Any]:
    import pandas as pd

    from sweeps.predict import predict_image_proba

    index = None
    if isinstance(data, pd.DataFrame):
        column = image_column or (spec.task.data.image_column if spec is not None else None) or "image"
        if column not in data.columns:
            found = ", ".join(repr(str(c)) for c in data.columns)
            raise DataError(f"predict: no image column {column!r} in the DataFrame; columns found: {found}")
        images, index = data[column].tolist(), data.index
    elif isinstance(data, pd.Series):
        images, index = data.tolist(), data.index
    elif isinstance(data, (str, Path)) or hasattr(data, "mode"):
        images = [data]
    else:
        images = list(data)
    probs = predict_image_proba(best, images, batch_size=batch_size)
    return _frame(best, probs, index), probs
