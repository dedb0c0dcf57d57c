"""Checks and normalisation of raw splits: columns present, texts non-empty, labels mapped to ids, ids
unique; every problem a :class:`~sweeps.errors.DataError` naming the file, column and rows at fault.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import datasets
import numpy as np
import pandas as pd

from sweeps.config import DataConfig
from sweeps.data.read import _get, _Raw
from sweeps.errors import DataError

_INT_RE = re.compile(r"^[+-]?\d+$")


_MAX_LISTED = 5  # how many offending rows an error message lists


def _require_column(raw: _Raw, column: str, field_name: str) -> None:
    if column not in raw.frame.columns:
        found = ", ".join(repr(str(c)) for c in raw.frame.columns)
        raise DataError(f"{raw.where}: no column {column!r} (data.{field_name}); columns found: {found}")


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # arrays and other containers
        return False


def _list_rows(raw: _Raw, rows: Sequence[int]) -> str:
    listed = ", ".join(raw.row(i) for i in rows[:_MAX_LISTED])
    more = f" and {len(rows) - _MAX_LISTED} more" if len(rows) > _MAX_LISTED else ""
    return listed + more


def _check_text(raw: _Raw, column: str, field_name: str) -> list[str]:
    values = raw.frame[column].tolist()
    not_text = [i for i, v in enumerate(values) if not _is_missing(v) and not isinstance(v, str)]
    if not_text:
        kind = type(values[not_text[0]]).__name__
        raise DataError(
            f"{raw.where}: column {column!r} (data.{field_name}) must hold text, found {kind} at "
            f"{_list_rows(raw, not_text)}"
        )
    empty = [i for i, v in enumerate(values) if _is_missing(v) or not v.strip()]
    if empty:
        raise DataError(
            f"{raw.where}: column {column!r} (data.{field_name}) is empty or whitespace at {_list_rows(raw, empty)}; "
            f"remove those rows or fill them in"
        )
    return values


def _label_keys(raw: _Raw, column: str, names: list[str] | None) -> list[Any]:
    """Canonical label values of a split: ints where every label is an integer, else stripped strings.

    ClassLabel ints (hub / datasets.Dataset) are kept as ints; their names become ``label_names``.
    """
    values = raw.frame[column].tolist()
    missing = [i for i, v in enumerate(values) if _is_missing(v) or (isinstance(v, str) and not v.strip())]
    if missing:
        raise DataError(
            f"{raw.where}: column {column!r} (data.label_column) has no label at {_list_rows(raw, missing)}"
        )
    keys: list[Any] = []
    for i, v in enumerate(values):
        if isinstance(v, (bool, np.bool_)):
            keys.append(str(bool(v)))
        elif isinstance(v, (int, np.integer)):
            keys.append(int(v))
        elif isinstance(v, (float, np.floating)):
            if not float(v).is_integer():
                raise DataError(
                    f"{raw.where}: column {column!r} (data.label_column) has the non-integer number {v} at "
                    f"{raw.row(i)}; class labels must be integers or strings"
                )
            keys.append(int(v))
        else:
            keys.append(str(v).strip())
    if all(isinstance(k, int) or _INT_RE.match(k) for k in keys):
        return [int(k) for k in keys]
    return [str(k) for k in keys]


def _label_mapping(train_keys: list[Any], class_names: list[str] | None) -> tuple[dict[Any, int], list[str]]:
    """Deterministic label → id: sorted unique train labels (numeric when all ints, else by string)."""
    unique = sorted(set(train_keys))
    mapping = {key: i for i, key in enumerate(unique)}
    names = []
    for key in unique:
        if class_names is not None and isinstance(key, int) and 0 <= key < len(class_names):
            names.append(str(class_names[key]))
        else:
            names.append(str(key))
    return mapping, names


def _map_labels(raw: _Raw, keys: list[Any], mapping: dict[Any, int], train_is_int: bool) -> list[int]:
    ids: list[int] = []
    unseen: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        if train_is_int and isinstance(key, str) and _INT_RE.match(key):
            key = int(key)
        elif not train_is_int:
            key = str(key)
        if key in mapping:
            ids.append(mapping[key])
        else:
            unseen.setdefault(str(key), []).append(i)
    if unseen:
        label, rows = next(iter(unseen.items()))
        others = (
            f" (also unseen: {', '.join(repr(k) for k in list(unseen)[1 : _MAX_LISTED + 1])})"
            if len(unseen) > 1
            else ""
        )
        known = ", ".join(repr(str(k)) for k in mapping)
        raise DataError(
            f"{raw.where}: label {label!r} at {_list_rows(raw, rows)} does not occur in train{others}; "
            f"train labels are {known}"
        )
    return ids


def _normalise(raw: _Raw, cfg: DataConfig, labels: list[int] | None, *, require_id: bool) -> pd.DataFrame:
    """The normalised frame of one split (labels already mapped to ids, or ``None`` for test)."""
    text_column = _get(cfg, "text_column", "text")
    pair_column = _get(cfg, "text_pair_column")
    id_column = _get(cfg, "id_column")
    out = pd.DataFrame({"text": pd.Series(_check_text(raw, text_column, "text_column"), dtype=object)})
    if pair_column:
        _require_column(raw, pair_column, "text_pair_column")
        out["text_pair"] = pd.Series(_check_text(raw, pair_column, "text_pair_column"), dtype=object)
    if labels is not None:
        out["label"] = np.asarray(labels, dtype=np.int64)
    if id_column and (require_id or id_column in raw.frame.columns):
        _require_column(raw, id_column, "id_column")
        ids = raw.frame[id_column]
        missing = [i for i, v in enumerate(ids.tolist()) if _is_missing(v) or (isinstance(v, str) and not v.strip())]
        if missing:
            raise DataError(
                f"{raw.where}: column {id_column!r} (data.id_column) is empty at {_list_rows(raw, missing)}"
            )
        duplicated = ids[ids.duplicated()].tolist()
        if require_id and duplicated:
            raise DataError(
                f"{raw.where}: column {id_column!r} (data.id_column) has duplicate ids, e.g. {duplicated[0]!r}; "
                f"predictions could not be matched to rows"
            )
        out["id"] = ids.to_numpy()
    return out


def _seeded_head(frame: pd.DataFrame, limit: int | None, seed: int) -> pd.DataFrame:
    """The first ``limit`` rows after a fixed seeded shuffle (all rows, in order, when the limit does not bite)."""
    if limit is None or limit >= len(frame):
        return frame
    if limit <= 0:
        raise DataError(f"row limit must be positive, got {limit}")
    order = np.random.default_rng(seed).permutation(len(frame))[:limit]
    return frame.iloc[order].reset_index(drop=True)


def _carve_validation(
    frame: pd.DataFrame, fraction: float | None, seed: int, names: list[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    from sklearn.model_selection import train_test_split

    if fraction is None or not 0.0 < float(fraction) < 1.0:
        raise DataError(
            f"data.validation_fraction: must be between 0 and 1 (exclusive) when no validation data is given, "
            f"got {fraction!r}"
        )
    counts = frame["label"].value_counts()
    if counts.min() < 2:
        rare = [names[i] for i in counts[counts < 2].index]
        raise DataError(
            f"data.validation_fraction: class {rare[0]!r} has a single training example, too few for a stratified "
            f"validation split; provide data.validation or add examples"
        )
    try:
        train, validation = train_test_split(
            frame, test_size=float(fraction), stratify=frame["label"], random_state=seed, shuffle=True
        )
    except ValueError as exc:  # e.g. the validation share is smaller than the number of classes
        raise DataError(f"data.validation_fraction: cannot carve a stratified validation split: {exc}") from exc
    return train.reset_index(drop=True), validation.reset_index(drop=True)


def _to_dataset(frame: pd.DataFrame, label_names: list[str]) -> datasets.Dataset:
    frame = frame.reset_index(drop=True).copy()
    frame["example_id"] = np.arange(len(frame), dtype=np.int64)
    features = {"text": datasets.Value("string")}
    if "text_pair" in frame.columns:
        features["text_pair"] = datasets.Value("string")
    if "label" in frame.columns:
        features["label"] = datasets.ClassLabel(names=label_names)
    features["example_id"] = datasets.Value("int64")
    if "id" in frame.columns:
        ids = frame["id"]
        if ids.map(lambda v: isinstance(v, (int, np.integer)) and not isinstance(v, bool)).all():
            frame["id"] = ids.astype(np.int64)
            features["id"] = datasets.Value("int64")
        else:
            frame["id"] = ids.map(str).astype(object)
            features["id"] = datasets.Value("string")
    frame = frame[list(features)]
    return datasets.Dataset.from_pandas(frame, features=datasets.Features(features), preserve_index=False)
