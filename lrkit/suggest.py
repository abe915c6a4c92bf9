"""Learning-rate suggestions from a range-test curve: pure functions of ``(lrs, losses)``.

numpy only (no torch), so the rules can be tested and reused alone.

Two layers:

- **The peers' rules, by name**, each a small function of the curve *as the peer feeds it*
  (already smoothed and trimmed by the peer's own pipeline; see each docstring):
  ``steepest`` (torch-lr-finder), ``minimum``, ``steep``, ``valley``, ``slide`` (fastai) and
  ``lightning`` (PyTorch Lightning). :func:`suggest` with ``method=<name>`` runs the peer's whole
  pipeline (its causal smoothing, its trimming, its NaN handling, its rule) on a **raw** curve.
- **lrkit's rule** (``method="lrkit"``, the default): smoothing *after* the run with no lag
  (Gaussian-kernel local-linear regression in log10-LR, the LOWESS family of Cleveland 1979),
  slopes against log-LR from
  the same local fit, never from the diverged tail or a non-finite loss, a band and a confidence
  statement, "no clear descent" instead of an invented number, and settings for constant, cyclical,
  1-cycle and warmup-cosine schedules. Returns a :class:`Suggestion`.

Example:
    >>> import numpy as np
    >>> lrs = np.logspace(-6, 1, 100)
    >>> x = np.log10(lrs)
    >>> losses = 2.3 - 2.0 / (1 + np.exp(-(x + 2.5) * 3)) + np.where(x > -1, (x + 1) ** 2 * 5, 0)
    >>> s = suggest(lrs, losses)
    >>> 1e-4 < s.lr < 1e-2 and s.confidence in ("high", "medium")
    True
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .errors import check_choice, check_int, check_positive, check_probability, check_range

__all__ = [
    "Suggestion",
    "suggest",
    "methods",
    "steepest",
    "minimum",
    "steep",
    "valley",
    "slide",
    "lightning",
    "ema_debiased",
    "ema_torch_lr_finder",
    "ema_lightning",
    "local_fit",
    "lrkit_rule",
    "smooth_curve",
    "suggest_all",
    "num_iter_sensitivity",
    "recommended_num_iter",
    "schedule_settings",
    "PEER_METHODS",
    "SCHEDULE_FAMILIES",
    "RECIPE_LR_FAMILY",
]

#: base_lr = max_lr / CLR_BASE_DIV for cyclical schedules: Smith 2017 ("Cyclical Learning Rates for
#: Training Neural Networks", sec. 3.3) sets base_lr to 1/3 or 1/4 of max_lr; lrkit uses 1/4.
CLR_BASE_DIV = 4.0
#: 1-cycle divisors: PyTorch ``OneCycleLR`` defaults (initial = max/25, final = initial/1e4).
ONECYCLE_DIV = 25.0
ONECYCLE_FINAL_DIV = 1e4
#: the learning-rate-valued keys of :func:`schedule_settings` (the rest are divisors)
_LR_KEYS = ("lr", "base_lr", "max_lr", "peak_lr")
#: the schedule families :func:`schedule_settings` gives settings for, and the setting of each
#: that is "the LR to pass" (:meth:`Suggestion.lr_for`)
_FAMILY_LR_KEY = {"constant": "lr", "cyclical": "max_lr", "one_cycle": "max_lr",
                  "cosine": "peak_lr", "warmup_cosine": "peak_lr"}
SCHEDULE_FAMILIES = tuple(_FAMILY_LR_KEY)
#: a training schedule family (:data:`lrkit.schedules.FAMILIES`) -> the family above whose LR
#: is its peak: annealed shapes (cosine, linear and exponential decay) take the cosine peak,
#: step and WSD (constant for most of the run) the constant LR
RECIPE_LR_FAMILY = {"constant": "constant", "step": "constant", "wsd": "constant",
                    "cosine": "cosine", "warmup_cosine": "warmup_cosine", "linear": "cosine",
                    "exponential": "cosine", "cyclic": "cyclical", "onecycle": "one_cycle"}


# ------------------------------------------------------------------------------ the result type
@dataclass(frozen=True)
class Suggestion:
    """A suggested learning rate with its band, confidence and schedule settings.

    ``lr`` is ``None`` when the curve shows no clear descent (``confidence == "none"``, and
    ``reason`` says why). ``band`` is the range of LRs considered good for a constant-LR run.
    ``max_lr``/``base_lr`` are for cyclical (CLR) schedules (base = max / 4, Smith 2017); every
    family's own settings, the 1-cycle's peak included, are in ``schedules``.
    ``schedules`` maps a schedule family to its settings (plain JSON values).
    """

    lr: float | None
    method: str
    confidence: str
    reason: str
    band: tuple[float, float] | None = None
    max_lr: float | None = None
    base_lr: float | None = None
    schedules: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    index: int | None = None

    def to_dict(self) -> dict:
        return {
            "lr": self.lr,
            "method": self.method,
            "confidence": self.confidence,
            "reason": self.reason,
            "band": list(self.band) if self.band is not None else None,
            "max_lr": self.max_lr,
            "base_lr": self.base_lr,
            "schedules": {k: dict(v) for k, v in self.schedules.items()},
            "index": self.index,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Suggestion":
        band = d.get("band")
        return cls(
            lr=d["lr"],
            method=d["method"],
            confidence=d["confidence"],
            reason=d["reason"],
            band=tuple(band) if band is not None else None,  # type: ignore[arg-type]
            max_lr=d.get("max_lr"),
            base_lr=d.get("base_lr"),
            schedules={k: dict(v) for k, v in (d.get("schedules") or {}).items()},
            index=d.get("index"),
        )

    @property
    def found(self) -> bool:
        """Whether a learning rate was suggested (False for "no clear descent")."""
        return self.lr is not None

    @classmethod
    def at(cls, lr: float, band: tuple[float, float], *, method: str, confidence: str,
           reason: str, index: int | None = None) -> "Suggestion":
        """A suggestion of ``lr`` with ``band``; the cyclical peak ``max_lr`` is the band's top,
        ``base_lr = max_lr / 4``, and each family's settings follow (:func:`schedule_settings`)."""
        high = float(band[1])
        return cls(lr, method, confidence, reason, band=(float(band[0]), high), max_lr=high,
                   base_lr=high / CLR_BASE_DIV, schedules=schedule_settings(lr, high),
                   index=index)

    def scaled(self, factor: float, *, method: str, confidence: str, reason: str
               ) -> "Suggestion":
        """This suggestion with every learning rate (``lr``, ``band``, ``max_lr``, ``base_lr``
        and the LR-valued schedule settings) multiplied by ``factor``; divisors are kept."""
        factor = check_positive("factor", factor)
        if self.lr is None:
            raise ValueError("cannot scale a suggestion without a learning rate (lr is None)")

        def mul(v: float | None) -> float | None:
            return None if v is None else float(v) * factor

        return Suggestion(
            mul(self.lr), method, confidence, reason,
            band=None if self.band is None else (self.band[0] * factor, self.band[1] * factor),
            max_lr=mul(self.max_lr), base_lr=mul(self.base_lr),
            schedules={fam: {k: (v * factor if k in _LR_KEYS else v) for k, v in st.items()}
                       for fam, st in self.schedules.items()},
            index=None)

    def lr_for(self, schedule: str) -> float | None:
        """The LR to pass for a run with schedule family ``schedule``: ``lr`` for ``"constant"``,
        the peak for ``"cosine"`` / ``"warmup_cosine"`` / ``"one_cycle"``, ``max_lr`` for
        ``"cyclical"`` (see :func:`schedule_settings`); a training schedule family of
        :data:`lrkit.schedules.FAMILIES` maps through :data:`RECIPE_LR_FAMILY`. ``None`` without
        a suggestion; a rule without schedule settings (a peer's) gives its plain ``lr``."""
        check_choice("schedule", schedule, SCHEDULE_FAMILIES + tuple(
            f for f in RECIPE_LR_FAMILY if f not in SCHEDULE_FAMILIES))
        schedule = schedule if schedule in SCHEDULE_FAMILIES else RECIPE_LR_FAMILY[schedule]
        settings = self.schedules.get(schedule)
        if self.lr is None or not settings:
            return self.lr
        return float(settings[_FAMILY_LR_KEY[schedule]])


