"""``task.model`` as a factory and ``task.head``: the study-file fields for models users write themselves.

Kept apart from :mod:`sweeps.config.schema` because they describe *how the model is built*, which the other
sections only consume; :mod:`sweeps.train.custom_models` is the one place that acts on them.

Every ``task.head`` field is a fixed value or a search entry, as in ``training``. A trial's head is the plain mapping
:meth:`HeadConfig.resolve` returns (searched fields replaced by the trial's values): that mapping, not the study file,
is what builds the model and what is saved beside its weights, so ``predict`` rebuilds the head the trial trained.
"""

from __future__ import annotations

import json
import re
import typing
from typing import Annotated, Any, Literal, Union

from annotated_types import Ge, Lt
from pydantic import BeforeValidator, Discriminator, Field, Tag, field_validator

from sweeps.config.fields import Float, _Bounds, _describe, _Model
from sweeps.config.spaces import (
    CategoricalSpace,
    FloatSpace,
    IntSpace,
    SearchSpace,
    _search_tag,
    _searchable,
    is_search,
)

FACTORY_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
"""``package.module:function``. ``package:<name>`` has the same shape and is checked first (it is a model folder)."""


def is_factory_ref(model: str) -> bool:
    """True when ``task.model`` names a Python factory, not a hub id, folder or ``package:`` model."""
    return not model.startswith("package:") and bool(FACTORY_RE.match(model))


POOLINGS = ("cls", "mean", "max")


ACTIVATIONS = ("tanh", "relu", "gelu")


HiddenSizes = list[Annotated[int, Ge(1)]]


class HiddenChoices(CategoricalSpace):
    """``hidden: {type: categorical, choices: [[], [128], [256, 64]]}``: whole lists of layer sizes as the choices.

    Optuna's categorical choices must be scalars, so Optuna is given each list as its JSON text (``"[256, 64]"``):
    readable as the trial's ``head.hidden`` param (in Optuna, MLflow and the report) and decoded back to the list."""

    choices: Annotated[list[HiddenSizes], Field(min_length=1)]

    @field_validator("choices")
    @classmethod
    def _check_choices(cls, choices: list[list[int]]) -> list[list[int]]:
        for i, choice in enumerate(choices):
            if choice in choices[:i]:
                raise ValueError(f"choices[{i}] {choice!r} is listed twice")
        return choices

    def optuna_choices(self) -> list[Any]:
        return [json.dumps(choice) for choice in self.choices]

    def decode(self, stored: Any) -> Any:
        return [int(size) for size in json.loads(stored)] if isinstance(stored, str) else list(stored)


def _hidden_entry(value: Any) -> Any:
    """Only a categorical over whole lists can search ``hidden``; a range there has no meaning as a list of sizes."""
    if isinstance(value, dict) and _search_tag(value) in ("int", "float"):
        raise ValueError("a numeric range cannot search hidden (a list of layer sizes); use choices: [[], [128], ...]")
    choices = value.get("choices") if isinstance(value, dict) else None
    for i, choice in enumerate(choices if isinstance(choices, list) else []):
        if not isinstance(choice, list):
            raise ValueError(f"choices[{i}] must be a list of layer sizes (e.g. [128] or []), got {_describe(choice)}")
    return value


def _hidden_tag(value: Any) -> str | None:
    tag = _search_tag(value)
    return "categorical" if tag == "categorical" else "value" if tag == "value" else None


SearchableHidden = Annotated[
    Union[  # noqa: UP007 - Annotated members need the Union form
        Annotated[HiddenSizes, Tag("value")],
        Annotated[HiddenChoices, Tag("categorical")],
    ],
    Discriminator(_hidden_tag),
    BeforeValidator(_hidden_entry),
]


class HeadConfig(_Model):
    """``task.head``: a classification head built on the checkpoint's bare encoder (``AutoModel``) instead of its own
    classification head: pooled hidden state → ``hidden`` Linear layers with ``activation`` → ``num_labels``. Each
    field may be a search entry (Optuna name ``head.<field>``)."""

    pooling: _searchable(Literal["cls", "mean", "max"]) = "cls"
    hidden: SearchableHidden = Field(default_factory=list)
    activation: _searchable(Literal["tanh", "relu", "gelu"]) = "tanh"
    dropout: _searchable(Annotated[Float, Ge(0), Lt(1)]) = 0.1

    SEARCHABLE: typing.ClassVar[dict[str, _Bounds]] = {
        "pooling": _Bounds("str", one_of=POOLINGS),
        "activation": _Bounds("str", one_of=ACTIVATIONS),
        "dropout": _Bounds("float", ge=0, lt=1),
    }
    """The limits every value of a search entry's range must meet (``hidden``'s choices are typed by their model)."""

    def searched(self) -> dict[str, SearchSpace]:
        """The fields that are search entries, in field order."""
        return {key: value for key in type(self).model_fields if is_search(value := getattr(self, key))}

    def fixed(self) -> dict[str, Any]:
        """The fields with a fixed value (what makes every trial's head alike: part of the study's fingerprint)."""
        searched = self.searched()
        return {k: v for k, v in self.model_dump(mode="json").items() if k not in searched}

    def resolve(self, values: dict[str, Any]) -> dict[str, Any]:
        """The plain head of one trial: the fixed fields plus ``values`` (one per searched field, decoded)."""
        missing = set(self.searched()) - set(values)
        if missing:
            raise ValueError(f"no value for the searched head field(s) {', '.join(sorted(missing))}")
        return {**self.fixed(), **{k: values[k] for k in self.searched()}}

    def representative(self) -> dict[str, Any]:
        """A head from the search space for what needs one model before any trial (``inspect``, the checks against the
        model): each searched field's first choice, or the low end of its range."""
        values = {}
        for key, space in self.searched().items():
            if isinstance(space, (IntSpace, FloatSpace)):
                values[key] = space.low
            else:
                values[key] = space.decode(space.optuna_choices()[0])
        return self.resolve(values)
