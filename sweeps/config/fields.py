"""The base of every study-file model and the small helpers the models and their error messages share.

Kept apart from the schema so the search entries, the schema and the error translation can all use them
without importing each other.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Iterable
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict

_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


_IMPORT_REF_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


_PACKAGE_RE = re.compile(r"^[A-Za-z_][\w.]*$")


_NUMBER_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def _yaml_float(value: Any) -> Any:
    """Accept ``5e-5`` written without a dot: PyYAML (YAML 1.1) reads it as the *string* ``"5e-5"``, the most common
    surprise in ML config files. Anything else is left for the strict float check to judge."""
    if isinstance(value, str) and _NUMBER_RE.match(value.strip()):
        return float(value)
    return value


Float = Annotated[float, BeforeValidator(_yaml_float)]
"""A float field that also accepts the numeric strings PyYAML produces for ``1e-5``."""


def _did_you_mean(word: Any, choices: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` when ``word`` is close to one of ``choices`` (empty otherwise)."""
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _hinted(main: str, word: Any, choices: Iterable[str], tail: str = "") -> str:
    """``main`` + the did-you-mean hint + ``tail`` as one readable message."""
    hint = _did_you_mean(word, choices)
    if not tail:
        return main + hint
    return f"{main}{hint} {tail}" if hint else f"{main}. {tail}"


def _describe(value: Any) -> str:
    """A short, type-revealing rendering of an input value for error messages (``got str '5'`` tells a user the
    value was quoted)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_scalar(value: Any) -> bool:
    """The values Optuna can store as a categorical choice and MLflow can log as a param."""
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or isinstance(value, (bool, int, str))


class _Model(BaseModel):
    """Base of every study-file model: unknown keys are errors (a typo must not silently fall back to a default),
    types are strict (``true`` is not a batch size, ``"32"`` is not an integer) and floats must be finite."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


@dataclasses.dataclass(frozen=True)
class _Bounds:
    """Constraints a value must meet, shared by the fixed-value check and the check of a search entry's range."""

    kind: str = "any"  # int | float | bool | str | any
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    nullable: bool = False
    one_of: tuple[str, ...] | None = None  # the allowed values of a choice field (``task.head.pooling``)

    def problem(self, value: Any) -> str | None:
        """Why ``value`` does not fit, or ``None``."""
        if value is None:
            return None if self.nullable or self.kind == "any" else "null is not allowed"
        if self.kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
            return f"expected an integer, got {_describe(value)}"
        if self.kind == "float" and not _is_number(value):
            return f"expected a number, got {_describe(value)}"
        if self.kind == "bool" and not isinstance(value, bool):
            return f"expected true or false, got {_describe(value)}"
        if self.kind == "str" and not isinstance(value, str):
            return f"expected a string, got {_describe(value)}"
        if _is_number(value):
            if self.ge is not None and value < self.ge:
                return f"must be >= {self.ge}, got {value}"
            if self.gt is not None and value <= self.gt:
                return f"must be > {self.gt}, got {value}"
            if self.le is not None and value > self.le:
                return f"must be <= {self.le}, got {value}"
            if self.lt is not None and value >= self.lt:
                return f"must be < {self.lt}, got {value}"
        if self.one_of is not None and value not in self.one_of:
            return _hinted(f"must be one of {', '.join(self.one_of)}, got {_describe(value)}", value, self.one_of)
        return None
