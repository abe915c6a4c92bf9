"""Figures made without touching the user's matplotlib backend (matplotlib imported lazily).

Every lrkit plot starts from :func:`new_figure`. A figure to be saved is a
``matplotlib.figure.Figure`` made directly: saving it needs no backend, so lrkit never
switches the user's (``matplotlib.use("Agg")`` in the plotting code turned a notebook's inline
plots off for the rest of its session) and leaves no figure open in pyplot. A figure returned
to be shown (``shown=True``: a ``plot()`` without a path) is made through pyplot in the user's
own backend, so a script's ``plt.show()`` shows it; under a notebook's inline backend it is
closed in pyplot at once, so the notebook shows it once, as the value returned (twice before).
:func:`smooth` is the moving average the plots draw over a noisy per-step curve.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["new_figure", "smooth"]


def new_figure(figsize: tuple[float, float], nrows: int = 1, ncols: int = 1, *,
               shown: bool = False, **subplots: Any) -> tuple[Any, Any]:
    """``(figure, axes)`` as ``plt.subplots(nrows, ncols, figsize=figsize, **subplots)``
    returns them, made as the module docstring says."""
    if shown:
        import matplotlib
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(nrows, ncols, figsize=figsize, **subplots)
        if "inline" in matplotlib.get_backend():
            plt.close(fig)
        return fig, axes
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **subplots)


def smooth(values: Sequence[float], window: int) -> np.ndarray:
    """Centred moving average of ``values`` over ``window`` points (shrinking at the ends;
    non-finite values are skipped)."""
    y = np.asarray(values, dtype=float)
    n = y.size
    if n == 0 or window <= 1:
        return y
    ok = np.isfinite(y)
    yz = np.where(ok, y, 0.0)
    c = np.concatenate([[0.0], np.cumsum(yz)])
    k = np.concatenate([[0], np.cumsum(ok.astype(int))])
    h = window // 2
    lo = np.clip(np.arange(n) - h, 0, n)
    hi = np.clip(np.arange(n) + h + 1, 0, n)
    cnt = k[hi] - k[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, (c[hi] - c[lo]) / np.maximum(cnt, 1), np.nan)
