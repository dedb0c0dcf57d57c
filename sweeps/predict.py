"""Predictions from a study's trial: reload its saved model(s), score texts or images, write a Kaggle-style
submission (and score it when the file carries labels).

The study runner keeps the best trial's model at ``<out>/models/trial_<n>/`` (with cross-validation one model per
fold under ``fold_<k>/``) and points at it from ``<out>/models/best.json``; another trial's model is there once
:mod:`sweeps.study.retrain` has trained it again. :func:`load_best` reloads such a folder with
the plain ``transformers`` Auto classes (the saved folders are ordinary ``save_pretrained`` checkpoints, readable
without freeze-sweeps) — or, for a factory / ``task.head`` model, rebuilds it with the same code and loads its
``state_dict`` (:mod:`sweeps.train.custom_models`); :func:`predict_proba` averages the class probabilities of the
fold models;
:func:`predict_submission` reads the test file with :func:`sweeps.data.read_test` (the same readers and checks as
training)
and writes ``submission.csv``: the id column plus the predicted label (original label names) or one probability
column per class. When the file has the label column, :func:`score_labels` scores the predictions with the
metrics of :mod:`sweeps.metrics` (the ones training reports, under the same names).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sweeps.data import read_test
from sweeps.data.batch import logits_of
from sweeps.errors import DataError, ModelLoadError, SweepsError
from sweeps.metrics import classification_metrics
from sweeps.records import best_model_pointer, models_dir, trial_model_dir
from sweeps.train.custom_models import is_saved_custom, load_saved

if TYPE_CHECKING:
    from sweeps.config import StudySpec

log = logging.getLogger(__name__)

__all__ = [
    "BestModel",
    "Scores",
    "Submission",
    "has_saved_model",
    "load_best",
    "load_model_folder",
    "predict_image_proba",
    "predict_labels",
    "predict_proba",
    "predict_submission",
    "score_labels",
]

DEFAULT_MAX_LENGTH = 128  # task.max_length's default, for a study folder reloaded without its study file


@dataclass
class BestModel:
    """The best trial's classifier(s), ready to predict. ``models`` holds one model, or one per CV fold."""

    trial: int
    path: Path
    models: list[Any]
    tokenizer: Any
    label_names: list[str]
    mlflow_run_id: str | None = None
    max_length: int | None = None  # the study's task.max_length when known (tokenise as in training)
    device: Any = None
    folders: list[Path] = field(default_factory=list)
    modality: str = "text"  # "image": ``tokenizer`` is the saved image processor, inputs are images

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def __repr__(self) -> str:
        folds = f", {len(self.models)} fold models" if len(self.models) > 1 else ""
        return f"BestModel(trial={self.trial}, labels={self.label_names}{folds}, path={str(self.path)!r})"


# --------------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------------


def _model_folders(folder: Path) -> list[Path]:
    """``folder`` itself (train/validation) or its ``fold_<k>`` subfolders in fold order (cross-validation)."""
    folds = [p for p in folder.glob("fold_*") if p.is_dir() and p.name[5:].isdigit()]
    if folds:
        return sorted(folds, key=lambda p: int(p.name[5:]))
    return [folder]


def _label_names(config: Any, where: Path) -> list[str]:
    id2label = getattr(config, "id2label", None) or {}
    try:
        items = sorted((int(k), str(v)) for k, v in id2label.items())
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"{where}: config.id2label has non-integer ids: {id2label}") from exc
    if not items or [i for i, _ in items] != list(range(len(items))):
        raise ModelLoadError(f"{where}: config.id2label does not map 0..n-1 to label names: {id2label}")
    return [name for _, name in items]


