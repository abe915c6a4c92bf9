"""Plots of benchmark results (matplotlib; saved without touching the user's backend). Plots
only draw; they decide nothing."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ._figures import new_figure
from .html import mpl_text

if TYPE_CHECKING:  # pragma: no cover
    from .bench import MethodResult, Oracle

__all__ = ["plot_oracle", "plot_methods"]


def _draw_oracle(ax, o: "Oracle") -> None:
    grid = np.array(o.grid)
    mean, std = np.array(o.mean, dtype=float), np.array(o.std, dtype=float)
    finite = np.isfinite(mean)
    ax.errorbar(grid[finite], mean[finite], yerr=std[finite], fmt="o-", ms=3, capsize=2,
                color="C0", label=f"mean ± std over {len(o.seeds)} seeds")
    div = [i for i, d in enumerate(o.diverged) if any(d)]
    if div:
        y = np.nanmin(mean[finite]) if (finite.any() and not o.higher_is_better) else (
            np.nanmax(mean[finite]) if finite.any() else 0.0)
        lo = mean[finite].min() if finite.any() else 0.0
        ax.scatter(grid[div], [lo if o.higher_is_better else y] * len(div), marker="x",
                   color="red", zorder=5, label="a seed diverged")
    lo, hi = o.band
    ax.axvspan(lo, hi, color="green", alpha=0.15, label=f"good band (within {o.tol:.0%})")
    ax.axvline(o.best_lr, color="green", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel(mpl_text(o.metric_name) + (" (higher is better)" if o.higher_is_better else
                                   " (lower is better)"))
    if finite.any():
        good = mean[finite]
        span = np.nanmax(good) - np.nanmin(good)
        if not o.higher_is_better and np.nanmax(good) > 4 * np.nanmin(good) > 0:
            ax.set_yscale("log")
        elif span > 0:
            ax.set_ylim(np.nanmin(good) - 0.05 * span, np.nanmax(good) + 0.05 * span)
    ax.set_title(f"{mpl_text(o.task)}: best {o.best_lr:.3g}, band [{lo:.3g}, {hi:.3g}]", fontsize=9)
    ax.grid(alpha=0.3, which="both")


def plot_oracle(o: "Oracle", path: str | Path) -> str:
    """Metric vs LR (mean ± std), the good band shaded, diverged LRs marked."""
    fig, ax = new_figure((6.5, 4))
    _draw_oracle(ax, o)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return str(path)


def plot_methods(results: Sequence["MethodResult"], oracles: dict[str, "Oracle"],
                 path: str | Path) -> str:
    """One panel per task: the oracle curve with each method's chosen LRs marked."""
    tasks = list(dict.fromkeys(r.task for r in results))
    cols = min(3, len(tasks))
    rows = math.ceil(len(tasks) / cols)
    fig, axes = new_figure((5.5 * cols, 3.8 * rows), rows, cols, squeeze=False)
    methods = list(dict.fromkeys(r.method for r in results))
    colors = {m: f"C{(i + 1) % 10}" for i, m in enumerate(methods)}
    markers = "v^<>sPDXh*p"
    for ax, t in zip(axes.flat, tasks):
        o = oracles[t]
        _draw_oracle(ax, o)
        ymin, ymax = ax.get_ylim()
        for i, r in enumerate(x for x in results if x.task == t):
            lrs = [lr for lr in r.lrs if lr is not None]
            if not lrs:
                continue
            y = ymin + (0.04 + 0.06 * (i % 12)) * (ymax - ymin)
            ax.scatter(lrs, [y] * len(lrs), color=colors[r.method],
                       marker=markers[i % len(markers)], s=30, zorder=6,
                       label=f"{mpl_text(r.method)} ({r.regret:+.1%})"
                       if math.isfinite(r.regret) else f"{mpl_text(r.method)} (diverged)")
        ax.legend(fontsize=6, loc="best")
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return str(path)
