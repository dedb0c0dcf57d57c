"""``schedule``: an explicit freeze schedule written as data, in the spirit of finetuning-scheduler's explicit
schedules and Lightning's ``BaseFinetuning``.

A schedule is a list of phases. Each phase starts at an epoch (``epoch: k``) or an optimizer step (``step: k``),
names the groups frozen while it lasts (:mod:`strategies.group_selectors`: ``head``, ``layer.2``, ``layer.0-3``,
``body``, a module path such as ``fc2``) and optional learning-rate multipliers for the groups that train. A phase
lasts until the next one starts; the last one lasts to the end of training. Groups a phase does not freeze train, at
multiplier 1 unless ``lr_multipliers`` says otherwise::

    # fc2 frozen for the first 3 epochs, then train everything
    phases:
      - {epoch: 0, frozen: [fc2]}
      - {epoch: 3}

    # fastai's freeze -> fine_tune: the head alone for k epochs (k searched), then everything at half the LR
    boundary_0: {type: int, low: 1, high: 3}
    phases:
      - {epoch: 0, frozen: [body]}
      - {epoch: boundary_0, lr_multipliers: {all: 0.5}}

**Searchable boundaries.** Optuna searches scalars, not lists, so a phase start may name one of the scalar fields
``boundary_0`` … ``boundary_3`` instead of giving a number; those fields are ordinary hyperparameters (fixed or
searched like ``n``). A boundary that is set but used by no phase is an error (it would be searched for nothing).

The rules, checked by :meth:`Schedule.check` with errors naming the field: the first phase starts at 0; starts
strictly increase (a searched boundary that lands on or before the previous start fails that trial, so keep the
ranges apart); all phases count in the same unit; every selector names groups of this model; a phase leaves at least
one group with parameters to train. Unfreezing goes through :class:`~strategies.optim.FreezeController` like every
other strategy: a group frozen during a phase is bit-identical at its end, and joins the optimizer with fresh state.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from strategies.base import GroupSetting, Plan, Strategy, StrategyConfigError
from strategies.group_selectors import select_groups
from strategies.layers import LayerMap

BOUNDARIES = ("boundary_0", "boundary_1", "boundary_2", "boundary_3")
UNITS = ("epoch", "step")
PHASE_KEYS = (*UNITS, "frozen", "lr_multipliers")


@dataclass(frozen=True)
class Phase:
    """One parsed phase: where it starts (resolved to a number), the selectors it freezes and its multipliers."""

    index: int
    start: int
    frozen: tuple[str, ...] = ()
    lr_multipliers: tuple[tuple[str, float], ...] = ()

    @property
    def path(self) -> str:
        return f"phases[{self.index}]"


@dataclass
class Schedule(Strategy):
    """Explicit phases: each starts at an epoch or step, freezes the groups it names, scales LRs (see module doc)."""

    phases: list[dict[str, Any]]
    boundary_0: int | None = None
    boundary_1: int | None = None
    boundary_2: int | None = None
    boundary_3: int | None = None
    name: ClassVar[str] = "schedule"

    def __post_init__(self) -> None:
        self.stepwise = self.unit() == "step"  # type: ignore[misc]

    # -- hooks -----------------------------------------------------------------------------------------------------
    def check(self, layer_map: LayerMap) -> None:
        for phase in self.parsed():
            frozen = self._frozen(layer_map, phase)
            self._multipliers(layer_map, phase)
            if all(name in frozen for name in layer_map.names if layer_map.group(name).params):
                raise StrategyConfigError(
                    f"{phase.path}.frozen", "freezes every group that has parameters: nothing would train"
                )

    def plan(self, layer_map: LayerMap, epoch: int, step: int) -> Plan:
        clock = step if self.unit() == "step" else epoch
        phase = self.phase_at(clock)
        frozen = self._frozen(layer_map, phase)
        mults = self._multipliers(layer_map, phase)
        return {
            name: GroupSetting(frozen=name in frozen, lr_multiplier=mults.get(name, 1.0)) for name in layer_map.names
        }

    def schedule_end(self, layer_map: LayerMap) -> int:
        return self.parsed()[-1].start if self.unit() == "epoch" else 0

    def final_step(self, layer_map: LayerMap) -> int:
        return self.parsed()[-1].start if self.unit() == "step" else 0

    # -- parsing ---------------------------------------------------------------------------------------------------
    def unit(self) -> str:
        """The unit of the first phase (``step`` or ``epoch``); a later phase in another unit is an error."""
        first = self.phases[0] if isinstance(self.phases, list) and self.phases else None
        return "step" if isinstance(first, Mapping) and "step" in first and "epoch" not in first else "epoch"

    def phase_at(self, clock: int) -> Phase:
        """The phase in force at epoch/step ``clock``: the last one started at or before it."""
        phases = self.parsed()
        current = phases[0]
        for phase in phases[1:]:
            if phase.start > clock:
                break
            current = phase
        return current

    def parsed(self) -> list[Phase]:
        """The phases with their starts resolved, after the checks that need no model."""
        if not isinstance(self.phases, list) or not self.phases:
            raise StrategyConfigError("phases", f"must be a non-empty list of phases, got {self.phases!r}")
        unit = self.unit()
        used: set[str] = set()
        out: list[Phase] = []
        for i, raw in enumerate(self.phases):
            phase = self._parse_phase(i, raw, unit, used)
            if i == 0 and phase.start != 0:
                raise StrategyConfigError(
                    f"phases[0].{unit}", f"the first phase must start at {unit} 0, got {phase.start}"
                )
            if out and phase.start <= out[-1].start:
                raise StrategyConfigError(
                    f"phases[{i}].{unit}",
                    f"starts at {unit} {phase.start}{self._via(raw, unit)}, not after phases[{i - 1}] "
                    f"({unit} {out[-1].start}{self._via(self.phases[i - 1], unit)}): phases must be sorted and must "
                    "not overlap",
                )
            out.append(phase)
        for name in BOUNDARIES:
            if getattr(self, name) is not None and name not in used:
                raise StrategyConfigError(name, "is set but no phase starts at it (phase starts name it, e.g. "
                                          f"'epoch: {name}')")
        return out

    def _parse_phase(self, i: int, raw: object, unit: str, used: set[str]) -> Phase:
        path = f"phases[{i}]"
        if not isinstance(raw, Mapping):
            raise StrategyConfigError(path, f"must be a mapping such as {{epoch: 0, frozen: [head]}}, got {raw!r}")
        for key in raw:
            if key not in PHASE_KEYS:
                close = difflib.get_close_matches(str(key), PHASE_KEYS, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise StrategyConfigError(f"{path}.{key}", f"unknown phase key.{hint} Phase keys: {list(PHASE_KEYS)}")
        given = [u for u in UNITS if u in raw]
        if len(given) != 1:
            raise StrategyConfigError(path, f"give exactly one of 'epoch' or 'step' (when it starts), got {given}")
        if given[0] != unit:
            raise StrategyConfigError(
                f"{path}.{given[0]}", f"all phases must count in the same unit; other phases use '{unit}'"
            )
        start = self._start(f"{path}.{unit}", raw[unit], used)
        frozen = raw.get("frozen", ())
        frozen = (frozen,) if isinstance(frozen, str) else frozen
        if not isinstance(frozen, (list, tuple)):
            raise StrategyConfigError(f"{path}.frozen", f"must be a list of group selectors, got {frozen!r}")
        mults = raw.get("lr_multipliers") or {}
        if not isinstance(mults, Mapping):
            raise StrategyConfigError(f"{path}.lr_multipliers", f"must map group selectors to numbers, got {mults!r}")
        return Phase(i, start, tuple(frozen), tuple((k, self._multiplier(f"{path}.lr_multipliers.{k}", v))
                                                      for k, v in mults.items()))

    def _start(self, path: str, value: object, used: set[str]) -> int:
        if isinstance(value, str):
            name = value.strip()
            if name not in BOUNDARIES:
                raise StrategyConfigError(
                    path, f"{value!r} is neither a number nor one of the boundary fields {list(BOUNDARIES)}"
                )
            used.add(name)
            bound = getattr(self, name)
            if bound is None:
                raise StrategyConfigError(path, f"refers to {name}, which is not set; give {name}: <number or search>")
            return self._count(name, bound)
        return self._count(path, value)

    @staticmethod
    def _count(path: str, value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise StrategyConfigError(path, f"must be an integer ≥ 0, got {value!r}")
        return value

    @staticmethod
    def _multiplier(path: str, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise StrategyConfigError(path, f"must be a number > 0, got {value!r}")
        return float(value)

    @staticmethod
    def _via(raw: object, unit: str) -> str:
        ref = raw.get(unit) if isinstance(raw, Mapping) else None
        return f" (from {ref})" if isinstance(ref, str) else ""

    # -- resolving against the model ---------------------------------------------------------------------------------
    @staticmethod
    def _frozen(layer_map: LayerMap, phase: Phase) -> set[str]:
        out: set[str] = set()
        for j, selector in enumerate(phase.frozen):
            out.update(select_groups(layer_map, selector, f"{phase.path}.frozen[{j}]"))
        return out

    @staticmethod
    def _multipliers(layer_map: LayerMap, phase: Phase) -> dict[str, float]:
        """Group → multiplier. Two selectors of one phase may not both set a group: which one wins would be a guess."""
        out: dict[str, float] = {}
        owner: dict[str, str] = {}
        for selector, mult in phase.lr_multipliers:
            path = f"{phase.path}.lr_multipliers.{selector}"
            for name in select_groups(layer_map, selector, path):
                if name in owner:
                    raise StrategyConfigError(path, f"group {name!r} is also set by {owner[name]!r} in this phase")
                out[name], owner[name] = mult, selector
        return out