def _device(device: Any) -> Any:
    import torch

    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_best(
    out: str | Path, *, device: Any = None, max_length: int | None = None, trial: int | None = None
) -> BestModel:
    """Reload the best trial's model(s) and tokenizer from the study folder ``out`` (or trial ``trial``'s, when its
    saved model is there: the runner keeps the best trial's only, :func:`sweeps.study.retrain.ensure_trial_model`
    trains any other completed one again).

    Raises :class:`~sweeps.errors.SweepsError` when the study has no completed trial (no ``best.json``) or the saved
    model is missing, :class:`~sweeps.errors.ModelLoadError` when a saved folder cannot be loaded.
    """
    out = Path(out)
    if not out.is_dir():
        raise SweepsError(f"study folder {out} does not exist: run the study first (python -m sweeps run <study.yaml>)")
    pointer = best_model_pointer(out)
    info: dict[str, Any] = {}
    if trial is None:
        if not pointer.is_file():
            raise SweepsError(
                f"{out}: no best model yet ({pointer} is missing): the study has no completed trial. "
                "Run (or resume) it with python -m sweeps run <study.yaml>, and check the trials' failure reasons"
            )
        try:
            info = json.loads(pointer.read_text(encoding="utf-8"))
            trial = int(info["trial"])
        except (ValueError, KeyError, TypeError) as exc:
            raise SweepsError(f"{pointer}: unreadable best-model pointer ({type(exc).__name__}: {exc})") from exc
    elif pointer.is_file():
        info = json.loads(pointer.read_text(encoding="utf-8"))
        if int(info.get("trial", -1)) != trial:
            info = {"max_length": info.get("max_length")}
    folder = models_dir(out) / str(info.get("path") or trial_model_dir(out, trial).name)
    if max_length is None and isinstance(info.get("max_length"), int):
        max_length = info["max_length"]
    what = f"the best trial ({trial})" if info.get("trial") == trial else f"trial {trial}"
    best = load_model_folder(folder, trial, device=device, max_length=max_length, what=what)
    best.mlflow_run_id = info.get("mlflow_run_id")
    return best


