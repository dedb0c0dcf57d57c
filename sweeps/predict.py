"""Predictions from a study's best trial: reload its saved model(s), score texts, write a Kaggle-style submission.

The study runner keeps the best trial's model at ``<out>/models/trial_<n>/`` (with cross-validation one model per
fold under ``fold_<k>/``) and points at it from ``<out>/models/best.json``. :func:`load_best` reloads that folder with
the plain ``transformers`` Auto classes (the saved folders are ordinary ``save_pretrained`` checkpoints, readable
without freeze-sweeps); :func:`predict_proba` averages the class probabilities of the fold models;
:func:`predict_submission` reads the test file with :func:`sweeps.data.read_test` (the same readers and checks as
training)
and writes ``submission.csv``: the id column plus the predicted label (original label names) or one probability
column per class.
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
from sweeps.errors import DataError, ModelLoadError, SweepsError
from sweeps.records import best_model_pointer, models_dir, trial_model_dir

if TYPE_CHECKING:
    from sweeps.config import StudySpec

log = logging.getLogger(__name__)

__all__ = ["BestModel", "load_best", "load_model_folder", "predict_labels", "predict_proba", "predict_submission"]

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
    saved model is there: the runner keeps the best trial's only).

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
    missing = [f for f in folders if not (f / "config.json").is_file()]
    if not folders or missing:
        raise SweepsError(
            f"{folder.parent.parent}: {what or f'trial {trial}'} has no saved model at "
            f"{missing[0] if missing else folder} (only the best trial's model is kept; or it is still being saved "
            "by another worker); rerun the study to save one"
        )
    dev = _device(device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folders[0]))
    except Exception as exc:  # every loader failure becomes one clear message
        raise ModelLoadError(f"{folders[0]}: cannot load the saved tokenizer: {type(exc).__name__}: {exc}") from exc
    models, label_names = [], None
    for f in folders:
        try:
            model = AutoModelForSequenceClassification.from_pretrained(str(f))
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
    )


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
                p = torch.softmax(model(**encoded).logits.float(), dim=-1)
                total = p if total is None else total + p
            assert total is not None
            probs[idx] = (total / len(best.models)).cpu().numpy()
    return probs.astype(np.float32)


def predict_labels(best: BestModel, probs: np.ndarray) -> list[str]:
    """The label name of each row's most probable class."""
    return [best.label_names[i] for i in np.asarray(probs).argmax(-1)]


# --------------------------------------------------------------------------------------------------------------------
# Submission
# --------------------------------------------------------------------------------------------------------------------


def predict_submission(
    spec: StudySpec,
    out: str | Path,
    test: str | Path | None = None,
    out_path: str | Path | None = None,
    proba: bool = False,
    trial: int | None = None,
) -> Path:
    """Write ``submission.csv`` (default ``<out>/submission.csv``) for the test file (``test`` or
    ``task.data.test``) with the study's best trial: the id column and the predicted label under the label column's
    name, or with ``proba`` one probability column per class (named by the label names). Returns the file written."""
    import pandas as pd

    out = Path(out)
    ds, id_name = read_test(spec, test)  # data problems first: they are cheaper to find than loading models
    device = spec.training.device if spec.training.device != "auto" else None
    best = load_best(out, device=device, max_length=spec.task.max_length, trial=trial)
    pairs = ds["text_pair"] if "text_pair" in ds.column_names else None
    probs = predict_proba(best, ds["text"], pairs, batch_size=spec.training.eval_batch_size)
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
    return target
