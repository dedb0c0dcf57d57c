"""Strategy names → classes: built-ins, ``package.module:ClassName`` references and entry points.

User strategies need no edit of this package: name the class in the study file as ``my_pkg.my_module:MyStrategy``
(imported only when a study names it), or publish it under the entry-point group ``freeze_sweeps.strategies``.
Names joined with ``+`` compose strategies (``bottom_n+discriminative``); their hyperparameters are routed to the part
that declares them.

Built-ins are no special case: :data:`BUILTINS` is a table of the same ``module:Class`` references an entry point
holds, loaded and checked by the same code (:func:`_load_reference`, :func:`check_contract`), and only when a study
names them. A new built-in strategy is one file plus one line in that table.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
from importlib.metadata import entry_points
from typing import Any

from strategies.base import Composite, Strategy, StrategyConfigError

ENTRY_POINT_GROUP = "freeze_sweeps.strategies"

# name -> "module:Class", exactly what an entry point of ENTRY_POINT_GROUP holds. One line per built-in strategy.
BUILTINS: dict[str, str] = {
    "none": "strategies.none:NoFreeze",
    "embeddings": "strategies.embeddings:FreezeEmbeddings",
    "bottom_n": "strategies.bottom_n:BottomN",
    "gradual": "strategies.gradual:Gradual",
    "discriminative": "strategies.discriminative:Discriminative",
    "schedule": "strategies.schedule:Schedule",
}
_registered: dict[str, type[Strategy]] = {}


class UnknownStrategyError(LookupError):
    """A strategy name that is neither built in, registered, an entry point nor an importable ``module:Class``."""


def check_contract(cls: type[Strategy]) -> None:
    """Raise ``TypeError`` unless ``cls`` keeps the plug-in contract: a :class:`Strategy` subclass with a usable
    ``name`` and ``layer_bounded_params`` that name its own hyperparameters (a typo there would silently switch off
    the range check of the parameter it meant)."""
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise TypeError(f"{cls!r} is not a Strategy subclass")
    name = getattr(cls, "name", None)
    # "+" composes and ":" marks an import reference: a name containing either could never be resolved.
    if not isinstance(name, str) or not name or "+" in name or ":" in name:
        raise TypeError(f"{cls.__qualname__}.name must be a non-empty string without '+' or ':', got {name!r}")
    bounded = cls.layer_bounded_params
    if isinstance(bounded, str) or not all(isinstance(p, str) for p in bounded):
        raise TypeError(f"{cls.__qualname__}.layer_bounded_params must be a tuple of names, got {bounded!r}")
    unknown = [p for p in bounded if p not in cls.param_defaults()]
    if unknown:
        raise TypeError(
            f"{cls.__qualname__}.layer_bounded_params names {unknown}, which are not among its hyperparameters "
            f"{sorted(cls.param_defaults())}"
        )


def register(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: make ``cls`` available under ``cls.name`` in this process."""
    check_contract(cls)
    _registered[cls.name] = cls
    return cls


def _entry_point_names() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available() -> dict[str, str]:
    """Every strategy name this process can resolve without an import reference, with where it comes from."""
    out = dict(BUILTINS)
    out.update({name: f"{cls.__module__}:{cls.__qualname__}" for name, cls in _registered.items()})
    out.update({name: f"entry point {ep.value}" for name, ep in _entry_point_names().items()})
    return out


def _load_reference(ref: str) -> type[Strategy]:
    """Import a ``module:Class`` reference (a built-in, a study's ``name:`` or an entry point's value) and check it."""
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
    check_contract(cls)
    return cls


def resolve_one(name: str) -> type[Strategy]:
    """One strategy class for ``name`` (no ``+``)."""
    name = name.strip()
    if name in _registered:
        return _registered[name]
    if name in BUILTINS:
        return _load_reference(BUILTINS[name])
    if ":" in name:
        return _load_reference(name)
    eps = _entry_point_names()
    if name in eps:
        try:
            cls = eps[name].load()
        except (ImportError, AttributeError) as exc:
            raise UnknownStrategyError(f"entry point {name!r} ({eps[name].value}) cannot be loaded: {exc}") from exc
        if not (isinstance(cls, type) and issubclass(cls, Strategy)):
            raise UnknownStrategyError(f"entry point {name!r} does not load a Strategy subclass")
        check_contract(cls)
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


def default_training(name: str) -> dict[str, Any]:
    """The training defaults of a (possibly composed) strategy: each part's ``default_training``, the first part
    that sets a field winning (``bottom_n+discriminative`` searches bottom_n's learning-rate range)."""
    out: dict[str, Any] = {}
    for cls in resolve(name):
        for key, value in dict(getattr(cls, "default_training", {}) or {}).items():
            out.setdefault(key, value)
    return out


def layer_bounded_params(name: str) -> tuple[str, ...]:
    """The hyperparameters of a (possibly composed) strategy whose range is ``0..L``, L the model's layer count
    (see :attr:`Strategy.layer_bounded_params`). The sweep side range-checks exactly these before the first trial."""
    return tuple(dict.fromkeys(p for cls in resolve(name) for p in cls.layer_bounded_params))


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