def load_model_folder(
    folder: Path, trial: int, *, device: Any = None, max_length: int | None = None, what: str | None = None
) -> BestModel:
    """Reload one trial's saved model(s) and tokenizer from ``folder`` (``fold_<k>`` subfolders under CV)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folders = _model_folders(folder) if folder.is_dir() else []
    missing = [f for f in folders if not _is_saved(f)]
    if not folders or missing:
        raise SweepsError(
            f"{folder.parent.parent}: {what or f'trial {trial}'} has no saved model at "
            f"{missing[0] if missing else folder} (only the best trial's model is kept, or it is still being saved "
            f"by another worker); python -m sweeps predict <study.yaml> --trial {trial} trains it again"
        )
    dev = _device(device)
    modality = "image" if saved_is_image(folders[0]) else "text"
    if modality == "image":
        from transformers import AutoModelForImageClassification as model_class

        from sweeps.train.image_models import load_saved_image_processor as load_preprocessor
    else:
        model_class, load_preprocessor = AutoModelForSequenceClassification, AutoTokenizer.from_pretrained
    try:
        tokenizer = load_preprocessor(str(folders[0]))
    except Exception as exc:  # every loader failure becomes one clear message
        kind = "image processor" if modality == "image" else "tokenizer"
        raise ModelLoadError(f"{folders[0]}: cannot load the saved {kind}: {type(exc).__name__}: {exc}") from exc
    models, label_names = [], None
    for f in folders:
        if is_saved_custom(f):  # a factory or task.head model: rebuilt by the same code, weights from its state_dict
            model, names = load_saved(f)
        else:
            try:
                model = model_class.from_pretrained(str(f))
            except Exception as exc:
                raise ModelLoadError(f"{f}: cannot load the saved model: {type(exc).__name__}: {exc}") from exc
            names = _label_names(model.config, f)
        if label_names is not None and names != label_names:
            raise ModelLoadError(f"{f}: labels {names} differ from the other fold models' {label_names}")
        label_names = names
        models.append(model.to(dev).eval())
    assert label_names is not None
    return BestModel(
        trial=trial,
        path=folder,
        models=models,
        tokenizer=tokenizer,
        label_names=label_names,
        max_length=max_length,
        device=dev,
        folders=folders,
        modality=modality,
    )


def _is_saved(folder: Path) -> bool:
    return (folder / "config.json").is_file() or is_saved_custom(folder)


def has_saved_model(folder: Path) -> bool:
    """Whether ``folder`` holds a complete saved trial model (every fold's, under cross-validation)."""
    return folder.is_dir() and all(_is_saved(f) for f in _model_folders(folder))


def saved_is_image(folder: Path) -> bool:
    """Whether a saved checkpoint is an image classifier (read from its ``config.json``, without loading it)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

    try:
        model_type = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return False
    return model_type in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES


def _best_folder(out: Path) -> Path | None:
    """The first model folder of the best trial, if there is one (for deciding how to read the test data)."""
    try:
        info = json.loads((out / "models" / "best.json").read_text(encoding="utf-8"))
        folder = out / "models" / str(info.get("path") or f"trial_{int(info['trial'])}")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return _model_folders(folder)[0] if folder.is_dir() else None


# --------------------------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------------------------


def _as_texts(values: Any, what: str) -> list[str]:
    if isinstance(values, str):
        values = [values]
    texts = list(values)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise DataError(f"{what}: expected text, found {type(texts[bad[0]]).__name__} at position {bad[0]}")
    return texts


def predict_proba(
    best: BestModel,
    texts: Sequence[str] | str,
    text_pairs: Sequence[str] | None = None,
    max_length: int | None = None,
    batch_size: int = 64,
) -> np.ndarray:
    """Class probabilities, shape ``(len(texts), num_labels)``, columns in ``best.label_names`` order; with CV the
    mean of the fold models' probabilities. ``max_length`` defaults to the study's ``task.max_length`` (as in
    training) when ``best`` knows it."""
    import torch

    texts = _as_texts(texts, "texts")
    pairs = _as_texts(text_pairs, "text_pairs") if text_pairs is not None else None
    if pairs is not None and len(pairs) != len(texts):
        raise DataError(f"text_pairs: {len(pairs)} pairs for {len(texts)} texts")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    length = int(max_length or best.max_length or DEFAULT_MAX_LENGTH)
    probs = np.zeros((len(texts), best.num_labels), dtype=np.float64)
    if not texts:
        return probs.astype(np.float32)
    tokenizer = best.tokenizer
    inputs = set(getattr(tokenizer, "model_input_names", ())) | {"input_ids", "attention_mask"}
    # longest first, batches of similar length: less padding (the original order is restored below)
    order = np.argsort([-len(t) - (len(pairs[i]) if pairs else 0) for i, t in enumerate(texts)], kind="stable")
    device = best.device or next(best.models[0].parameters()).device
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            idx = order[start : start + batch_size]
            batch_texts = [texts[i] for i in idx]
            batch_pairs = [pairs[i] for i in idx] if pairs is not None else None
            encoded = tokenizer(
                batch_texts, batch_pairs, truncation=True, max_length=length, padding=True, return_tensors="pt"
            )
            encoded = {k: v.to(device) for k, v in encoded.items() if k in inputs}
            total = None
            for model in best.models:
                p = torch.softmax(logits_of(model(**encoded)).float(), dim=-1)
                total = p if total is None else total + p
            assert total is not None
            probs[idx] = (total / len(best.models)).cpu().numpy()
    return probs.astype(np.float32)


def predict_image_proba(
    best: BestModel, images: Sequence[Any], batch_size: int = 64, base_dir: Path | None = None
) -> np.ndarray:
    """Class probabilities for images (paths — relative to ``base_dir``, else the current folder —, ``datasets``
    Image dicts or PIL images), processed exactly as evaluation batches in training (deterministic, never augmented);
    with CV the mean of the fold models' probabilities."""
    import torch

    from sweeps.data.images import ImageCollator, _reference

    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    items = list(images) if not isinstance(images, (str, Path)) else [images]
    refs = []
    for i, item in enumerate(items):
        try:
            refs.append(_reference(str(item) if isinstance(item, Path) else item, base_dir))
        except ValueError as exc:
            raise DataError(f"images: position {i}: {exc}") from exc
    probs = np.zeros((len(refs), best.num_labels), dtype=np.float32)
    collate = ImageCollator(best.tokenizer)
    device = best.device or next(best.models[0].parameters()).device
    with torch.inference_mode():
        for start in range(0, len(refs), batch_size):
            chunk = refs[start : start + batch_size]
            batch = collate([{"image": r, "example_id": start + k} for k, r in enumerate(chunk)])
            pixels = batch["pixel_values"].to(device)
            total = sum(torch.softmax(m(pixel_values=pixels).logits.float(), dim=-1) for m in best.models)
            probs[start : start + len(pixels)] = (total / len(best.models)).cpu().numpy()
    return probs


def predict_labels(best: BestModel, probs: np.ndarray) -> list[str]:
    """The label name of each row's most probable class."""
    return [best.label_names[i] for i in np.asarray(probs).argmax(-1)]


# --------------------------------------------------------------------------------------------------------------------
# Scoring a labelled file
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class Scores:
    """The predictions of a labelled file scored against its labels: ``metrics`` (accuracy, f1_macro, f1_weighted,
    as :func:`sweeps.metrics.classification_metrics` computes them in training) over the ``rows`` labelled rows;
    ``unlabelled`` rows had no label and are not scored."""

    metrics: dict[str, float]
    rows: int
    unlabelled: int = 0

    def summary(self) -> str:
        """One line: ``accuracy=0.8250 f1_macro=0.8100 on 40 labelled rows (2 without a label not scored)``."""
        text = f"accuracy={self.metrics['accuracy']:.4f} f1_macro={self.metrics['f1_macro']:.4f} on {self.rows} "
        text += f"labelled row{'s' if self.rows != 1 else ''}"
        if self.unlabelled:
            text += f" ({self.unlabelled} without a label not scored)"
        return text


def score_labels(
    label_names: Sequence[str], probs: np.ndarray, labels: Sequence[str | None], *, column: str, where: str
) -> Scores | None:
    """Score predictions (``probs``, columns in ``label_names`` order) against a file's labels (text, ``None`` for a
    row without one; see :class:`sweeps.data.SubmissionInput`). ``None`` when no row has a label.

    A label the model does not know makes the scores meaningless (a typo, or another label set): that is a
    :class:`~sweeps.errors.DataError` naming the labels and the column, for the caller to report."""
    index = {name: i for i, name in enumerate(label_names)}
    rows = [i for i, value in enumerate(labels) if value is not None]
    if not rows:
        return None
    unknown: dict[str, int] = {}
    for i in rows:
        if labels[i] not in index:
            unknown[str(labels[i])] = unknown.get(str(labels[i]), 0) + 1
    if unknown:
        listed = ", ".join(f"{name!r} ({n} row{'s' if n != 1 else ''})" for name, n in list(unknown.items())[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        known = ", ".join(repr(n) for n in label_names)
        raise DataError(
            f"{where}: column {column!r} (task.data.label_column) has labels the model does not know: {listed}{more}; "
            f"the model's labels are {known}"
        )
    truth = np.asarray([index[str(labels[i])] for i in rows], dtype=np.int64)
    preds = np.asarray(probs)[rows].argmax(-1)
    return Scores(classification_metrics(truth, preds, len(label_names)), len(rows), len(labels) - len(rows))


def _scores_or_warning(
    label_names: Sequence[str], probs: np.ndarray, labels: Sequence[str | None] | None, column: str, where: str
) -> Scores | None:
    """:func:`score_labels`, with a file that cannot be scored reported as a warning: the predictions themselves do
    not depend on its labels, so they are still written."""
    if labels is None:
        return None
    try:
        scores = score_labels(label_names, probs, labels, column=column, where=where)
    except DataError as exc:
        log.warning("warning: no metrics: %s", exc)
        return None
    if scores is None:
        log.info("%s: column %r has no labels: no metrics", where, column)
    return scores


# --------------------------------------------------------------------------------------------------------------------
# Submission
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class Submission:
    """What :func:`predict_submission` wrote: the file, the trial whose model predicted it, and — when the predicted
    file carries the label column — the scores of the predictions."""

    path: Path
    trial: int
    rows: int
    scores: Scores | None = None


def predict_submission(
    spec: StudySpec,
    out: str | Path,
    test: str | Path | None = None,
    out_path: str | Path | None = None,
    proba: bool = False,
    trial: int | None = None,
) -> Submission:
    """Write ``submission.csv`` (default ``<out>/submission.csv``) for the test file (``test`` or
    ``task.data.test``) with the study's best trial (or trial ``trial``, whose model must be saved): the id column and
    the predicted label under the label column's name, or with ``proba`` one probability column per class (named by
    the label names). A file with the label column is also scored (:func:`score_labels`)."""
    import pandas as pd

    out = Path(out)
    saved = _best_folder(out)
    images = spec.task.data.has_images or spec.task.modality == "image" or (saved is not None and saved_is_image(saved))
    # data problems first: they are cheaper to find than loading models
    given = read_test(spec, test, images=images)
    ds, id_name = given.examples, given.id_column
    device = spec.training.device if spec.training.device != "auto" else None
    best = load_best(out, device=device, max_length=spec.task.max_length, trial=trial)
    batch_size = spec.training.eval_batch_size
    if best.modality == "image":
        if "image" not in ds.column_names:
            raise DataError("predict: the best model is an image classifier; set task.data.image_column or modality")
        probs = predict_image_proba(best, ds["image"], batch_size=batch_size)
    else:
        pairs = ds["text_pair"] if "text_pair" in ds.column_names else None
        probs = predict_proba(best, ds["text"], pairs, batch_size=batch_size)
    ids = ds["id"] if "id" in ds.column_names else ds["example_id"]
    frame = pd.DataFrame({id_name: ids})
    if proba:
        for j, name in enumerate(best.label_names):
            frame[name if name != id_name else f"{name}_proba"] = probs[:, j]
    else:
        label_name = spec.task.data.label_column
        frame[label_name if label_name != id_name else "label"] = predict_labels(best, probs)
    target = Path(out_path) if out_path is not None else out / "submission.csv"
    target.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(target, index=False)
    log.debug("wrote %d predictions of trial %d to %s", len(frame), best.trial, target)
    scores = _scores_or_warning(best.label_names, probs, given.labels, given.label_column, given.where)
    return Submission(target, best.trial, len(frame), scores)
