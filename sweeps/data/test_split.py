"""The test split a submission is written for, read with the same readers and checks as training, and the labels
it carries, if any (``predict`` on a labelled file also scores it).

Here rather than in :mod:`sweeps.predict` because it is data reading: it uses this package's readers and normaliser,
which stay private to the package.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sweeps.config import DataConfig, StudySpec
from sweeps.data.normalise import _INT_RE, _is_missing, _normalise, _require_column, _to_dataset
from sweeps.data.read import _format_for, _load_hub, _Raw, _read_file
from sweeps.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class SubmissionInput:
    """What :func:`read_test` read: the normalised examples, the id column to write, and the file's labels.

    ``labels`` is ``None`` when the file has no label column (a Kaggle test file); otherwise one entry per row, the
    label as text (integers without a decimal part: ``1.0`` and ``"1"`` are both ``"1"``, the way training names
    integer classes) or ``None`` where the row has no label. Unlike training, a missing or unknown label is no error
    here: the predictions do not depend on it, only the scoring of them does."""

    examples: Any  # datasets.Dataset
    id_column: str
    labels: list[str | None] | None
    label_column: str
    where: str  # the file (or split) read, for messages


def _test_location(spec: StudySpec, test: str | Path | None) -> tuple[str, bool]:
    """(location, is_hub_split): ``--test`` (relative to the current directory) or ``task.data.test`` (relative to
    the study file)."""
    cfg = spec.task.data
    if test is not None:
        return str(Path(test).expanduser()), False
    if cfg.test is None:
        raise DataError("no test file: pass --test FILE or set task.data.test in the study file")
    if cfg.source == "hub" or (cfg.source == "auto" and cfg.hub_id):
        return str(cfg.test), True
    return str(spec.resolve_path(cfg.test)), False


def _test_format(path: Path, source: str, from_cli: bool) -> str:
    """The reader for the test file: as configured (``task.data.test``, like the training files); for ``--test``
    the file's extension first (a Kaggle test file may differ in format from train), else the configured source."""
    configured = source if source not in ("auto", "hub", "imagefolder") else "auto"
    if from_cli:
        try:
            return _format_for(path, "auto", "test")
        except DataError:
            if configured == "auto":
                raise
            return configured
    return _format_for(path, configured, "test")


def read_test(spec: StudySpec, test: str | Path | None = None, *, images: bool = False) -> SubmissionInput:
    """The normalised test split (``text``, optional ``text_pair``, ``example_id``, ``id``; with ``images`` ``image``
    and ``image_digest`` instead of text, from a folder of images or a file with an image column) as a
    ``datasets.Dataset``, read with the data module's readers and checks, the name of the id column to write and the
    file's labels (see :class:`SubmissionInput`).

    The id column is ``task.data.id_column`` when the test file has it (else an ``id`` column of the file, else the
    row number 0..n-1 under the header ``id``). A missing text column is a :class:`DataError` listing the columns
    found.
    """
    cfg = spec.task.data
    location, from_hub = _test_location(spec, test)
    if from_hub:
        raw = _load_hub(cfg.hub_id, cfg.hub_config, location)
    elif images and Path(location).is_dir():
        from sweeps.data.images import read_imagefolder

        raw = read_imagefolder(Path(location), "test", cfg.label_column)
    else:
        path = Path(location)
        raw = _read_file(path, _test_format(path, cfg.source, from_cli=test is not None), "test")
    if test is not None:
        raw.where = f"{location} (--test)"
    if images:
        from sweeps.data.images import IMAGE, image_column

        # a folder's images are always in the reader's `image` column; a file's in the configured one
        column = IMAGE if Path(location).is_dir() and not from_hub else image_column(cfg)
        cfg = cfg.model_copy(update={"image_column": column})
        content_columns: tuple[str | None, ...] = (column,)
        _require_column(raw, column, "image_column")
    else:
        content_columns = (cfg.text_column, cfg.text_pair_column)
        _require_column(raw, cfg.text_column, "text_column")
    id_column = cfg.id_column
    if id_column is None or id_column not in raw.frame.columns:
        if id_column is not None:
            log.warning("%s: no id column %r (task.data.id_column): writing row numbers as id", raw.where, id_column)
        id_column = "id" if "id" in raw.frame.columns and "id" not in content_columns else None
    frame = _normalise(raw, _with_id_column(cfg, id_column), None, require_id=id_column is not None)
    labels = _label_values(raw, cfg.label_column) if cfg.label_column in raw.frame.columns else None
    return SubmissionInput(_to_dataset(frame, []), id_column or "id", labels, cfg.label_column, raw.where)


def _label_values(raw: _Raw, column: str) -> list[str | None]:
    return label_texts(raw.frame[column].tolist(), raw.label_names)


def label_texts(values: Sequence[Any], class_names: Sequence[str] | None = None) -> list[str | None]:
    """Labels as text, ``None`` where a row has none: ClassLabel ids (hub, ``datasets``; ``class_names``) become their
    names, integral numbers their integer text (a CSV column with a gap is read as floats: ``1.0`` is class ``1``),
    strings are stripped — the way training names its classes, so they compare with a model's label names."""
    texts: list[str | None] = []
    for v in values:
        if _is_missing(v) or (isinstance(v, str) and not v.strip()):
            texts.append(None)
        elif isinstance(v, (bool, np.bool_)):
            texts.append(str(bool(v)))
        elif isinstance(v, (int, np.integer, float, np.floating)) and float(v).is_integer():
            key = int(v)
            texts.append(str(class_names[key]) if class_names is not None and 0 <= key < len(class_names) else str(key))
        elif isinstance(v, str) and _INT_RE.match(v.strip()):
            texts.append(str(int(v.strip())))
        else:
            texts.append(str(v).strip())
    return texts


def _with_id_column(cfg: DataConfig, id_column: str | None) -> Any:
    """``cfg`` with another ``id_column`` (a pydantic model copy, or a namespace for duck-typed configs)."""
    if getattr(cfg, "id_column", None) == id_column:
        return cfg
    if hasattr(cfg, "model_copy"):
        return cfg.model_copy(update={"id_column": id_column})
    from types import SimpleNamespace

    return SimpleNamespace(**{**vars(cfg), "id_column": id_column})
