"""The study file: YAML → a typed, validated :class:`StudySpec` with every default resolved.

Nothing but a :class:`~sweeps.errors.SpecError` whose ``path`` is the YAML path escapes :func:`load_spec` or
:func:`parse_spec` for a bad file: pydantic errors, YAML errors, bad ``--set`` overrides and unknown strategies are all
converted. This package imports nothing else of :mod:`sweeps` but :mod:`sweeps.errors` and :mod:`sweeps.metrics`; every
later stage reads the resolved spec and never re-derives a default.
"""

from sweeps.config.load import load_spec, parse_spec
from sweeps.config.overrides import apply_overrides
from sweeps.config.schema import (
    ConfirmConfig,
    CVConfig,
    DataConfig,
    LayersConfig,
    Objective,
    OptunaConfig,
    StrategyEntry,
    StudySpec,
    TaskConfig,
    TrackingConfig,
    TrainingConfig,
)
from sweeps.config.secrets import mask_secrets
from sweeps.config.spaces import CategoricalSpace, FloatSpace, IntSpace, SearchSpace, is_search

__all__ = [
    "CVConfig",
    "CategoricalSpace",
    "ConfirmConfig",
    "DataConfig",
    "FloatSpace",
    "IntSpace",
    "LayersConfig",
    "Objective",
    "OptunaConfig",
    "SearchSpace",
    "StrategyEntry",
    "StudySpec",
    "TaskConfig",
    "TrackingConfig",
    "TrainingConfig",
    "apply_overrides",
    "is_search",
    "load_spec",
    "mask_secrets",
    "parse_spec",
]
