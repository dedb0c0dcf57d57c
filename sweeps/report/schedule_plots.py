"""What no dashboard draws: how each strategy froze the model over time, and the LR every layer group trained at.

Both read the per-epoch series the runner writes (``trials/trial_<n>_epochs.json``, with ``lr/<group>`` as the mean
LR the group trained at in that epoch, 0 while frozen), for the best trial of each strategy.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from sweeps.report.plots import _Context, _figure, _integer_ticks, _Plot, _save, read_epochs
from sweeps.report.table import best_per_strategy

SCHEDULE_FILES = ("freeze_schedule.png", "lr_per_group.png")


def _lr_series(out: Path, number: int) -> tuple[list[int], list[str], np.ndarray] | None:
    """(epochs, groups bottom-up, LR matrix epochs × groups) of one trial, or None without ``lr/`` columns."""
    series = read_epochs(out, number)
    if not series:
        return None
    groups = [k[len("lr/") :] for k in series[0] if k.startswith("lr/")]
    if not groups:
        return None
    epochs = [int(e.get("epoch", i)) + 1 for i, e in enumerate(series)]
    matrix = np.array([[float(e.get(f"lr/{g}") or 0.0) for g in groups] for e in series])
    return epochs, groups, matrix


def _best_trials(ctx: _Context) -> list[tuple[str, int]]:
    best = best_per_strategy(ctx.table, ctx.metric) if len(ctx.table) else ctx.table
    return [(str(r["strategy"]), int(r["number"])) for _, r in best.iterrows()]


def _grid(n: int, width: float, height: float) -> tuple[Any, list[Any]]:
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = _figure(width * cols + 1.0, height * rows + 0.6)
    axes = list(fig.subplots(rows, cols, squeeze=False).flat)
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def plot_freeze_schedule(ctx: _Context, out: Path) -> _Plot:
    """Epoch × layer group per strategy: grey = frozen, colour = LR relative to the epoch's highest group LR (the LR
    multiplier, e.g. discriminative decay; below 1 also when a group trained for part of the epoch only)."""
    file, title = "freeze_schedule.png", "Freeze schedule (best trial of each strategy)"
    data = [(s, n, d) for s, n in _best_trials(ctx) if (d := _lr_series(out, n)) is not None]
    if not data:
        return _Plot(None, title, "No completed trial with per-epoch lr/<group> values.")
    fig, axes = _grid(len(data), 3.2, 0.25 * max(len(d[1]) for _, _, d in data) + 1.4)
    image = None
    for ax, (strategy, number, (epochs, groups, lr)) in zip(axes, data):
        top = lr.max(axis=1, keepdims=True)
        relative = np.divide(lr, top, out=np.zeros_like(lr), where=top > 0)
        masked = np.ma.masked_where(lr <= 0, relative).T  # groups as rows, bottom (embeddings) at the bottom
        ax.set_facecolor("0.82")
        image = ax.imshow(masked, origin="lower", aspect="auto", cmap="viridis", vmin=0, vmax=1,
                          extent=(epochs[0] - 0.5, epochs[-1] + 0.5, -0.5, len(groups) - 0.5))
        ax.set_yticks(range(len(groups)))
        ax.set_yticklabels(groups, fontsize=7)
        _integer_ticks(ax)
        ax.set_xlabel("epoch")
        ax.set_title(f"{strategy} (trial {number})", fontsize=9)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, label="LR / highest group LR (grey: frozen)")
    fig.suptitle(title, fontsize=10)
    _save(fig, ctx.out / file)
    return _Plot(file, title, "Grey cells: the group was frozen for the whole epoch.")


def plot_lr_per_group(ctx: _Context, out: Path) -> _Plot:
    """The LR each layer group trained at, per epoch, for the best trial of each strategy (log scale; frozen
    epochs are gaps, not zeros)."""
    file, title = "lr_per_group.png", "LR per layer group (best trial of each strategy)"
    data = [(s, n, d) for s, n in _best_trials(ctx) if (d := _lr_series(out, n)) is not None]
    data = [(s, n, d) for s, n, d in data if (d[2] > 0).any()]
    if not data:
        return _Plot(None, title, "No completed trial with a non-zero lr/<group> value.")
    import matplotlib

    fig, axes = _grid(len(data), 3.6, 2.8)
    cmap = matplotlib.colormaps["viridis"]
    for ax, (strategy, number, (epochs, groups, lr)) in zip(axes, data):
        for j, group in enumerate(groups):
            values = np.where(lr[:, j] > 0, lr[:, j], np.nan)
            ax.plot(epochs, values, marker="o", ms=3, lw=1.2, color=cmap(j / max(len(groups) - 1, 1)), label=group)
        ax.set_yscale("log")
        _integer_ticks(ax)
        ax.set_xlabel("epoch")
        ax.set_ylabel("mean LR in epoch")
        ax.set_title(f"{strategy} (trial {number})", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=6, ncol=2 if max(len(d[1]) for _, _, d in data) > 8 else 1)
    fig.suptitle(title, fontsize=10)
    _save(fig, ctx.out / file)
    return _Plot(file, title, "Colour runs from the bottom group (embeddings, dark) to the head (light).")
