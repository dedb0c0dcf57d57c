"""Load, check, normalise and tokenise the classification data of a study.

Why this module is strict: a sweep runs dozens of trials, so a data problem found in trial 1's training loop (or,
worse, silently learnt from) wastes the whole study. Everything that can be checked — files, columns, empty texts,
labels — is checked here, *before* any model is loaded, and reported as :class:`~sweeps.errors.DataError` naming
the file, column, row or label at fault.

The result is a :class:`TaskData` whose splits all share one normalised schema (``text``, optional ``text_pair``,
``label`` as an int id, ``example_id``, optional ``id``), whatever the source was (CSV, unquoted TSV, JSON Lines,
Parquet, a Hugging Face hub dataset, or a DataFrame / ``datasets.Dataset`` handed over from Python). Everything
random (validation carve, row limits) is seeded by ``shuffle_seed`` so every trial of a study, and every rerun, sees
exactly the same rows; :attr:`TaskData.fingerprint` identifies that content for caching.

Tokenisation (:func:`tokenize_split`) is cached on disk and in process, keyed by the tokenizer, ``max_length`` and
the split's content, so the trials of a study tokenise each split once.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import hashlib
import json
import lzma
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import datasets
import numpy as np
import pandas as pd
import torch

from sweeps.errors import DataError

__all__ = [
    "SOURCES",
    "DataConfig",
    "TaskData",
    "clear_tokenization_memo",
    "length_grouped_order",
    "load_task_data",
    "make_collator",
    "split_fingerprint",
    "stratified_folds",
    "tokenization_key",
    "tokenize_split",
]

SOURCES = ("auto", "csv", "tsv", "json", "jsonl", "parquet", "hub")

# Bump when the normalisation below changes, so fingerprints (and the caches keyed by them) change with it.
_FORMAT_VERSION = "data-v1"

_EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".parquet": "parquet",
    ".pq": "parquet",
}

# Compression suffixes looked through when guessing the format (pandas decompresses by extension itself).
_COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst", ".zip")

_INT_RE = re.compile(r"^[+-]?\d+$")
_MAX_LISTED = 5  # how many offending rows an error message lists


class DataConfig(Protocol):
    """The fields of the study's ``data`` section that this module reads (``sweeps.spec`` defines the real model).

    Any object with these attributes works (a pydantic model, a dataclass, a ``SimpleNamespace``); missing optional
    attributes default to ``None``, so tests and notebooks can pass only what they need.
    """

    source: str
    train: str | Path | None
    validation: str | Path | None
    test: str | Path | None
    hub_id: str | None
    hub_config: str | None
    text_column: str
    text_pair_column: str | None
    label_column: str
    id_column: str | None
    validation_fraction: float | None
    max_train_rows: int | None
    max_eval_rows: int | None
    shuffle_seed: int


@dataclass
class TaskData:
    """The normalised splits of one classification task.

    ``train`` and ``validation`` have columns ``text``, optional ``text_pair``, ``label`` (int id into
    ``label_names``), ``example_id`` (0..n-1 within the split) and ``id`` when an id column was configured and
    present (ids read from CSV/TSV stay strings, so leading zeros survive into a submission file; ints from a
    DataFrame, JSON or Parquet stay ints). ``test`` has the same columns without ``label`` (it is for predictions), or
    is ``None``.
    """

    train: datasets.Dataset
    validation: datasets.Dataset
    test: datasets.Dataset | None
    label_names: list[str]
    fingerprint: str
    split_fingerprints: dict[str, str] = field(default_factory=dict)

    @property
    def num_labels(self) -> int:
        """Number of classes (the size of the classifier head)."""
        return len(self.label_names)


# --------------------------------------------------------------------------------------------------------------------
# Reading raw frames
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class _Raw:
    """One split as read, before checks: the frame, a human name for messages, and how rows map to file lines."""

    frame: pd.DataFrame
    where: str
    line_offset: int | None = None  # file line of data row 0 when rows are one per line (TSV, JSON Lines)
    features: datasets.Features | None = None  # when the source was a datasets.Dataset (hub or Python)
    label_names: list[str] | None = None  # ClassLabel names of the label column, when the features have them

    def row(self, i: int) -> str:
        """Name data row ``i`` (0-based) the way a person would find it: 1-based, plus the file line if exact."""
        text = f"row {i + 1}"
        if self.line_offset is not None:
            text += f" (line {i + self.line_offset})"
        return text


def _get(cfg: Any, name: str, default: Any = None) -> Any:
    value = getattr(cfg, name, default)
    return default if value is None else value


def _source_name(cfg: Any) -> str:
    source = _get(cfg, "source", "auto")
    source = getattr(source, "value", source)  # tolerate a str Enum
    source = str(source).lower()
    if source not in SOURCES:
        raise DataError(f"data.source: unknown source {source!r}; expected one of {', '.join(SOURCES)}")
    return source


def _format_for(path: Path, source: str, field_name: str) -> str:
    if source not in ("auto", "hub"):
        return source
    name = path.name.lower()
    for compression in _COMPRESSIONS:
        if name.endswith(compression):
            name = name[: -len(compression)]
            break
    suffix = Path(name).suffix
    fmt = _EXTENSIONS.get(suffix)
    if fmt is None:
        raise DataError(
            f"data.{field_name}: cannot tell the format of {path} from its extension {suffix!r}; "
            f"set data.source to one of csv, tsv, json, jsonl, parquet"
        )
    return fmt


def _open_text(path: Path) -> Any:
    """Open a possibly compressed file as text (for the two peeks pandas cannot do for us)."""
    name = path.name.lower()
    if name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    if name.endswith(".bz2"):
        return bz2.open(path, "rt", encoding="utf-8", errors="replace")
    if name.endswith(".xz"):
        return lzma.open(path, "rt", encoding="utf-8", errors="replace")
    return path.open(encoding="utf-8", errors="replace")


def _json_is_array(path: Path) -> bool:
    """Whether a .json file holds one JSON array (else it is read as JSON Lines, which datasets' to_json writes)."""
    if path.name.lower().endswith((".zst", ".zip")):
        return False
    with _open_text(path) as fh:
        return fh.read(4096).lstrip().startswith("[")


def _jsonl_error_line(path: Path) -> str:
    """Find the first line of a JSON Lines file that does not parse (pandas' own message gives only an offset)."""
    if path.name.lower().endswith((".zst", ".zip")):
        return "no line number for this compression"
    with _open_text(path) as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                return f"line {number}: {exc.msg} (column {exc.colno})"
            if not isinstance(value, dict):
                return f"line {number}: expected a JSON object, got {type(value).__name__}"
    return "no single bad line found"


def _read_file(path: Path, fmt: str, field_name: str) -> _Raw:
    where = f"{path} (data.{field_name})"
    if not path.exists():
        raise DataError(f"{where}: file does not exist")
    if path.is_dir():
        raise DataError(f"{where}: is a directory, expected a {fmt} file")
    if path.stat().st_size == 0:
        raise DataError(f"{where}: file is empty")
    line_offset: int | None = None
    try:
        if fmt == "csv":
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
        elif fmt == "tsv":
            # Unquoted: GLUE/SST-2 and AG News TSVs contain bare `"` inside sentences.
            frame = pd.read_csv(
                path, sep="\t", quoting=csv.QUOTE_NONE, dtype=str, keep_default_na=False, encoding="utf-8"
            )
            line_offset = 2
        elif fmt in ("json", "jsonl"):
            lines = fmt == "jsonl" or not _json_is_array(path)
            try:
                frame = pd.read_json(path, lines=lines, dtype=False, convert_dates=False, encoding="utf-8")
            except ValueError as exc:
                detail = _jsonl_error_line(path) if lines else str(exc)
                raise DataError(f"{where}: cannot parse as {'JSON Lines' if lines else 'JSON'}: {detail}") from exc
            line_offset = 1 if lines else None
        elif fmt == "parquet":
            frame = pd.read_parquet(path)
        else:  # pragma: no cover - _format_for only returns the names above
            raise DataError(f"{where}: unsupported format {fmt!r}")
    except DataError:
        raise
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{where}: file is empty (no header line)") from exc
    except pd.errors.ParserError as exc:
        detail = " ".join(str(exc).split())
        raise DataError(f"{where}: cannot parse as {fmt.upper()}: {detail}") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{where}: not UTF-8 text (bad byte at offset {exc.start})") from exc
    except ImportError as exc:  # e.g. .zst without the zstandard package
        raise DataError(f"{where}: cannot decompress: {exc}") from exc
    except (OSError, ValueError, EOFError) as exc:  # pyarrow.ArrowInvalid is a ValueError
        raise DataError(f"{where}: cannot read as {fmt}: {exc}") from exc
    if len(frame.columns) == 0:
        raise DataError(f"{where}: file has no columns")
    if len(frame) == 0:
        raise DataError(f"{where}: file has a header (columns {', '.join(map(str, frame.columns))}) but no rows")
    return _Raw(frame.reset_index(drop=True), where, line_offset)


def _class_names(features: datasets.Features, label_column: str) -> list[str] | None:
    feature = features.get(label_column)
    return list(feature.names) if isinstance(feature, datasets.ClassLabel) else None


def _from_memory(obj: Any, split: str) -> _Raw:
    where = f"the {split} {type(obj).__name__} passed from Python"
    if isinstance(obj, datasets.Dataset):
        if len(obj) == 0:
            raise DataError(f"{where}: has no rows")
        return _Raw(obj.to_pandas(), where, features=obj.features)
    if isinstance(obj, pd.DataFrame):
        frame = obj.reset_index(drop=True)
        if len(frame) == 0:
            raise DataError(f"{where}: has no rows")
        return _Raw(frame, where)
    raise DataError(f"{where}: expected a pandas DataFrame or a datasets.Dataset, got {type(obj).__name__}")


def _load_hub(hub_id: str, hub_config: str | None, split: str) -> _Raw:
    where = f"hub dataset {hub_id!r}" + (f" (config {hub_config!r})" if hub_config else "") + f" split {split!r}"
    try:
        ds = datasets.load_dataset(hub_id, hub_config, split=split)
    except (ConnectionError, TimeoutError) as exc:
        raise DataError(
            f"{where}: cannot reach the Hugging Face hub ({exc}). Offline or no network: download the data once "
            f"and point data.train / data.validation / data.test at local csv, tsv, jsonl or parquet files"
        ) from exc
    except Exception as exc:  # the hub raises many types (DatasetNotFoundError, ValueError for a bad split, ...)
        raise DataError(
            f"{where}: cannot load: {type(exc).__name__}: {exc}. If the hub is unreachable, use local files instead "
            f"(data.source csv/tsv/jsonl/parquet)"
        ) from exc
    if not isinstance(ds, datasets.Dataset):
        raise DataError(f"{where}: expected one split, got {type(ds).__name__}")
    if len(ds) == 0:
        raise DataError(f"{where}: has no rows")
    return _Raw(ds.to_pandas(), where, features=ds.features)


def _read_splits(cfg: Any, frames: dict[str, Any]) -> dict[str, _Raw | None]:
    """Read train / validation / test as raw frames, from Python objects, the hub or files."""
    source = _source_name(cfg)
    hub_id = _get(cfg, "hub_id")
    use_hub = source == "hub" or (source == "auto" and bool(hub_id))
    if source == "hub" and not hub_id:
        raise DataError("data.hub_id: required when data.source is 'hub'")
    result: dict[str, _Raw | None] = {}
    for split in ("train", "validation", "test"):
        given = frames.get(split)
        location = _get(cfg, split)
        if given is not None:
            result[split] = _from_memory(given, split)
        elif use_hub:
            name = str(location) if location is not None else ("train" if split == "train" else None)
            result[split] = _load_hub(hub_id, _get(cfg, "hub_config"), name) if name else None
        elif location is not None:
            path = Path(location)
            result[split] = _read_file(path, _format_for(path, source, split), split)
        elif split == "train":
            raise DataError("data.train: no training data configured (set data.train or data.hub_id)")
        else:
            result[split] = None
    for raw in result.values():
        if raw is not None and raw.features is not None:
            raw.label_names = _class_names(raw.features, _get(cfg, "label_column", "label"))
    return result


# --------------------------------------------------------------------------------------------------------------------
# Checks and normalisation
# --------------------------------------------------------------------------------------------------------------------


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


def _normalise(raw: _Raw, cfg: Any, labels: list[int] | None, *, require_id: bool) -> pd.DataFrame:
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
    cfg: Any,
    *,
    dataframe: pd.DataFrame | datasets.Dataset | None = None,
    validation_dataframe: pd.DataFrame | datasets.Dataset | None = None,
    carve_validation: bool = True,
    test_dataframe: pd.DataFrame | datasets.Dataset | None = None,
) -> TaskData:
    """Load, check and normalise the data a study configures (see :class:`DataConfig`) into a :class:`TaskData`.

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
    test = _normalise(test_raw, cfg, None, require_id=True) if test_raw is not None else None

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


# --------------------------------------------------------------------------------------------------------------------
# Tokenisation (cached)
# --------------------------------------------------------------------------------------------------------------------

_TOKENIZED: dict[str, datasets.Dataset] = {}


def clear_tokenization_memo() -> None:
    """Forget the in-process tokenisation memo (the disk cache stays); for tests and long-lived notebooks."""
    _TOKENIZED.clear()


def _tokenizer_digest(tokenizer: Any) -> str:
    """Hash what decides the token ids: the full fast-tokenizer definition (a few ms), or the vocab for slow ones.

    The backend's ``truncation``/``padding`` entries are dropped: transformers mutates them on every call, so keeping
    them would make the key depend on what the tokenizer was last used for.
    """
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        definition = json.loads(backend.to_str())
        definition.pop("truncation", None)
        definition.pop("padding", None)
        digest.update(json.dumps(definition, sort_keys=True).encode())
    else:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    digest.update(str(getattr(tokenizer, "truncation_side", "right")).encode())
    return digest.hexdigest()


def tokenization_key(tokenizer: Any, max_length: int, split: datasets.Dataset | str) -> str:
    """Cache key of a tokenised split: tokenizer (name, vocab size, definition hash), ``max_length``, split content.

    ``split`` is the normalised split itself or its :func:`split_fingerprint` (cheaper when already known).
    """
    fingerprint = split if isinstance(split, str) else split_fingerprint(split)
    parts = [
        _FORMAT_VERSION,
        str(getattr(tokenizer, "name_or_path", "")),
        str(getattr(tokenizer, "vocab_size", "")),
        str(len(tokenizer)),
        _tokenizer_digest(tokenizer),
        str(int(max_length)),
        fingerprint,
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:40]


def _encode_batch(batch: dict[str, list[Any]], tokenizer: Any, max_length: int) -> dict[str, list[Any]]:
    """Tokenise one batch without padding (the collator pads per batch, which is far cheaper for short texts)."""
    if "text_pair" in batch:
        encoded = tokenizer(batch["text"], batch["text_pair"], truncation=True, max_length=max_length)
    else:
        encoded = tokenizer(batch["text"], truncation=True, max_length=max_length)
    out = dict(encoded)
    out["length"] = [len(ids) for ids in encoded["input_ids"]]
    return out


def tokenize_split(
    ds: datasets.Dataset, tokenizer: Any, max_length: int, cache_dir: Path | str | None
) -> datasets.Dataset:
    """Tokenise a normalised split: ``input_ids``, ``attention_mask`` (+ ``token_type_ids`` if the tokenizer makes
    them), ``labels`` (when labelled), ``example_id`` and ``length``; unpadded.

    Cached under :func:`tokenization_key` twice: in this process (so the trials of a study share one object) and, when
    ``cache_dir`` is given, as ``cache_dir/tok-<key>.arrow`` (so reruns and other workers skip tokenisation).
    """
    if max_length <= 0:
        raise DataError(f"max_length must be positive, got {max_length}")
    if "text" not in ds.column_names:
        raise DataError(f"tokenize_split: expected a normalised split with a 'text' column, got {ds.column_names}")
    key = tokenization_key(tokenizer, max_length, ds)
    memo_key = f"{key}|{Path(cache_dir).resolve() if cache_dir is not None else ''}"
    if memo_key in _TOKENIZED:
        return _TOKENIZED[memo_key]

    drop = [c for c in ds.column_names if c not in ("label", "example_id")]
    kwargs: dict[str, Any] = {
        "batched": True,
        "remove_columns": drop,
        "fn_kwargs": {"tokenizer": tokenizer, "max_length": int(max_length)},
        "new_fingerprint": key,  # skip datasets' dill-hashing of the tokenizer
        "desc": "Tokenising",
    }
    if cache_dir is not None:
        cache_path = Path(cache_dir) / f"tok-{key}.arrow"
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        if cache_path.exists():
            tokenized = datasets.Dataset.from_file(str(cache_path))
        else:
            tokenized = ds.map(_encode_batch, cache_file_name=str(cache_path), load_from_cache_file=True, **kwargs)
    else:
        tokenized = ds.map(_encode_batch, keep_in_memory=True, **kwargs)
    if "label" in tokenized.column_names:
        tokenized = tokenized.rename_column("label", "labels")
    _TOKENIZED[memo_key] = tokenized
    return tokenized


# --------------------------------------------------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------------------------------------------------


class _Collator:
    """Dynamic padding via transformers' ``DataCollatorWithPadding``; ``example_id`` and ``labels`` ride along.

    Only model inputs go through the tokenizer's ``pad``; bookkeeping columns (``example_id``, ``labels``) are turned
    into LongTensors here, and anything else (``length``) is dropped so the batch can go straight to ``model(**)``
    after popping ``example_id``.
    """

    def __init__(self, tokenizer: Any, pad_to_multiple_of: int | None = None) -> None:
        from transformers import DataCollatorWithPadding

        self._pad = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to_multiple_of, return_tensors="pt")
        self._inputs = set(getattr(tokenizer, "model_input_names", ())) | {"input_ids", "attention_mask"}

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("cannot collate an empty batch")
        inputs = [{k: v for k, v in ex.items() if k in self._inputs} for ex in examples]
        batch = dict(self._pad(inputs))
        for name in ("labels", "example_id"):
            if name in examples[0]:
                batch[name] = torch.tensor([int(ex[name]) for ex in examples], dtype=torch.long)
        return batch


def make_collator(tokenizer: Any, pad_to_multiple_of: int | None = None) -> Callable[[list[dict[str, Any]]], dict]:
    """A collate function for tokenised splits: pads each batch to its own longest example."""
    return _Collator(tokenizer, pad_to_multiple_of)


def length_grouped_order(lengths: Sequence[int], batch_size: int, seed: int) -> list[int]:
    """A seeded order in which consecutive ``batch_size`` slices hold examples of similar length (less padding).

    Reuses transformers' ``get_length_grouped_indices`` (random permutation, megabatches of 50×batch sorted by
    length, the longest batch first so an out-of-memory error shows at step 1, not mid-epoch).
    """
    from transformers.trainer_pt_utils import get_length_grouped_indices

    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if len(lengths) == 0:
        return []
    generator = torch.Generator().manual_seed(int(seed))
    return [int(i) for i in get_length_grouped_indices(list(lengths), batch_size, generator=generator)]


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
