"""The layer-group table users otherwise write by hand with ``named_parameters()``."""

from __future__ import annotations

from typing import Any

from strategies.base import Plan
from strategies.layers import LayerMap


def describe(layer_map: LayerMap, plan: Plan) -> list[dict[str, Any]]:
    """One row per group: ``name``, ``num_params``, ``frozen``, ``lr_multiplier``, ``modules`` (a stable contract:
    ``sweeps inspect --format json`` prints these, plus ``unused``/``unused_params`` for parameters without a
    gradient)."""
    return [
        {
            "name": g.name,
            "num_params": g.num_params,
            "frozen": plan[g.name].frozen,
            "lr_multiplier": 0.0 if plan[g.name].frozen else plan[g.name].lr_multiplier,
            "modules": list(g.module_paths),
        }
        for g in layer_map.groups
    ]


def format_table(rows: list[dict[str, Any]]) -> str:
    """Plain-text table of :func:`describe` rows, with totals."""
    header = f"{'group':<14}{'params':>12}  {'frozen':<7}{'lr x':>10}  modules"
    lines = [header, "-" * len(header)]
    for r in rows:
        mods = ", ".join(r["modules"][:3]) + (f" (+{len(r['modules']) - 3})" if len(r["modules"]) > 3 else "")
        frozen = "yes" if r["frozen"] else "no"
        lines.append(f"{r['name']:<14}{r['num_params']:>12,}  {frozen:<7}{r['lr_multiplier']:>10.4g}  {mods}")
    total = sum(r["num_params"] for r in rows)
    # rows annotated with ``unused_params`` (parameters that never get a gradient) do not train those
    trainable = sum(r["num_params"] - r.get("unused_params", 0) for r in rows if not r["frozen"])
    lines.append("-" * len(header))
    lines.append(f"trainable {trainable:,} of {total:,} parameters ({100.0 * trainable / max(total, 1):.1f}%)")
    return "\n".join(lines)
