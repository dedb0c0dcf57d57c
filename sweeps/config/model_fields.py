"""``task.model`` as a factory and ``task.head``: the study-file fields for models users write themselves.

Kept apart from :mod:`sweeps.config.schema` because they describe *how the model is built*, which the other
sections only consume; :mod:`sweeps.train.custom_models` is the one place that acts on them.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from annotated_types import Ge, Lt
from pydantic import Field

from sweeps.config.fields import Float, _Model

FACTORY_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
"""``package.module:function``. ``package:<name>`` has the same shape and is checked first (it is a model folder)."""


def is_factory_ref(model: str) -> bool:
    """True when ``task.model`` names a Python factory, not a hub id, folder or ``package:`` model."""
    return not model.startswith("package:") and bool(FACTORY_RE.match(model))


POOLINGS = ("cls", "mean", "max")


ACTIVATIONS = ("tanh", "relu", "gelu")


class HeadConfig(_Model):
    """``task.head``: a classification head built on the checkpoint's bare encoder (``AutoModel``) instead of its own
    classification head: pooled hidden state → ``hidden`` Linear layers with ``activation`` → ``num_labels``."""

    pooling: Literal["cls", "mean", "max"] = "cls"
    hidden: list[Annotated[int, Ge(1)]] = Field(default_factory=list)
    activation: Literal["tanh", "relu", "gelu"] = "tanh"
    dropout: Annotated[Float, Ge(0), Lt(1)] = 0.1