# ----------------------------------------------------------------------------- input checking
def _curve(lrs: Any, losses: Any) -> tuple[np.ndarray, np.ndarray]:
    try:
        x = np.asarray(lrs, dtype=float).reshape(-1)
        y = np.asarray(losses, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise TypeError(f"lrs and losses must be 1-d sequences of numbers, got "
                        f"{type(lrs).__name__} and {type(losses).__name__}") from None
    if x.shape != y.shape:
        raise ValueError(f"lrs and losses must have the same length, got {x.size} and {y.size}")
    if not np.all(np.isfinite(x)) or np.any(x <= 0):
        raise ValueError("lrs must be finite and > 0, got "
                         f"{x[~(np.isfinite(x) & (x > 0))][:3].tolist()} among them")
    if x.size > 1 and np.any(np.diff(x) <= 0):
        raise ValueError("lrs must be strictly increasing (a range test sweeps upwards)")
    return x, y


def _first_nonfinite(y: np.ndarray) -> int:
    bad = np.flatnonzero(~np.isfinite(y))
    return int(bad[0]) if bad.size else y.size


# ---------------------------------------------------------------------- the peers' smoothing
def ema_debiased(losses: Any, beta: float = 0.98) -> np.ndarray:
    """fastai's ``AvgSmoothLoss`` (``fastai/learner.py``), the loss the fastai finder records.

    ``m_t = beta m_{t-1} + (1 - beta) loss_t`` (m_0 = 0), reported as ``m_t / (1 - beta^t)`` with
    t = 1, 2, ... the number of batches seen. Causal: it lags a falling curve.
    """
    y = np.asarray(losses, dtype=float)
    out = np.empty_like(y)
    m = 0.0
    for t, v in enumerate(y, start=1):
        m = beta * m + (1.0 - beta) * v
        out[t - 1] = m / (1.0 - beta**t)
    return out


def ema_lightning(losses: Any, beta: float = 0.98) -> np.ndarray:
    """Lightning's ``_LRCallback.on_train_batch_end`` smoothing
    (``src/lightning/pytorch/tuner/lr_finder.py``): ``avg = beta avg + (1 - beta) loss``,
    ``smoothed = avg / (1 - beta^(global_step + 1))`` where ``global_step`` has already been
    incremented for the batch, i.e. exponent ``t + 1`` for the t-th (1-based) batch of a fresh run.
    """
    y = np.asarray(losses, dtype=float)
    out = np.empty_like(y)
    m = 0.0
    for t, v in enumerate(y, start=1):
        m = beta * m + (1.0 - beta) * v
        out[t - 1] = m / (1.0 - beta ** (t + 1))
    return out


def ema_torch_lr_finder(losses: Any, smooth_f: float = 0.05) -> np.ndarray:
    """torch-lr-finder's ``range_test`` smoothing (``torch_lr_finder/lr_finder.py``):
    ``s_0 = loss_0``, ``s_t = smooth_f loss_t + (1 - smooth_f) s_{t-1}`` (not debiased)."""
    y = np.asarray(losses, dtype=float)
    out = np.empty_like(y)
    for t, v in enumerate(y):
        out[t] = v if t == 0 else smooth_f * v + (1.0 - smooth_f) * out[t - 1]
    return out


# --------------------------------------------------------------------------- the peers' rules
def steepest(lrs: Any, losses: Any) -> int | None:
    """torch-lr-finder ``LRFinder.plot(suggest_lr=True)``: index of ``argmin(np.gradient(losses))``.

    Input: its smoothed losses, trimmed ``[skip_start=10 : -skip_end=5]``. The gradient is taken
    against the *index*, and NaN is not removed (``argmin`` then returns the first NaN: the
    blow-up point), exactly as the peer does. Returns an index into the given arrays.
    """
    y = np.asarray(losses, dtype=float)
    if y.size < 2:
        return None
    return int(np.argmin(np.gradient(y)))


def minimum(lrs: Any, losses: Any) -> float | None:
    """fastai ``minimum`` (``fastai/callback/schedule.py``): ``lrs[argmin(losses)] / 10``.

    Input: fastai's debiased-EMA losses, trimmed ``[num_it//10 : -5]`` and cut at the first NaN.
    """
    x = np.asarray(lrs, dtype=float)
    y = np.asarray(losses, dtype=float)
    if y.size == 0:
        return None
    return float(x[int(np.argmin(y))]) / 10.0


def steep(lrs: Any, losses: Any) -> float | None:
    """fastai ``steep``: ``lrs[argmin(diff(losses) / diff(log(lrs)))]`` (left point of the
    steepest segment). Input as for :func:`minimum`."""
    x = np.asarray(lrs, dtype=float)
    y = np.asarray(losses, dtype=float)
    if y.size < 2:
        return None
    grads = (y[1:] - y[:-1]) / (np.log(x[1:]) - np.log(x[:-1]))
    return float(x[int(np.argmin(grads))])


def valley(lrs: Any, losses: Any) -> float | None:
    """fastai ``valley`` (fastai's default): the longest strictly decreasing subsequence of the
    losses, then the point 1/3 + 1/6 of the way along it: ``idx = start + int(len/3) +
    int(len/6)``, where the sequence's end is the first point reaching the longest length and
    ``start = end - length``. fastai's dynamic programme is O(n^2) (44 s at 20,000 points); the
    lengths come here from patience sorting in O(n log n) (Fredman 1975), equal on every input
    (tested against the quadratic loop, ties included). Input as for :func:`minimum`."""
    x = np.asarray(lrs, dtype=float)
    y = np.asarray(losses, dtype=float)
    if y.size == 0:
        return None
    tails: list[float] = []  # tails[k]: -(the largest last loss of a decreasing run of k + 1)
    best, max_start, max_end = 1, 0, 0
    for i, v in enumerate((-y).tolist()):
        if v != v:  # NaN compares false with everything: a run of its own
            length = 1
        else:
            k = bisect.bisect_left(tails, v)
            if k == len(tails):
                tails.append(v)
            else:
                tails[k] = v
            length = k + 1
        if length > best:
            best, max_end, max_start = length, i, i - length
    sections = (max_end - max_start) / 3
    idx = max_start + int(sections) + int(sections / 2)
    return float(x[idx])


def slide(lrs: Any, losses: Any, *, lr_diff: int = 15, thresh: float = 0.005,
          adjust_value: float = 1.0) -> float | None:
    """fastai ``slide``: walk a window of ``lr_diff`` points leftwards from the end while the
    index-gradients at its two ends differ by more than ``thresh``; suggest the LR at the window's
    left end (times ``adjust_value``). Input as for :func:`minimum`."""
    x = np.asarray(lrs, dtype=float)
    y = np.asarray(losses, dtype=float)
    if y.size < max(2, lr_diff + 1):
        return None
    grad = np.gradient(y)
    r_idx = -1
    l_idx = r_idx - lr_diff
    local_min_lr = x[l_idx]
    while l_idx >= -y.size and abs(grad[r_idx] - grad[l_idx]) > thresh:
        local_min_lr = x[l_idx]
        r_idx -= 1
        l_idx -= 1
    return float(local_min_lr) * adjust_value


def lightning(lrs: Any, losses: Any) -> int | None:
    """Lightning ``_LRFinder.suggestion``: the steepest negative gradient of the loss against the
    *linear* LR, ``argmin(torch.gradient(losses, spacing=[lrs]))`` over the finite points of
    ``[skip_begin=10 : -skip_end=1]``. Input: Lightning's smoothed losses, untrimmed (this
    function trims and drops non-finite points itself). Returns an index into the given arrays.
    """
    x = np.asarray(lrs, dtype=float)
    y = np.asarray(losses, dtype=float)
    idx = np.arange(y.size)[10:-1]
    keep = np.isfinite(y[10:-1])
    idx = idx[keep]
    if idx.size < 2:
        return None
    # np.gradient with coordinates = torch.gradient(spacing=[coords]) (second-order interior,
    # first-order edges)
    g = np.gradient(y[idx], x[idx])
    return int(idx[int(np.argmin(g))])


#: the peers' rules, by the names lrkit uses
PEER_METHODS = ("steepest", "minimum", "steep", "valley", "slide", "lightning")


def methods() -> tuple[str, ...]:
    """Names accepted by :func:`suggest`: ``"lrkit"`` (the default) and the peers' rules."""
    return ("lrkit",) + PEER_METHODS


def _peer(method: str, lrs: np.ndarray, raw: np.ndarray, num_iter: int | None) -> Suggestion:
    """Run a peer's whole pipeline on a raw curve and wrap its number."""
    lr: float | None = None
    index: int | None = None
    if method == "steepest":  # torch-lr-finder: smooth_f=0.05 EMA, plot(skip_start=10, skip_end=5)
        s = ema_torch_lr_finder(raw)
        lo, hi = 10, s.size - 5
        if hi - lo >= 2:
            i = steepest(lrs[lo:hi], s[lo:hi])
            if i is not None:
                index = lo + i
                lr = float(lrs[index])
    elif method == "lightning":
        s = ema_lightning(raw)
        index = lightning(lrs, s)
        lr = float(lrs[index]) if index is not None else None
    else:  # fastai lr_find: debiased EMA, [num_it//10 : -5], cut at first NaN
        s = ema_debiased(raw)
        n_it = num_iter if num_iter is not None else s.size
        # fastai does not stop on a NaN loss (NaN > 4 x best is False): it trims the last 5 of
        # its full num_it record, then cuts at the first NaN, so every finite point before a
        # NaN in a sweep that stopped there counts (trimming 5 from the shorter record dropped
        # 4 of them: minimum 0.42-0.56x fastai's on NaN-tailed curves)
        nan_end = s.size > 0 and not math.isfinite(float(raw[-1]))
        lo, hi = n_it // 10, (min(s.size, n_it - 5) if nan_end else s.size - 5)
        x, y = lrs[lo:max(lo, hi)], s[lo:max(lo, hi)]
        cut = _first_nonfinite(y)
        x, y = x[:cut], y[:cut]
        rule: Callable[..., float | None] = {"minimum": minimum, "steep": steep,
                                             "valley": valley, "slide": slide}[method]
        lr = rule(x, y) if y.size else None
    if lr is None or not math.isfinite(lr):
        return Suggestion(None, method, "none", f"{method}: too few points for the peer's rule")
    return Suggestion(lr, method, "unknown",
                      f"{method}: the peer's rule (no band or confidence)", index=index)


# ------------------------------------------------------------------------ lrkit's own rule
def _start_block(n: int) -> int:
    """Points in a curve's starting block, its first tenth and at least 3: the initial level of
    :func:`_blowup`, and where :func:`lrkit_rule` does not read a minimum."""
    return max(3, n // 10)


def _blowup(y: np.ndarray) -> int:
    """Length of the curve before it blows up: the first point, once the loss has dropped by
    more than 6 sigma, whose raw loss climbs above the initial level (median of the first 10% of
    points, at least 3, + 2 sigma) by a quarter of the drop seen so far; sigma is the robust
    step-to-step noise (MAD of first differences / sqrt 2). Also (for noisy descents that never
    clear 6 sigma) the first point from which no raw loss comes back below the initial level,
    unless that is only the last point. A rule on raw values, so the diverged tail never reaches
    the smoother. A one-point spike above the start counts: reading past spikes that the loss
    recovers from moved one real suggestion, 6x away from the best LR (an Adam instability,
    cancer-small seed 1; ``benchmarks/RESULTS.md``, eighteenth round)."""
    k0 = _start_block(y.size)
    if y.size <= k0:
        return y.size
    run_min = np.minimum.accumulate(y)
    d = np.diff(y)
    sigma = 1.4826 * float(np.median(np.abs(d - np.median(d)))) / math.sqrt(2.0)
    top = float(np.median(y[:k0])) + 2.0 * sigma
    drop = top - run_min[k0:]
    over = np.flatnonzero((drop > 6 * sigma) & (y[k0:] > top + 0.25 * drop))
    n = int(k0 + over[0]) if over.size else y.size
    # a noisy descent may never clear 6 sigma: then cut where the loss leaves its starting level
    # for good (from there on no raw loss comes back below it), the diverged tail
    never_back = np.flatnonzero(np.minimum.accumulate(y[::-1])[::-1][k0:] > top)
    if never_back.size and k0 + int(never_back[0]) < y.size - 1:
        n = min(n, k0 + int(never_back[0]))
    return n


#: :func:`local_fit` works on at most this many points: a longer curve is first averaged in
#: equal-count bins of consecutive points and the fit interpolated back (its n x n weights took
#: ~0.6 GB at num_iter=4,000 and asked for 7 TiB at 10^6, after the whole sweep had run). Every
#: default and benchmarked range test (num_iter <= 400) stays below it, exactly as before.
MAX_FIT_POINTS = 2048


def local_fit(x: Any, y: Any, *, bandwidth: float, robust_iters: int = 2
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Robust local-linear regression (LOWESS, Cleveland 1979) with a Gaussian kernel.

    At each x_i, minimise ``sum_j w_ij r_j (y_j - a - b (x_j - x_i))^2`` with
    ``w_ij = exp(-((x_j - x_i)/bandwidth)^2 / 2)`` and bisquare robustness weights ``r_j`` from the
    residuals (6 x median absolute residual, at least 1% of the range of y). Returns
    ``(a, b, n_eff)``: the smoothed value, the slope dy/dx (zero-phase: no lag, unlike a causal
    EMA), and the effective number of points. Beyond :data:`MAX_FIT_POINTS` points the fit runs
    on bin means (``n_eff`` still counts the original points).
    """
    check_positive("bandwidth", bandwidth)
    check_int("robust_iters", robust_iters, minimum=0)
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.size > MAX_FIT_POINTS:
        order = np.argsort(x, kind="stable")
        bins = np.array_split(order, MAX_FIT_POINTS)
        count = np.array([ix.size for ix in bins], dtype=float)
        xb = np.array([x[ix].mean() for ix in bins])
        yb = np.array([y[ix].mean() for ix in bins])
        a, b, n_eff = local_fit(xb, yb, bandwidth=bandwidth, robust_iters=robust_iters)
        return (np.interp(x, xb, a), np.interp(x, xb, b),
                np.interp(x, xb, n_eff) * float(count.mean()))
    d = x[None, :] - x[:, None]
    k = np.exp(-0.5 * (d / bandwidth) ** 2)
    r = np.ones_like(y)
    a = b = None
    for it in range(robust_iters + 1):
        w = k * r[None, :]
        s0 = w.sum(1)
        s1 = (w * d).sum(1)
        s2 = (w * d * d).sum(1)
        t0 = (w * y[None, :]).sum(1)
        t1 = (w * d * y[None, :]).sum(1)
        det = s0 * s2 - s1 * s1
        det = np.where(np.abs(det) < 1e-300, np.nan, det)
        a = (s2 * t0 - s1 * t1) / det
        b = (s0 * t1 - s1 * t0) / det
        a = np.where(np.isfinite(a), a, t0 / s0)
        b = np.where(np.isfinite(b), b, 0.0)
        if it == robust_iters:
            break
        res = y - a
        # bisquare scale 6 x median |residual| (Cleveland 1979), floored at 1% of the data's
        # range so that a noise-free curve's kinks are not taken for outliers
        scale = max(6.0 * float(np.median(np.abs(res))), 0.01 * float(np.ptp(y)))
        if scale <= 0:
            break
        u = res / scale
        r = np.where(np.abs(u) < 1, (1 - u * u) ** 2, 0.0)
    w = k * r[None, :]
    n_eff = w.sum(1) ** 2 / np.maximum((w * w).sum(1), 1e-300)
    return a, b, n_eff


def schedule_settings(lr: float, high: float) -> dict[str, dict[str, float]]:
    """Settings for each schedule family from the constant-LR suggestion ``lr`` and the band's
    upper edge ``high``.

    - constant: ``lr``.
    - cyclical (Smith 2017 CLR, triangular): ``max_lr = high``, ``base_lr = max_lr / 4``.
    - one_cycle (Smith 2018; PyTorch ``OneCycleLR``): peak ``max_lr = sqrt(lr * high)``, as
      cosine's, ``div_factor = 25``, ``final_div_factor = 1e4``. Both spend most of the run
      annealing and average about half their peak. It was ``high``, Smith's reading (the
      largest LR at which the loss still falls): on 18 random tasks with a 1-cycle recipe
      (``benchmarks/heldout_random_tasks.py``), a full run at it was a median +19.9% from the
      grid's best (twice at chance: deep ReLU nets whose full runs cannot hold a peak at the
      band's top), at ``sqrt(lr * high)`` +9.7% (10 tasks better, 2 worse by over 1%).
    - cosine / warmup_cosine: peak ``sqrt(lr * high)`` (an annealed run tolerates a peak above the
      best constant LR; the geometric middle of the two is the measured compromise).
    """
    peak = math.sqrt(lr * high)
    return {
        "constant": {"lr": lr},
        "cyclical": {"base_lr": high / CLR_BASE_DIV, "max_lr": high},
        "one_cycle": {"max_lr": peak, "div_factor": ONECYCLE_DIV,
                      "final_div_factor": ONECYCLE_FINAL_DIV},
        "cosine": {"peak_lr": peak},
        "warmup_cosine": {"peak_lr": peak},
    }


def smooth_curve(lrs: Any, losses: Any, *, bandwidth: float | None = None) -> np.ndarray:
    """The zero-lag smoothed curve lrkit's rule reads (NaN after a non-finite loss or the
    blow-up): :func:`local_fit` in log10-LR with bandwidth ``max(2.5 x median spacing, 0.4)``
    and no robustness weights."""
    x_lr, y_all = _curve(lrs, losses)
    out = np.full(y_all.size, np.nan)
    n_ok = _blowup(y_all[:_first_nonfinite(y_all)])
    if n_ok >= 3:
        x = np.log10(x_lr[:n_ok])
        h = bandwidth if bandwidth is not None else _default_bandwidth(x)
        out[:n_ok] = local_fit(x, y_all[:n_ok], bandwidth=h, robust_iters=ROBUST_ITERS)[0]
    return out


def _default_bandwidth(x: np.ndarray) -> float:
    return max(2.5 * float(np.median(np.diff(x))), BANDWIDTH_DECADES)


#: smoothing bandwidth floor of lrkit's rule, in decades of LR (Gaussian kernel sigma): a fixed
#: width in log-LR, so the smoothed curve does not depend on the sweep's resolution
BANDWIDTH_DECADES = 0.4
#: the valley floor: the points whose smoothed loss is within this fraction of the drop of the minimum
FLOOR_FRAC = 1.0 / 3.0
#: a smoothed fall of more than this fraction of the starting loss always counts as a descent
BIG_DROP = 0.2
#: lrkit's suggestion = (geometric centre of the valley floor) / LRKIT_K
LRKIT_K = 4.0
#: robustness iterations of lrkit's smoother: none. Near the blow-up a range-test curve turns
#: erratic, and its upward spikes are the signal (instability), not outliers: bisquare weights
#: discard them and stretch the valley floor into the unstable region (on mnist5k the
#: suggestion then wandered 9x across seeds instead of 1.3x; benchmarks/design_rule.py)
ROBUST_ITERS = 0


def lrkit_rule(lrs: Any, losses: Any, *, bandwidth: float | None = None, k: float = LRKIT_K,
               floor: float = FLOOR_FRAC, slope_z: float = 3.0) -> Suggestion:
    """lrkit's default rule on a **raw** (unsmoothed) range-test curve: the centre of the valley
    floor divided by ``k``.

    1. Keep the points before the first non-finite loss and before the blow-up (the first raw
       loss that climbs back above its start by a quarter of the drop seen so far, see
       ``_blowup``); x = log10(lr).
    2. Smooth with :func:`local_fit` (zero-phase, bandwidth ``max(2.5 x median spacing, 0.4)``
       decades unless given, no robustness weights: see ``ROBUST_ITERS``): smoothed loss s(x),
       slope g(x) = ds/dlog10(lr).
    3. x_min = argmin s; drop D = max(s[:x_min]) - s(x_min). "No clear descent" (``lr=None``)
       unless D > 6 standard errors of s(x_min) and 1% of the starting loss, and the slope is below
       ``-slope_z`` standard errors on two consecutive points before x_min.
    4. The valley floor: the contiguous run of points around x_min with ``s <= s(x_min) + floor D``
       (floor = 1/3), from x_lo to x_hi. Its geometric centre ``c = (x_lo + x_hi) / 2`` is a
       robust location of the minimum (the argmin of a noisy flat bottom wanders; the floor's
       centre does not), and the suggestion is
       ``lr = 10^c / k`` (k = 4), never above ``10^x_min / 3``
       -- the zero-lag analogue of fastai's "minimum / 10" (fastai's EMA lag moves its minimum to a
       higher LR, so the lag-free divisor is smaller). Band: ``[lr / 2, 2 lr]`` (= ``[10^c/8,
       10^c/2]``), at most x_min; ``max_lr`` (the cyclical peak) is the band's top.
       The constants (bandwidth 0.4, floor 1/3, k = 4, no robustness weights) were chosen on
       lrkit's built-in tasks against a grid-search oracle (``benchmarks/design_rule.py``, with
       a leave-one-task-out check for k).
    5. Confidence: "low" when the loss never rises after its minimum (still falling over the
       sweep's last decade, or flat to its end: either way no blow-up bounds the band; raise
       end_lr) or the descent starts at the sweep's first point (lower start_lr); "high" when
       the drop is more than 20x its standard error and the valley floor is at most 1.5
       decades wide; "medium" otherwise (a shallow or wide, ill-located floor).
    """
    k = check_range("k", k, 1.0, math.inf)
    floor = check_probability("floor", floor)
    if bandwidth is not None:
        bandwidth = check_positive("bandwidth", bandwidth)
    x_lr, y_all = _curve(lrs, losses)
    n_ok = _first_nonfinite(y_all)
    method = "lrkit"
    if n_ok < 8:
        return Suggestion(None, method, "none",
                          f"only {n_ok} finite loss values before the curve stopped; need >= 8 "
                          "(lower start_lr or raise num_iter)")
    n_ok = _blowup(y_all[:n_ok])
    x = np.log10(x_lr[:n_ok])
    y = y_all[:n_ok]
    h = bandwidth if bandwidth is not None else _default_bandwidth(x)
    s, g, n_eff = local_fit(x, y, bandwidth=h, robust_iters=ROBUST_ITERS)
    resid = y - s
    sigma = 1.4826 * float(np.median(np.abs(resid - np.median(resid))))
    i_min = int(np.argmin(s))
    k0 = _start_block(n_ok)
    if i_min < k0 < n_ok // 2:
        # the lowest smoothed point in the sweep's first tenth: the local-linear fit at the
        # sweep's edge extrapolates from one side, and a few low first losses pull it under the
        # plateau that follows (a random diabetes task under Adam: first losses 0.65, 0.56,
        # then ~1.1 for four decades, then 0.4-0.7 before the blow-up; read as "falls by 0").
        # The minimum is read after that block; a curve that is lowest there anyway is flat or
        # falls from the start, and the tests below say so
        i_min = k0 + int(np.argmin(s[k0:]))
    i_top = int(np.argmax(s[: i_min + 1]))
    drop = float(s[i_top] - s[i_min])
    se = sigma / math.sqrt(max(float(n_eff[i_min]), 1.0))
    scale = max(abs(float(s[0])), 1e-12)
    # a fall of more than BIG_DROP of the starting loss is a descent whatever its slope or
    # noise: a slow, noisy descent over several decades is still one
    big = drop > BIG_DROP * scale
    advice = ("raise num_iter (more, less noisy points), or pass val_loader / confirm=True to "
              "choose by held-out loss instead")
    flat = not big and (drop <= 6 * se or drop <= 0.01 * scale)
    # which test a flat curve failed: the noise, or (a fall the noise cannot explain) its size
    # against the starting loss, which a loss with a large constant offset fails
    why_flat = ("" if not flat else ": within 6x the noise" if drop <= 6 * se else
                f": {drop / se:.3g}x the noise but under 1% of the starting loss, as a loss "
                f"with a large constant offset reads (subtract the offset)" if se > 0 else
                ": under 1% of the starting loss, as a loss with a large constant offset reads "
                "(subtract the offset)")
    # (the blow-up cut keeps only points up to the last that returns below the start, so
    # what is left never climbs away: flat, or falling by less than the noise; a blow-up in
    # the sweep's first fifth is a range that starts too high, the message below)
    if (flat or i_min == 0) and 0.2 * y_all.size <= n_ok < y_all.size:
        # flat until it blows up: a model the data cannot improve at any LR of the sweep, as
        # an already-trained one being fine-tuned (seen: a pretrained MLP on shifted digits)
        return Suggestion(None, method, "none",
                          f"no clear descent: the smoothed loss stays flat (it falls by "
                          f"{drop:.3g}, noise {se:.2g}, start {s[0]:.4g}{why_flat}) until it "
                          f"blows up at "
                          f"{float(x_lr[n_ok]):.3g}, as for a model that is already trained "
                          f"(fine-tuning): LRs well below that point may all train; choose "
                          f"among them by held-out loss (val_loader / confirm=True), or start "
                          f"about a decade below it. A model that is not trained yet and "
                          f"stays flat cannot train at these settings: check it before the LR "
                          f"(vanishing gradients in a deep net without normalisation, frozen "
                          f"layers, labels)")
    if i_min == 0 or flat:
        return Suggestion(None, method, "none",
                          f"no clear descent: the smoothed loss falls by {drop:.3g} "
                          f"(noise {se:.2g}, start {s[0]:.4g}"
                          f"{why_flat}); lower start_lr if it starts "
                          f"falling at once, raise end_lr if it never does, or {advice}")
    # slope standard error of the local-linear fit: sigma / (h sqrt(n_eff)) (Gaussian kernel)
    se_slope = sigma / (h * np.sqrt(np.maximum(n_eff, 1.0)))
    neg = (g <= -slope_z * se_slope)[i_top:i_min + 1]
    runs = np.flatnonzero(neg[1:] & neg[:-1])
    if runs.size == 0 and not big:
        return Suggestion(None, method, "none", "no clear descent: the slope of the smoothed loss "
                          f"is not clearly negative (below -{slope_z:g} standard errors) on two "
                          f"consecutive points before its minimum; {advice}")
    # where the clear descent starts (for a slow, big fall: where it leaves its top)
    j_desc = i_top + int(runs[0]) if runs.size else i_top
    # the valley floor: contiguous points around the minimum within `floor` x drop of it
    level = float(s[i_min]) + floor * drop
    lo = i_min
    while lo > 0 and s[lo - 1] <= level:
        lo -= 1
    hi = i_min
    while hi + 1 < n_ok and s[hi + 1] <= level:
        hi += 1
    c = 0.5 * (x[lo] + x[hi])
    x_sugg = min(c - math.log10(k), x[i_min] - math.log10(3.0))
    x_high = min(x_sugg + math.log10(2.0), x[i_min])
    band = (float(10.0 ** (x_sugg - math.log10(2.0))), float(10.0**x_high))
    lr = float(10.0**x_sugg)
    rises_after = n_ok < y_all.size or (i_min < n_ok - 1 and float(s[-1] - s[i_min]) > 2 * se)
    strength = drop / se
    width = float(x[hi] - x[lo])
    if not rises_after or j_desc <= 1:
        conf = "low"
        if rises_after:
            why = "the descent starts at the sweep's first point: lower start_lr"
        elif float(s[int(np.searchsorted(x, x[n_ok - 1] - 1.0))] - s[n_ok - 1]) > 2 * se:
            # the smoothed loss fell by more than its noise over the sweep's last decade
            why = "the loss was still falling at the end of the sweep: raise end_lr"
        else:  # a floor that never rose: the band has no blow-up above it to stand on
            why = ("the loss flattened and never rose before the sweep's end (no blow-up "
                   "bounds the band from above): raise end_lr")
    elif strength > 20 and width <= 1.5:
        conf = "high"
        why = (f"clear descent ({drop:.3g}, {strength:.0f}x the noise) to a valley floor "
               f"{width:.2f} decades wide, then a rise")
    else:
        conf = "medium"
        why = (f"descent of {drop:.3g} is {strength:.0f}x the noise; valley floor "
               f"{width:.2f} decades wide")
    return Suggestion.at(lr, band, method=method, confidence=conf, reason=why,
                         index=int(np.argmin(np.abs(x - x_sugg))))


# ----------------------------------------------------------------------------- entry point
def suggest(lrs: Any, losses: Any, method: str = "lrkit", *, num_iter: int | None = None
            ) -> Suggestion:
    """Suggest a learning rate from a **raw** range-test curve with rule ``method``.

    ``losses`` are the per-step training (or validation) losses as recorded, not smoothed: each
    peer's rule gets the peer's own smoothing and trimming first (fastai: debiased EMA 0.98 and
    ``[num_iter//10 : -5]``; Lightning: its EMA and ``[10 : -1]``; torch-lr-finder: EMA 0.05 and
    ``[10 : -5]``). ``num_iter`` is the planned sweep length (fastai trims by it; default: the
    curve's length). See :func:`methods` for the names.
    """
    check_choice("method", method, methods())
    x, y = _curve(lrs, losses)
    if num_iter is not None:
        check_int("num_iter", num_iter, minimum=1)
    if method == "lrkit":
        return lrkit_rule(x, y)
    return _peer(method, x, y, num_iter)


def suggest_all(lrs: Any, losses: Any, *, num_iter: int | None = None) -> dict[str, Suggestion]:
    """Every rule of :func:`methods` on the same raw curve."""
    return {m: suggest(lrs, losses, m, num_iter=num_iter) for m in methods()}


def num_iter_sensitivity(lrs: Any, losses: Any, *, method: str = "lrkit",
                         factors: Sequence[int] = (2, 4)) -> dict[str, Any]:
    """How the suggestion moves when the curve is sampled ``factor`` times more coarsely.

    Thinning keeps every ``factor``-th point (a stand-in for a sweep with ``num_iter / factor``
    points over the same range). Returns the LR per factor and the largest ratio max/min among
    them and the full-resolution suggestion (1.0 = unmoved). This measures the rule's sensitivity
    to resolution and noise, not the training-dynamics shift of a shorter sweep.
    """
    x, y = _curve(lrs, losses)
    base = suggest(x, y, method).lr
    out: dict[str, Any] = {"1": base}
    vals = [base] if base is not None else []
    for f in factors:
        check_int("factor", f, minimum=2)
        lr = suggest(x[::f], y[::f], method).lr if x[::f].size >= 2 else None
        out[str(f)] = lr
        if lr is not None:
            vals.append(lr)
    out["spread"] = float(max(vals) / min(vals)) if len(vals) >= 2 else None
    return out


def recommended_num_iter(*, train_size: int | None = None, batch_size: int | None = None,
                         accumulation_steps: int = 1) -> int:
    """A range-test budget from the data: one epoch of optimizer steps, at least 100 (the peers'
    default) and at most 500 (Smith 2017 sweeps over a few epochs; beyond ~500 points the
    suggestion no longer moves on our tasks). Without data sizes: 100."""
    if train_size is None or batch_size is None or train_size <= 0:
        return 100
    check_int("train_size", train_size, minimum=1)
    check_int("batch_size", batch_size, minimum=1)
    check_int("accumulation_steps", accumulation_steps, minimum=1)
    epoch = math.ceil(train_size / (batch_size * accumulation_steps))
    return int(min(500, max(100, epoch)))
