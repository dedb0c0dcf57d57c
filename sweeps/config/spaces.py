"""Search entries: ``{type: int|float|categorical, ...}`` in place of a fixed value.

A field is either a fixed value or a search entry; the pydantic discriminator picks the branch up front so
a user gets one error per field, not one per union member.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from annotated_types import Ge, Gt, Le
from pydantic import AfterValidator, Discriminator, Field, Tag, field_validator, model_validator

from sweeps.config.fields import _NUMBER_RE, Float, _Bounds, _describe, _is_scalar, _Model
from sweeps.errors import SpecError


class IntSpace(_Model):
    """``{type: int, low, high, step: 1, log: false}`` → ``trial.suggest_int``."""

    type: Literal["int"] = "int"
    low: int
    high: int
    step: Annotated[int, Gt(0)] = 1
    log: bool = False

    @model_validator(mode="after")
    def _check(self) -> IntSpace:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must be <= high ({self.high})")
        if self.log and self.low < 1:
            raise ValueError(f"log: true needs low > 0, got low {self.low}")
        if self.log and self.step != 1:
            raise ValueError("log: true needs step 1 (Optuna samples log ranges without a step)")
        if (self.high - self.low) % self.step:
            raise ValueError(f"high - low ({self.high - self.low}) must be a multiple of step ({self.step})")
        return self


class FloatSpace(_Model):
    """``{type: float, low, high, step: null, log: false}`` → ``trial.suggest_float``."""

    type: Literal["float"] = "float"
    low: Float
    high: Float
    step: Annotated[Float, Gt(0)] | None = None
    log: bool = False

    @model_validator(mode="after")
    def _check(self) -> FloatSpace:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must be <= high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"log: true needs low > 0, got low {self.low}")
        if self.log and self.step is not None:
            raise ValueError("log: true cannot be combined with step (Optuna does not support it)")
        return self


class CategoricalSpace(_Model):
    """``{type: categorical, choices: [...]}`` (or the shorthand ``{choices: [...]}``) → ``trial.suggest_categorical``.
    Choices are scalars because Optuna stores them in its database and MLflow logs them as params."""

    type: Literal["categorical"] = "categorical"
    choices: Annotated[list[Any], Field(min_length=1)]

    @field_validator("choices")
    @classmethod
    def _check_choices(cls, choices: list[Any]) -> list[Any]:
        seen: set[tuple[str, Any]] = set()
        for i, choice in enumerate(choices):
            if not _is_scalar(choice):
                raise ValueError(f"choices[{i}] must be a string, number, boolean or null, got {_describe(choice)}")
            key = (type(choice).__name__, choice)
            if key in seen:
                raise ValueError(f"choices[{i}] {choice!r} is listed twice")
            seen.add(key)
        return choices

    def optuna_choices(self) -> list[Any]:
        """The choices as Optuna stores them (scalars); :meth:`decode` maps a stored one back to its value."""
        return list(self.choices)

    def decode(self, stored: Any) -> Any:
        """The value a trial uses for the choice Optuna stored (the same scalar here; see ``HiddenChoices``)."""
        return stored


SearchSpace = Union[IntSpace, FloatSpace, CategoricalSpace]  # noqa: UP007 - used with isinstance


_SPACE_TYPES = ("int", "float", "categorical")


def is_search(value: Any) -> bool:
    """True for a parsed search entry (as opposed to a fixed value)."""
    return isinstance(value, (IntSpace, FloatSpace, CategoricalSpace))


def _search_tag(value: Any) -> str | None:
    """Pydantic discriminator: a mapping is a search entry (by its ``type``, or categorical when it only has
    ``choices``); anything else is a fixed value. Choosing the branch up front keeps one clear error per field instead
    of one per union member."""
    if isinstance(value, dict):
        kind = value.get("type")
        if kind is None and "choices" in value:
            return "categorical"
        return kind if isinstance(kind, str) and kind in _SPACE_TYPES else None
    if is_search(value):
        return value.type
    return "value"


def _is_plain(value: Any, depth: int = 0) -> bool:
    """A scalar, or lists/mappings (string keys) of plain values, a few levels deep: what JSON, Optuna user
    attributes and an MLflow param string can all hold (``schedule``'s ``phases`` is a list of mappings)."""
    if _is_scalar(value):
        return True
    if depth >= 4:
        return False
    if isinstance(value, list):
        return all(_is_plain(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v, depth + 1) for k, v in value.items())
    return False


def _plain_value(value: Any) -> Any:
    """A fixed strategy hyperparameter: a scalar, a list of scalars, or a list of mappings of those (``phases``), so
    it can be logged and compared."""
    if _is_plain(value) and not isinstance(value, dict):
        return value
    raise ValueError(
        f"must be a string, number, boolean, null, a list of those or a list of mappings, got {_describe(value)}"
    )


def _searchable(value_type: Any) -> Any:
    """``value_type`` or a search entry (see :data:`SearchSpace`)."""
    return Annotated[
        Union[  # noqa: UP007 - Annotated members need the Union form
            Annotated[value_type, Tag("value")],
            Annotated[IntSpace, Tag("int")],
            Annotated[FloatSpace, Tag("float")],
            Annotated[CategoricalSpace, Tag("categorical")],
        ],
        Discriminator(_search_tag),
    ]


SearchableBatchSize = _searchable(Annotated[int, Ge(1)])


SearchableLearningRate = _searchable(Annotated[Float, Gt(0)])


SearchableWeightDecay = _searchable(Annotated[Float, Ge(0)])


SearchableWarmup = _searchable(Annotated[Float, Ge(0), Le(1)])


SearchableHeadScale = _searchable(Annotated[Float, Gt(0)])


ParamValue = _searchable(Annotated[Any, AfterValidator(_plain_value)])


def _check_space(space: SearchSpace, path: str, bounds: _Bounds) -> None:
    """A search entry fits the field it searches: an integer field cannot take a float range or string choices, and
    the whole range must satisfy the field's own limits (a batch size range starting at 0 fails here, not in trial
    37)."""
    if isinstance(space, FloatSpace) and bounds.kind == "int":
        raise SpecError(path, "a float range cannot search an integer field; use type: int")
    if isinstance(space, (IntSpace, FloatSpace)):
        if bounds.kind in ("bool", "str"):
            raise SpecError(path, f"a numeric range cannot search a {bounds.kind} field; use choices: [...]")
        for end in ("low", "high"):
            problem = bounds.problem(getattr(space, end))
            if problem:
                raise SpecError(f"{path}.{end}", problem)
        return
    for i, choice in enumerate(space.choices):
        if bounds.kind == "float" and isinstance(choice, str) and _NUMBER_RE.match(choice.strip()):
            space.choices[i] = choice = float(choice)
        problem = bounds.problem(choice)
        if problem:
            raise SpecError(f"{path}.choices[{i}]", problem)
