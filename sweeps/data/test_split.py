"""The unlabelled test split a submission is written for, read with the same readers and checks as training.

Here rather than in :mod:`sweeps.predict` because it is data reading: it uses this package's readers and normaliser,
which stay private to the package.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sweeps.config import DataConfig, StudySpec
from sweeps.data.normalise import _normalise, _require_column, _to_dataset
from sweeps.data.read import _format_for, _load_hub, _read_file
from sweeps.errors import DataError

log = logging.getLogger(__name__)


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
    configured = source if source not in ("auto", "hub") else "auto"
    if from_cli:
        try:
            return _format_for(path, "auto", "test")
        except DataError:
            if configured == "auto":
                raise
            return configured
    return _format_for(path, configured, "test")


def read_test(spec: StudySpec, test: str | Path | None = None) -> tuple[Any, str]:
    """The normalised test split (``text``, optional ``text_pair``, ``example_id``, ``id``) as a ``datasets.Dataset``,
    read with the data module's readers and checks, and the name of the id column to write.

    The id column is ``task.data.id_column`` when the test file has it (else an ``id`` column of the file, else the
    row number 0..n-1 under the header ``id``). A missing text column is a :class:`DataError` listing the columns
    found.
    """
    cfg = spec.task.data
    location, from_hub = _test_location(spec, test)
    if from_hub:
        raw = _load_hub(cfg.hub_id, cfg.hub_config, location)
    else:
        path = Path(location)
        fmt = _test_format(path, cfg.source, from_cli=test is not None)
        raw = _read_file(path, fmt, "test")
        if test is not None:
            raw.where = f"{path} (--test)"
    _require_column(raw, cfg.text_column, "text_column")
    id_column = cfg.id_column
    if id_column is None or id_column not in raw.frame.columns:
        if id_column is not None:
            log.warning("%s: no id column %r (task.data.id_column): writing row numbers as id", raw.where, id_column)
        id_column = "id" if "id" in raw.frame.columns and "id" not in (cfg.text_column, cfg.text_pair_column) else None
    frame = _normalise(raw, _with_id_column(cfg, id_column), None, require_id=id_column is not None)
    return _to_dataset(frame, []), id_column or "id"


def _with_id_column(cfg: DataConfig, id_column: str | None) -> Any:
    """``cfg`` with another ``id_column`` (a pydantic model copy, or a namespace for duck-typed configs)."""
    if getattr(cfg, "id_column", None) == id_column:
        return cfg
    if hasattr(cfg, "model_copy"):
        return cfg.model_copy(update={"id_column": id_column})
    from types import SimpleNamespace

    return SimpleNamespace(**{**vars(cfg), "id_column": id_column})
