"""Strategy names → classes: built-ins, ``package.module:ClassName`` references and entry points.

User strategies need no edit of this package: name the class in the study file as ``my_pkg.my_module:MyStrategy``
(imported only when a study names it), or publish it under the entry-point group ``freeze_sweeps.strategies``.
Names joined with ``+`` compose strategies (``bottom_n+discriminative``); their hyperparameters are routed to the part
that declares them.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
from importlib.metadata import entry_points
from typing import Any

from strategies.base import Composite, Strategy, StrategyConfigError
from strategies.bottom_n import BottomN
from strategies.discriminative import Discriminative
from strategies.embeddings import FreezeEmbeddings
from strategies.gradual import Gradual
from strategies.none import NoFreeze

ENTRY_POINT_GROUP = "freeze_sweeps.strategies"

BUILTINS: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (NoFreeze, FreezeEmbeddings, BottomN, Gradual, Discriminative)
}
_registered: dict[str, type[Strategy]] = {}


class UnknownStrategyError(LookupError):
    """A strategy name that is neither built in, registered, an entry point nor an importable ``module:Class``."""


def register(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: make ``cls`` available under ``cls.name`` in this process."""
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise TypeError(f"{cls!r} is not a Strategy subclass")
    name = getattr(cls, "name", None)
    # "+" composes and ":" marks an import reference: a name containing either could never be resolved.
    if not isinstance(name, str) or not name or "+" in name or ":" in name:
        raise TypeError(f"{cls.__qualname__}.name must be a non-empty string without '+' or ':', got {name!r}")
    _registered[name] = cls
    return cls


def _entry_point_names() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available() -> dict[str, str]:
    """Every strategy name this process can resolve without an import reference, with where it comes from."""
    out = {name: f"{cls.__module__}:{cls.__qualname__}" for name, cls in BUILTINS.items()}
    out.update({name: f"{cls.__module__}:{cls.__qualname__}" for name, cls in _registered.items()})
    out.update({name: f"entry point {ep.value}" for name, ep in _entry_point_names().items()})
    return out


def _import_reference(ref: str) -> type[Strategy]:
    module_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UnknownStrategyError(f"cannot import module {module_name!r} for strategy {ref!r}: {exc}") from exc
    try:
        cls = getattr(module, attr)
    except AttributeError as exc:
        raise UnknownStrategyError(f"module {module_name!r} has no attribute {attr!r} (strategy {ref!r})") from exc
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise UnknownStrategyError(f"{ref!r} is not a subclass of strategies.Strategy")
    return cls


def resolve_one(name: str) -> type[Strategy]:
    """One strategy class for ``name`` (no ``+``)."""
    name = name.strip()
    if name in _registered:
        return _registered[name]
    if name in BUILTINS:
        return BUILTINS[name]
    if ":" in name:
        return _import_reference(name)
    eps = _entry_point_names()
    if name in eps:
        try:
            cls = eps[name].load()
        except (ImportError, AttributeError) as exc:
            raise UnknownStrategyError(f"entry point {name!r} ({eps[name].value}) cannot be loaded: {exc}") from exc
        if not (isinstance(cls, type) and issubclass(cls, Strategy)):
            raise UnknownStrategyError(f"entry point {name!r} does not load a Strategy subclass")
        return cls
    known = sorted(available())
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise UnknownStrategyError(
        f"unknown strategy {name!r}.{hint} Known: {', '.join(known)}; or give a class as 'package.module:ClassName'."
    )


def resolve(name: str) -> list[type[Strategy]]:
    """The classes a (possibly composed, ``a+b``) strategy name stands for."""
    parts = name.split("+")
    if any(not p.strip() for p in parts):
        raise UnknownStrategyError(f"strategy name {name!r} has an empty part")
    return [resolve_one(p) for p in parts]


def param_defaults(name: str) -> dict[str, Any]:
    """Hyperparameter names (and defaults, ``dataclasses.MISSING`` if required) of a possibly composed strategy."""
    out: dict[str, Any] = {}
    for cls in resolve(name):
        for key, default in cls.param_defaults().items():
            if key in out:
                raise UnknownStrategyError(f"strategies composed in {name!r} both declare parameter {key!r}")
            out[key] = default
    return out


def build_strategy(name: str, params: dict[str, Any] | None = None) -> Strategy:
    """Instantiate ``name`` with ``params`` (each routed to the part that declares it)."""
    params = dict(params or {})
    classes = resolve(name)
    instances: list[Strategy] = []
    for cls in classes:
        own = {k: params.pop(k) for k in list(params) if k in cls.param_defaults()}
        missing = [k for k, v in cls.param_defaults().items() if v is dataclasses.MISSING and k not in own]
        if missing:
            raise StrategyConfigError(missing[0], f"required by strategy {cls.name!r} but not given")
        instances.append(cls(**own))
    if params:
        key = next(iter(params))
        allowed = sorted(param_defaults(name))
        close = difflib.get_close_matches(key, allowed, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise StrategyConfigError(key, f"strategy {name!r} has no parameter {key!r}.{hint} Its parameters: {allowed}")
    return instances[0] if len(instances) == 1 else Composite(parts=tuple(instances))
