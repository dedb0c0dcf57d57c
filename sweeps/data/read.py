"""Reading one split as a raw frame: CSV, unquoted TSV, JSON / JSON Lines, Parquet, a hub split, or a
DataFrame / ``datasets.Dataset`` handed over from Python. Read errors name the file and, where the format
allows it, the line.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import json
import lzma
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import pandas as pd

from sweeps.config import DataConfig
from sweeps.config.schema import COMPRESSION_SUFFIXES, source_from_extension
from sweeps.errors import DataError

SOURCES = ("auto", "csv", "tsv", "json", "jsonl", "parquet", "hub")


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


def _get(cfg: DataConfig, name: str, default: Any = None) -> Any:
    value = getattr(cfg, name, default)
    return default if value is None else value


def _source_name(cfg: DataConfig) -> str:
    source = _get(cfg, "source", "auto")
    source = getattr(source, "value", source)  # tolerate a str Enum
    source = str(source).lower()
    if source not in SOURCES:
        raise DataError(f"data.source: unknown source {source!r}; expected one of {', '.join(SOURCES)}")
    return source


def _format_for(path: Path, source: str, field_name: str) -> str:
    if source not in ("auto", "hub"):
        return source
    fmt = source_from_extension(path.name)  # the study file's rule (sweeps.config), so both always agree
    if fmt is None:
        name = path.name.lower()
        suffix = Path(next((name[: -len(c)] for c in COMPRESSION_SUFFIXES if name.endswith(c)), name)).suffix
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


def _read_splits(cfg: DataConfig, frames: dict[str, Any]) -> dict[str, _Raw | None]:
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
