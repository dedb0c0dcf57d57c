"""The normalised splits of one task (:class:`TaskData`), from the study's ``task.data`` section.

Why strict: a sweep runs dozens of trials, so a data problem found in trial 1's training loop (or, worse,
silently learnt from) wastes the whole study. Everything that can be checked is checked here, *before* any
model is loaded. Everything random (validation carve, row limits) is seeded by ``shuffle_seed`` so every
trial of a study, and every rerun, sees exactly the same rows; :attr:`TaskData.fingerprint` identifies
that content for caching.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import datasets
import numpy as np
import pandas as pd

from sweeps.config import DataConfig
from sweeps.data.normalise import (
    _carve_validation,
    _is_missing,
    _label_keys,
    _label_mapping,
    _map_labels,
    _normalise,
    _require_column,
    _seeded_head,
    _to_dataset,
)
from sweeps.data.read import _get, _Raw, _read_splits
from sweeps.errors import DataError

log = logging.getLogger(__name__)

# Bump when the normalisation below changes, so fingerprints (and the caches keyed by them) change with it.
_FORMAT_VERSION = "data-v1"


@dataclass
class TaskData:
    """The normalised splits of one classification task.

    ``train`` and ``validation`` have columns ``text``, optional ``text_pair``, ``label`` (int id into
    ``label_names``), ``example_id`` (0..n-1 within the split) and ``id`` when an id column was configured and
    present (ids read from CSV/TSV stay strings, so leading zeros survive into a submission file; ints from a
    DataFrame, JSON or Parquet stay ints). ``test`` has the same columns, with ``label`` only when the test file
    labels every row (then the study's finalists are evaluated on it once), or is ``None``.
    """

    train: datasets.Dataset
    validation: datasets.Dataset
    test: datasets.Dataset | None
    label_names: list[str]
    fingerprint: str
    split_fingerprints: dict[str, str] = field(default_factory=dict)

    @property
    def test_labelled(self) -> bool:
        """True when the test split carries labels for every row (held-out evaluation is possible)."""
        return self.test is not None and "label" in self.test.column_names and len(self.test) > 0

    @property
    def num_labels(self) -> int:
        """Number of classes (the size of the classifier head)."""
        return len(self.label_names)


def _has_every_label(raw: _Raw, column: str) -> bool:
    """A test file that labels every row (Kaggle test files have no label column; a held-out split has one)."""
    if column not in raw.frame.columns or raw.frame.empty:
        return False
    values = raw.frame[column]
    return not any(_is_missing(v) or (isinstance(v, str) and not v.strip()) for v in values.tolist())


def split_fingerprint(ds: datasets.Dataset) -> str:
    """A stable content hash of a normalised split (text, text_pair, label, example_id, id), for cache keys.

    Content-based rather than datasets' own ``_fingerprint`` (which depends on file paths and transform history), so
    the same rows give the same key in every process and from every source.
    """
    columns = [c for c in ("text", "text_pair", "label", "labels", "example_id", "id") if c in ds.column_names]
    digest = hashlib.sha256(f"{_FORMAT_VERSION}|{len(ds)}|{','.join(columns)}".encode())
    if columns:
        frame = ds.select_columns(columns).to_pandas()
        for column in columns:
            values = frame[column]
            values = values.astype(np.int64) if column in ("label", "labels", "example_id") else values.astype(object)
            hashed = pd.util.hash_pandas_object(values, index=False).to_numpy(dtype=np.uint64)
            digest.update(column.encode())
            digest.update(hashed.tobytes())
    return digest.hexdigest()[:32]


def load_task_data(
    cfg: DataConfig,
    *,
    dataframe: pd.DataFrame | datasets.Dataset | None = None,
    validation_dataframe: pd.DataFrame | datasets.Dataset | None = None,
    carve_validation: bool = True,
    test_dataframe: pd.DataFrame | datasets.Dataset | None = None,
) -> TaskData:
    """Load, check and normalise the data a study configures (``task.data``, a :class:`~sweeps.config.DataConfig`)
    into a :class:`TaskData`.

    A split passed from Python (``dataframe`` for train, ``validation_dataframe``, ``test_dataframe``) replaces the
    configured file or hub split. Order of operations, chosen so that limits never change *which* rows are held out:
    read → check columns/texts/labels → label mapping from the whole train file → stratified validation carve (only
    when no validation data is given) → ``max_train_rows`` on train and ``max_eval_rows`` on validation (seeded
    shuffle, first N). The test split is never truncated: it is what predictions are submitted for.

    Raises :class:`DataError` for every problem, before any training starts.
    """
    raws = _read_splits(cfg, {"train": dataframe, "validation": validation_dataframe, "test": test_dataframe})
    train_raw, val_raw, test_raw = raws["train"], raws["validation"], raws["test"]
    assert train_raw is not None

    text_column = _get(cfg, "text_column", "text")
    label_column = _get(cfg, "label_column", "label")
    seed = int(_get(cfg, "shuffle_seed", 0))
    for raw, split in ((train_raw, "train"), (val_raw, "validation"), (test_raw, "test")):
        if raw is None:
            continue
        _require_column(raw, text_column, "text_column")
        if split != "test":
            _require_column(raw, label_column, "label_column")

    train_keys = _label_keys(train_raw, label_column, train_raw.label_names)
    mapping, label_names = _label_mapping(train_keys, train_raw.label_names)
    if len(mapping) < 2:
        raise DataError(
            f"{train_raw.where}: only one class ({label_names[0]!r}) in column {label_column!r}; "
            f"a classifier needs at least two"
        )
    train_is_int = isinstance(next(iter(mapping)), int)
    train = _normalise(train_raw, cfg, [mapping[k] for k in train_keys], require_id=False)

    if val_raw is not None:
        val_labels = _map_labels(
            val_raw, _label_keys(val_raw, label_column, val_raw.label_names), mapping, train_is_int
        )
        validation = _normalise(val_raw, cfg, val_labels, require_id=False)
    elif carve_validation:
        train, validation = _carve_validation(train, _get(cfg, "validation_fraction"), seed, label_names)
    else:  # cross-validation: the folds are the validation, every train row stays in train (in file order)
        validation = train.iloc[:0].copy()
    test = None
    if test_raw is not None:
        test_labels = None
        if _has_every_label(test_raw, label_column):  # a labelled test split: held-out evaluation of the finalists
            try:
                keys = _label_keys(test_raw, label_column, test_raw.label_names)
                test_labels = _map_labels(test_raw, keys, mapping, train_is_int)
            except DataError as exc:  # e.g. a placeholder label column in a Kaggle test file: predictions only
                log.warning("%s: not used as a labelled test split (%s)", test_raw.where, exc)
                test_labels = None
        test = _normalise(test_raw, cfg, test_labels, require_id=True)

    train = _seeded_head(train, _get(cfg, "max_train_rows"), seed)
    validation = _seeded_head(validation, _get(cfg, "max_eval_rows"), seed)
    if train["label"].nunique() < 2:
        raise DataError(
            f"data.max_train_rows: only one class ({label_names[int(train['label'].iloc[0])]!r}) left in the "
            f"{len(train)} training rows; raise the limit"
        )

    splits = {"train": _to_dataset(train, label_names), "validation": _to_dataset(validation, label_names)}
    if test is not None:
        splits["test"] = _to_dataset(test, label_names)
    split_fps = {name: split_fingerprint(ds) for name, ds in splits.items()}
    config = {
        "version": _FORMAT_VERSION,
        "columns": [text_column, _get(cfg, "text_pair_column"), label_column, _get(cfg, "id_column")],
        "limits": [_get(cfg, "max_train_rows"), _get(cfg, "max_eval_rows"), _get(cfg, "validation_fraction")],
        "seed": seed,
        "labels": label_names,
        "splits": split_fps,
    }
    fingerprint = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:32]
    return TaskData(
        train=splits["train"],
        validation=splits["validation"],
        test=splits.get("test"),
        label_names=label_names,
        fingerprint=fingerprint,
        split_fingerprints=split_fps,
    )


def stratified_folds(labels: Sequence[int] | np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``folds`` (train_indices, validation_indices) pairs with class ratios kept (sklearn ``StratifiedKFold``).

    Stricter than sklearn, which only warns: every class must have at least ``folds`` examples, so every fold's
    validation part contains every class and per-fold scores are comparable.
    """
    from sklearn.model_selection import StratifiedKFold

    y = np.asarray(labels)
    if folds < 2:
        raise DataError(f"cross-validation needs at least 2 folds, got {folds}")
    values, counts = np.unique(y, return_counts=True)
    if len(values) < 2:
        raise DataError("cross-validation: only one class in the labels")
    if counts.min() < folds:
        rare = values[int(np.argmin(counts))].item()
        raise DataError(
            f"cross-validation: class {rare!r} has {counts.min()} examples, fewer than the {folds} folds; "
            f"use fewer folds or more data"
        )
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=int(seed))
    return [(train_idx, val_idx) for train_idx, val_idx in splitter.split(np.zeros(len(y)), y)]
