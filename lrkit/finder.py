"""The LR range test (Smith 2015/2017, "Cyclical Learning Rates for Training Neural Networks").

Train for ``num_iter`` steps while the learning rate grows from ``start_lr`` to ``end_lr``
(exponentially by default: ``lr_t = start_lr (end_lr/start_lr)^(t/(num_iter-1))``), record the loss
at each step, stop early when a *causal* debiased EMA of the loss passes ``diverge_factor`` x its best
value (or the loss turns non-finite), then read a suggestion from the curve with
:mod:`lrkit.suggest` (post-hoc, zero-lag smoothing). The model, optimizer, scheduler, GradScaler,
data-loader generators and global RNGs are put back exactly afterwards (snapshot in CPU memory).

All training goes through :func:`lrkit.train.fit` (the one loop); the range test is a schedule plus
a recording/stopping callback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ._json import brief_repr, finite_or_none, read_object
from .errors import check_choice, check_group_lrs, check_int, check_positive, check_range

# not `from . import suggest`: the package's lazy attribute `lrkit.suggest` is the function
_suggest = importlib.import_module("lrkit.suggest")
Suggestion = _suggest.Suggestion

__all__ = ["find_lr", "RangeTestResult", "sweep_lrs", "sweep_plans", "cli_find", "add_find_arguments"]


# ------------------------------------------------------------------------------------ sweep
def sweep_lrs(start_lr: float, end_lr: float, num_iter: int, mode: str = "exp") -> np.ndarray:
    """The range test's LRs: ``start (end/start)^(t/(n-1))`` ("exp") or
    ``start + (end - start) t/(n-1)`` ("linear") for t = 0..n-1 (both ends included)."""
    start_lr = check_positive("start_lr", start_lr)
    end_lr = check_positive("end_lr", end_lr)
    if end_lr <= start_lr:
        raise ValueError(f"end_lr must be > start_lr ({start_lr!r}), got {end_lr!r}")
    num_iter = check_int("num_iter", num_iter, minimum=2)
    mode = check_choice("mode", mode, ("exp", "linear"))
    t = np.arange(num_iter) / (num_iter - 1)
    if mode == "exp":
        return start_lr * (end_lr / start_lr) ** t
    return start_lr + (end_lr - start_lr) * t


#: steps of one sweep: a longer ``num_iter`` buys repeats of a sweep this long, not a denser
#: sweep (see :func:`sweep_plans`); the rule's constant was fitted on sweeps of this length
SWEEP_STEPS = 100
#: a suggestion that moves more than this factor when the curve is thinned 2x and 4x is read off
#: noise: the result's note says so, and a "high" / "medium" confidence becomes "low"
THIN_SPREAD = 2.0


def sweep_plans(start_lr: float, end_lr: float, num_iter: int, mode: str = "exp"
                ) -> list[np.ndarray]:
    """The range test's sweeps: ``R = max(1, num_iter // SWEEP_STEPS)`` sweeps of
    ``U = num_iter // R`` steps over the same range (one sweep of ``num_iter`` steps when it is
    shorter than ``SWEEP_STEPS``), sweep ``r`` offset by ``r / R`` of a grid step (its last
    point, past ``end_lr``, dropped), each trained from the same starting point on the next
    batches of the data.

    Why: the LR where a sweep's loss falls, and where it blows up, depend on how many steps it
    trains at each LR (a denser sweep trains longer and blows up earlier; measured 2-5x drift of
    every rule between 50 and 400 steps). Repeating a fixed-density sweep keeps that the same
    for every ``num_iter``: every rule reads each sweep on its own and the suggestions are
    combined by their geometric mean (so a larger ``num_iter`` buys less noise, not a moved
    curve), while the offsets interleave the repeats into one curve ``R`` times finer for the
    plot. Below ``SWEEP_STEPS`` a sweep is shorter, trains less per LR, and its suggestion can
    move: 100 steps or more is the recommended budget.
    """
    base = sweep_lrs(start_lr, end_lr, num_iter, mode)
    reps = max(1, num_iter // SWEEP_STEPS)
    if reps == 1:
        return [base]
    u = num_iter // reps
    t = np.arange(u, dtype=float)
    plans = []
    for r in range(reps):
        f = (t + r / reps) / (u - 1)
        f = f[f <= 1.0 + 1e-12]
        if mode == "exp":
            plans.append(start_lr * (end_lr / start_lr) ** f)
        else:
            plans.append(start_lr + (end_lr - start_lr) * f)
    return plans


class _Sweep:
    """A picklable callable schedule ``step -> lr`` for the sweep."""

    def __init__(self, lrs: np.ndarray) -> None:
        self.lrs = [float(v) for v in lrs]

    def __call__(self, step: int) -> float:
        return self.lrs[min(int(step), len(self.lrs) - 1)]


# ----------------------------------------------------------------------------------- result
def _enc(values: Sequence[float]) -> list:
    """JSON has no NaN/inf: encode them as strings."""
    out: list = []
    for v in values:
        v = float(v)
        out.append(v if math.isfinite(v) else ("NaN" if v != v else ("Infinity" if v > 0
                                                                          else "-Infinity")))
    return out


def _dec(values: Sequence[Any]) -> tuple[float, ...]:
    return tuple(float(v) if not isinstance(v, str) else float(v.replace("Infinity", "inf"))
                 for v in values)


@dataclass(frozen=True)
class RangeTestResult:
    """A range-test curve with its suggestion(s).

    ``lrs``/``losses`` are as recorded (group 0's LR; the mean loss over accumulation micro-batches,
    averaged across DDP ranks; validation loss when ``loss_kind == "val"``); ``smoothed`` is the
    zero-lag post-hoc smoothing used by the suggestion (NaN after a non-finite loss).
    ``stopped_at`` is the index of the last step taken, ``stop_reason`` one of ``"completed"``,
    ``"diverged"``, ``"nan"``. ``suggestions`` holds every rule of :func:`lrkit.suggest.methods`
    on the same curve; ``num_iter_advice`` how the suggestion moves with the sweep's resolution and a
    recommended ``num_iter`` (a suggestion that moves more than ``THIN_SPREAD`` x when the curve is
    thinned 2x and 4x has confidence "low" at most); ``cost_steps`` the optimizer steps spent
    (range test + confirm runs).
    """

    lrs: tuple[float, ...]
    losses: tuple[float, ...]
    smoothed: tuple[float, ...]
    stopped_at: int
    stop_reason: str
    suggestion: Suggestion
    suggestions: Mapping[str, Suggestion] = field(default_factory=dict)
    num_iter_advice: Mapping[str, Any] = field(default_factory=dict)
    cost_steps: int = 0
    settings: Mapping[str, Any] = field(default_factory=dict)
    confirm: Mapping[str, Any] | None = None
    wall_time: float = 0.0

    @property
    def lr(self) -> float | None:
        """The suggested constant learning rate (``None`` for "no clear descent"); for another
        schedule's peak, :attr:`schedule_lr` or ``suggestion.lr_for(family)``."""
        return self.suggestion.lr

    def __repr__(self) -> str:  # the suggestion and the sweep's size, not its every point
        s = self.suggestion
        extra = {} if self.confirm is None else {"schedule_lr": self.schedule_lr}
        return brief_repr("RangeTestResult", lr=s.lr, **extra, confidence=s.confidence,
                          band=s.band, method=s.method, points=len(self.lrs),
                          stop_reason=self.stop_reason, cost_steps=self.cost_steps)

    @property
    def schedule_lr(self) -> float | None:
        """The LR to give the run confirm was asked about: the peak of the schedule it
        confirmed (``confirm["schedule"]``: ``confirm["winner"]``, which is
        ``suggestion.lr_for(that family)``; under cosine or one-cycle it sits above :attr:`lr`,
        the constant-LR equivalent); without confirm, :attr:`lr`."""
        if self.confirm is None or self.suggestion.lr is None:
            return self.lr
        return float(self.confirm["winner"])

    def to_dict(self) -> dict:
        """The result as plain JSON-ready values: the curve's non-finite values as ``"NaN"`` /
        ``"Infinity"`` strings (read back as floats), any other non-finite number (a diverged
        confirm run's metric, its val curve) as ``None``."""
        return finite_or_none({
            "lrs": _enc(self.lrs),
            "losses": _enc(self.losses),
            "smoothed": _enc(self.smoothed),
            "stopped_at": self.stopped_at,
            "stop_reason": self.stop_reason,
            "suggestion": self.suggestion.to_dict(),
            "suggestions": {k: v.to_dict() for k, v in self.suggestions.items()},
            "num_iter_advice": dict(self.num_iter_advice),
            "cost_steps": self.cost_steps,
            "settings": dict(self.settings),
            "confirm": dict(self.confirm) if self.confirm is not None else None,
            "wall_time": self.wall_time,
        })

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RangeTestResult":
        return cls(
            lrs=_dec(d["lrs"]),
            losses=_dec(d["losses"]),
            smoothed=_dec(d["smoothed"]),
            stopped_at=int(d["stopped_at"]),
            stop_reason=d["stop_reason"],
            suggestion=Suggestion.from_dict(d["suggestion"]),
            suggestions={k: Suggestion.from_dict(v) for k, v in d.get("suggestions", {}).items()},
            num_iter_advice=dict(d.get("num_iter_advice") or {}),
            cost_steps=int(d.get("cost_steps", 0)),
            settings=dict(d.get("settings") or {}),
            confirm=d.get("confirm"),
            wall_time=float(d.get("wall_time", 0.0)),
        )

    def to_json(self, path: str | None = None) -> str:
        """The result as JSON (written to ``path`` too when given)."""
        text = json.dumps(self.to_dict(), indent=1, allow_nan=False)
        if path is not None:
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(text)
        return text

    @classmethod
    def from_json(cls, text_or_path: str) -> "RangeTestResult":
        """Parse :meth:`to_json` output (a JSON string, or a path to a file holding one)."""
        return cls.from_dict(read_object(text_or_path, "RangeTestResult",
                                         ("lrs", "losses", "suggestion")))

    def plot(self, path: str | None = None, *, ax: Any = None, peers: bool = True) -> Any:
        """Draw the curve (raw and smoothed) with the suggestion and its band marked, and the
        peers' suggestions as ticks; after ``confirm=True`` (and without ``ax``) a second panel
        shows the confirm runs (:func:`plot_confirm`). Save to ``path`` when given; returns the
        figure (without ``path``, made in your matplotlib backend: ``plt.show()`` shows it, a
        notebook shows it once; see :mod:`lrkit._figures`)."""
        from ._figures import new_figure

        fig = None
        if ax is None and self.confirm and self.confirm.get("runs"):
            fig, (ax, ax_c) = new_figure((13, 4.2), 1, 2, shown=path is None)
            plot_confirm(self.confirm, ax_c)
        elif ax is None:
            fig, ax = new_figure((7, 4.2), shown=path is None)
        else:
            fig = ax.figure
        lrs = np.asarray(self.lrs)
        ax.plot(lrs, self.losses, color="0.75", lw=0.8, label="loss (raw)")
        ax.plot(lrs, self.smoothed, color="C0", lw=2, label="smoothed (zero-lag)")
        s = self.suggestion
        if s.band is not None:
            ax.axvspan(s.band[0], s.band[1], color="C2", alpha=0.15, label="good band")
        if s.lr is not None:
            ax.axvline(s.lr, color="C3", lw=1.5,
                       label=f"{s.method}: {s.lr:.2e} ({s.confidence})")
        if peers:
            finite = [v for v in self.smoothed if math.isfinite(v)] or [0.0]
            y0 = min(finite)
            for k, (name, other) in enumerate(sorted(self.suggestions.items())):
                if name == s.method or other.lr is None:
                    continue
                ax.plot([other.lr], [y0], marker="v", ls="", color=f"C{4 + k % 5}",
                        label=f"{name}: {other.lr:.2e}")
        ax.set_xscale("log")
        # y range: the curve before the blow-up (where the smoothed curve is defined), so the
        # diverged tail does not flatten the part that matters
        sm = np.asarray(self.smoothed, dtype=float)
        raw = np.asarray(self.losses, dtype=float)
        keep = np.isfinite(sm) & np.isfinite(raw)
        if keep.any():
            lo = float(min(raw[keep].min(), sm[keep].min()))
            top = float(max(sm[keep].max(), raw[keep][0]))
            top = top if top > lo else lo + 1.0
            ax.set_ylim(lo - 0.05 * (top - lo), top + 0.15 * (top - lo))
        ax.set_xlabel("learning rate")
        ax.set_ylabel(f"{self.settings.get('loss_kind', 'train')} loss")
        title = f"LR range test ({self.stop_reason} after {self.stopped_at + 1} steps)"
        if s.lr is None:
            title += ": no clear descent"
        ax.set_title(title)
        ax.legend(fontsize=7, loc="best")
        if fig is not None:
            fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=110)
        return fig


def plot_confirm(confirm: Mapping[str, Any], ax: Any) -> None:
    """Confirm mode's evidence on ``ax``: each short run's val metric against its integrated LR
    (``lr x step`` at a constant LR: gradient-flow time, in which runs that replay one another
    collapse onto one curve), the best short run in bold, the longer run at it (dashed, when
    confirm made one), and the integrated LR a full run at the suggested LR reaches (runs are
    miniatures of the full run: the same shape, scaled)."""
    runs = [r for r in confirm.get("runs", []) if r.get("val_curve")]
    best = confirm.get("short_run_winner", confirm.get("stepped_down_from",
                                                        confirm.get("winner")))
    end_tau = None
    for k, r in enumerate(sorted(runs, key=lambda r: r["lr"])):
        pts = _finite_points(r["val_curve"])
        if not pts:
            continue
        tau = _tau(r)
        win = best is not None and math.isclose(r["lr"], best, rel_tol=1e-9)
        ax.plot([tau(t) for t, _ in pts], [v for _, v in pts], marker="o", ms=3,
                lw=2.5 if win else 1.0, color=f"C{k % 10}",
                label=f"lr {r['lr']:.3g}" + (" (diverged)" if r.get("diverged") else "")
                + (" best short run" if win else ""))
        if win:
            n = pts[-1][0]
            end_tau = tau(n) * float(confirm["full_run_steps"]) / n \
                if confirm.get("full_run_steps") else None
    long = confirm.get("long_check")
    pts = _finite_points(long["val_curve"]) if long else []
    if pts:
        tau = _tau(long)
        ax.plot([tau(t) for t, _ in pts], [v for _, v in pts], ls="--", marker=".", ms=3,
                lw=1.5, color="k", label=f"lr {long['lr']:.3g}, {long['steps']} steps "
                "(the longer check)")
    chosen = confirm.get("winner")
    if end_tau is not None and chosen:
        ax.axvline(end_tau * chosen / best, color="k", ls="--", lw=1.2,
                   label=f"a full run at the suggested lr {chosen:.3g} reaches")
    ax.set_xscale("log")
    ax.set_xlabel("integrated LR (lr x step at a constant LR)")
    ax.set_ylabel(f"val {confirm.get('metric', 'metric')}")
    how = ("time-rescaled to the best run's point" if "short_run_winner" in confirm
           else "the best val at the end")
    if pts:
        how += ", checked by a longer run"
    ax.set_title(f"confirm: {len(runs)} short runs, {how}", fontsize=9)
    ax.legend(fontsize=7, loc="best")


# ------------------------------------------------------------------------------ the callback
class _RangeTestRecorder:
    """fit callback: records the loss of the curve (train, or val when a val loader is given,
    averaged across DDP ranks) and stops on divergence with a causal debiased EMA vs its best."""

    def __init__(self, stop: Any, val: Callable[[nn.Module], float] | None,
                 bar: Any = None) -> None:
        self.stop, self.val, self.bar = stop, val, bar
        self.losses: list[float] = []
        self.val_batches = 0

    def on_train_start(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.stop.on_train_start(model, optimizer)

    def on_step_end(self, info: Any) -> bool | str | None:
        loss = info.loss
        if self.val is not None:
            loss = self.val(info.model)
            info = replace(info, loss=loss)
        self.losses.append(loss)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(lr=f"{info.lr:.2e}", loss=f"{loss:.4g}", refresh=False)
        if not math.isfinite(loss):
            return "nan"
        return self.stop.on_step_end(info)

    def on_eval(self, step: int, metric: float) -> bool | str | None:
        return None

    def on_train_end(self, result: Any) -> None:
        pass


def _val_loss_fn(val_loader: Iterable, loss_fn: Callable | None, step_fn: Callable | None,
                 device: Any) -> Callable[[nn.Module], float]:
    from .train import _ddp_mean, _default_step_fn, _to_device, evaluating

    if step_fn is None:
        step_fn = _default_step_fn(loss_fn)

    def evaluate(model: nn.Module) -> float:
        total, count = 0.0, 0
        with evaluating(model):
            for batch in val_loader:
                batch = _to_device(batch, device)
                try:
                    loss = step_fn(model, batch)
                except ValueError as e:  # a batch layout loss_fn cannot take: name the loader
                    raise ValueError(f"val_loader: {e}") from e
                total += float(loss)
                count += 1
        if count == 0:
            raise ValueError("val_loader yielded no batch")
        return float(_ddp_mean(torch.tensor(total / count, dtype=torch.float64)))

    return evaluate


def _is_task(obj: Any) -> bool:
    try:
        from .tasks.base import Task
    except ImportError:  # pragma: no cover
        return False
    return isinstance(obj, Task)


# ---------------------------------------------------------------------------------- find_lr
def find_lr(
    model_or_task: Any,
    optimizer: torch.optim.Optimizer | None = None,
    train_loader: Iterable | None = None,
    loss_fn: Callable | None = None,
    *,
    step_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_iter: int = 100,
    mode: str = "exp",
    smooth: float = 0.98,
    diverge_factor: float = 4.0,
    val_loader: Iterable | None = None,
    accumulation_steps: int | None = None,
    grad_clip: float | None = None,
    amp: bool | str | None = None,
    restore: bool = True,
    method: str = "lrkit",
    confirm: bool = False,
    seed: int = 0,
    progress: bool = False,
    scheduler: Any = None,
    scaler: Any = None,
    device: str | torch.device | None = None,
    confirm_candidates: int = 3,
    confirm_budget: float = 0.5,
    steps: int | None = None,
    schedule: Any = "constant",
    metric_fn: Callable[[nn.Module, Iterable], float] | None = None,
    higher_is_better: bool = False,
    interleave: bool = True,
) -> "RangeTestResult":
    """Run an LR range test and suggest a learning rate.

    With a model: ``find_lr(model, optimizer, train_loader, loss_fn)`` (or ``step_fn(model, batch)
    -> loss`` instead of ``loss_fn(model(x), y)``). Param groups keep their LR ratios: group i gets
    ``lr_i / lr_0`` x the sweep's LR, and the recorded LR is group 0's. ``scheduler`` and
    ``scaler`` (an attached LR scheduler and GradScaler) are restored with the rest when
    ``restore`` (the default); the scheduler is not stepped during the test. ``grad_clip``
    clips the global gradient norm before every step, as your training loop does (a Task clips
    as its recipe says), and so do confirm's runs; ``amp`` and ``accumulation_steps``
    (micro-batches per optimizer step, their losses averaged) likewise (default: a Task's
    recipe's, else ``False`` and 1). A clipped sweep rarely blows up, and the
    curve rule, fitted on unclipped sweeps, reads it high: prefer ``confirm=True`` there.

    With a :class:`~lrkit.tasks.Task`: ``find_lr(task)`` builds the model, optimizer and batches
    for ``seed``. ``confirm=True`` then spends ``confirm_budget`` x one full run on
    short runs at ``confirm_candidates`` LRs a quarter decade apart around the suggestion for
    the task's recipe (a decade apart around a guess when the curve gives none), scored on the
    task's ``"val"`` split, and suggests the best of them (see ``_confirm``); the window
    travels (half-decade jumps) while the best run sits at its edge, within one full run of
    extra steps in all. When the short runs show that a full run at
    the best one's LR would overfit (the next higher LR replays it at the same ``lr x t`` and
    then gets worse, or its own val metric peaks and worsens: :func:`overfit_step`), the
    suggestion is that LR scaled by ``t* / steps``, so the full run covers the same ``lr x t``.
    Otherwise, or when only the run above said so, what is left of that one full run (when it
    is at least two short runs) trains one longer run at the winner, read the same way for
    overfitting that starts beyond the short runs' horizon, or for a winner that keeps
    improving past the point the run above gave (``confirm["long_check"]``: its ``lr``,
    ``steps``, ``metric`` and
    ``val_curve``; ``overfit_fraction`` when it rescaled the winner; ``not_read``, the reason,
    when its peak was within its noise or time rescaling did not hold below the winner;
    ``diverged_at``, the step, when it diverged: the pick then steps down to the nearest lower
    short run that trained, ``confirm["stepped_down_from"]`` holding the winner, with
    confidence "low" and ``lr_range`` capped at the winner). Confirm then costs about one full
    run.

    Without ``confirm``, ``val_loader`` makes the sweep record the mean validation loss over
    the whole loader after every step instead of the training loss (torch-lr-finder's val
    mode; ``settings["loss_kind"] == "val"``): one pass over it per step, outside
    ``cost_steps``, so hand it a few batches.

    ``confirm=True`` with a plain model needs ``val_loader`` (scores the short runs), ``steps``
    (the length of your full run, in optimizer steps) and ``schedule`` (the family you will
    train with, :data:`lrkit.schedules.FAMILIES`); ``metric_fn(model, val_loader) -> float``
    scores a run (default: the mean validation loss under ``loss_fn``; ``higher_is_better`` for
    accuracy-like metrics). The short runs go through :func:`lrkit.tasks.from_torch`, and your
    model, optimizer and loaders are restored exactly afterwards.

    The divergence stop is causal: ``m_t = smooth m_{t-1} + (1 - smooth) loss_t`` debiased by
    ``1 - smooth^t``, stop when ``m_t > diverge_factor x min_{s<=t} m_s`` or a loss is non-finite.
    The suggestion (``method``, see :func:`lrkit.suggest.methods`) reads the recorded raw losses.

    ``num_iter`` beyond ``SWEEP_STEPS`` (100) buys repeats of a 100-step sweep, interleaved
    into one finer curve, so the suggestion does not move with ``num_iter`` (see
    :func:`sweep_plans`); ``interleave=False`` runs one sweep of ``num_iter`` steps instead (what
    the peers do).

    Under ``torch.distributed`` the loss is averaged across ranks, so every rank gets the same curve.
    """
    from . import train as _train

    num_iter = check_int("num_iter", num_iter)
    device = _train.check_device("device", device)
    if num_iter < MIN_POINTS:
        raise ValueError(f"num_iter must be >= {MIN_POINTS}: the rules read at least "
                         f"{MIN_POINTS} points of the curve ({SWEEP_STEPS} or more is "
                         f"recommended), got {num_iter}")
    if not isinstance(interleave, bool):
        raise TypeError(f"interleave must be a bool, got {interleave!r}")
    plans = (sweep_plans(start_lr, end_lr, num_iter, mode) if interleave
             else [sweep_lrs(start_lr, end_lr, num_iter, mode)])
    check_range("smooth", smooth, 0.0, 1.0, high_open=True)
    diverge_factor = check_positive("diverge_factor", diverge_factor)
    if diverge_factor <= 1.0:
        raise ValueError(f"diverge_factor must be > 1, got {diverge_factor!r}")
    if accumulation_steps is not None:
        accumulation_steps = check_int("accumulation_steps", accumulation_steps, minimum=1)
    if grad_clip is not None:
        grad_clip = check_positive("grad_clip", grad_clip)
    check_choice("method", method, _suggest.methods())
    seed = check_int("seed", seed, minimum=0)
    confirm_candidates = check_int("confirm_candidates", confirm_candidates, minimum=2)
    check_range("confirm_budget", confirm_budget, 0.0, 1.0, low_open=True)
    if not isinstance(restore, bool):
        raise TypeError(f"restore must be a bool, got {restore!r}")

    rng = _train._rng_state()  # the caller's global RNGs, put back with a Task (put_back)
    setup = _set_up(model_or_task, optimizer, train_loader, loss_fn, step_fn,
                    first_lr=float(plans[0][0]), seed=seed, device=device,
                    val_loader=val_loader, grad_clip=grad_clip, amp=amp,
                    accumulation_steps=accumulation_steps,
                    confirm_options=(dict(steps=steps, schedule=schedule, metric_fn=metric_fn,
                                          higher_is_better=higher_is_better)
                                     if confirm else None))
    task = setup.task
    scales = _group_scales(setup.optimizer, scheduler)
    snap = None
    if (restore or len(plans) > 1) and task is None:
        gens = _train.loader_generators(setup.train_loader)
        if val_loader is not None:
            gens += [g for g in _train.loader_generators(val_loader)
                     if all(g is not h for h in gens)]
        snap = _train.snapshot(setup.model, setup.optimizer, scheduler=scheduler, scaler=scaler,
                               generators=gens, grads=True)
    # the sweep's own workers for a persistent-worker loader (a Task's batches start theirs)
    workers = _train._OwnWorkers(setup.train_loader if task is None else None)
    workers.fresh()
    try:
        per_sweep, reasons, steps_done, wall = _run_sweeps(
            setup, plans, seed=seed, snap=snap, scales=scales, val_loader=val_loader,
            stop=lambda: _train.DivergenceStop(diverge_factor, relative_to="best", beta=smooth),
            scaler=scaler, progress=progress)
    finally:
        workers.give_back()
        if snap is not None and restore:
            snap.restore()
        if task is not None and not confirm:
            put_back(task, seed, rng)

    lrs = np.concatenate([x for x, _ in per_sweep])
    order = np.argsort(lrs, kind="stable")
    losses = np.concatenate([y for _, y in per_sweep])[order]
    lrs = lrs[order]
    stop_reason = ("nan" if "nan" in reasons else "diverged" if any(
        x not in ("completed", "nan") for x in reasons) else "completed")
    result = _build_result(lrs, losses, stop_reason, method=method, num_iter=num_iter,
                           sweeps=per_sweep,
                           cost=steps_done, wall=wall,
                           settings={"start_lr": float(start_lr), "end_lr": float(end_lr),
                                     "num_iter": num_iter, "mode": mode, "smooth": float(smooth),
                                     "sweeps": len(plans), "sweep_steps": len(plans[0]),
                                     "diverge_factor": diverge_factor,
                                     "accumulation_steps": setup.accumulation_steps,
                                     "grad_clip": setup.grad_clip,
                                     "loss_kind": "val" if val_loader is not None else "train",
                                     "group_scales": scales, "seed": seed,
                                     "task": task.name if task is not None else None},
                           train_size=getattr(task, "train_size", None) if task else None,
                           batch_size=task.recipe.batch_size if task else None)
    if not confirm:
        return result
    if task is not None:
        try:
            return _confirm(task, result, seed=seed, candidates=confirm_candidates,
                            budget=confirm_budget, progress=progress)
        finally:
            put_back(task, seed, rng)
    user = _train.snapshot(setup.model, setup.optimizer, scheduler=scheduler, scaler=scaler,
                           generators=_train.loader_generators(setup.train_loader)
                           + _train.loader_generators(val_loader), grads=True)
    try:
        return _confirm(setup.confirm_task, result, seed=seed, candidates=confirm_candidates,
                        budget=confirm_budget, progress=progress)
    finally:
        put_back(setup.confirm_task, seed)  # (the loader's workers as given, among others)
        user.restore()


@dataclass(frozen=True)
class _Setup:
    """What a range test trains: the model, optimizer, batches and loss, and the loop's
    options, from a Task (``task``, rebuilt per sweep) or the user's own objects (with
    ``confirm_task``, the :func:`lrkit.tasks.from_torch` Task confirm's runs use)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    train_loader: Iterable
    loss_fn: Callable | None
    step_fn: Callable | None
    device: Any
    grad_clip: float | None
    amp: bool | str
    accumulation_steps: int
    task: Any = None
    confirm_task: Any = None


def _set_up(model_or_task: Any, optimizer: Any, train_loader: Any, loss_fn: Any, step_fn: Any,
            *, first_lr: float, seed: int, device: Any, val_loader: Any, grad_clip: Any,
            amp: Any, accumulation_steps: Any, confirm_options: dict | None) -> _Setup:
    """:func:`find_lr`'s model, optimizer and batches, checked: built from a Task for ``seed``
    (its recipe fills the loop options left ``None``), or the user's own, with the confirm
    Task built from them before any step when ``confirm_options`` (``steps``, ``schedule``,
    ``metric_fn``, ``higher_is_better``) are given: a set-up it cannot rebuild, or a schedule
    it cannot read, fails before the sweep, and every confirm run starts from the user's
    weights (with ``restore=False`` the sweep leaves its own behind)."""
    from . import train as _train

    if _is_task(model_or_task):
        task = model_or_task
        for name, value in (("optimizer", optimizer), ("train_loader", train_loader),
                            ("loss_fn", loss_fn), ("step_fn", step_fn)):
            if value is not None:
                raise ValueError(f"{name} must be None when find_lr is given a Task "
                                 "(the task builds it)")
        _train.seed_everything(seed)
        model = task.build_model(seed)
        if device is not None:
            model.to(device)
        recipe = task.recipe
        return _Setup(model, recipe.make_optimizer(model.parameters(), first_lr),
                      task.batches(seed), None, task.loss, device,
                      recipe.grad_clip if grad_clip is None else grad_clip,
                      recipe.amp if amp is None else amp,
                      (recipe.accumulation_steps if accumulation_steps is None
                       else accumulation_steps), task=task)
    amp = False if amp is None else amp
    accumulation_steps = 1 if accumulation_steps is None else accumulation_steps
    if confirm_options is not None:
        _check_confirm_options(val_loader, **confirm_options)
    model = model_or_task
    if not isinstance(model, nn.Module):
        raise TypeError(f"model_or_task must be a torch.nn.Module or a lrkit Task, got "
                        f"{type(model).__name__}")
    _train.check_optimizer("optimizer", optimizer, model)
    _train.check_minimises("optimizer", optimizer)
    confirm = confirm_options is not None
    if val_loader is not None:
        _train.check_loader("val_loader", val_loader, "every short run restarts it"
                            if confirm else "the sweep measures the validation loss at "
                            "every step")
    _train.check_loader("train_loader", train_loader,
                        "every confirm run restarts it" if confirm else None)
    if (loss_fn is None) == (step_fn is None):
        raise ValueError("pass exactly one of loss_fn (loss_fn(model(x), y)) or "
                         "step_fn(model, batch)")
    confirm_task = None
    if confirm:
        from .tasks.torch_task import from_torch

        confirm_task = from_torch(model, optimizer, train_loader, loss_fn,
                                  val_loader=val_loader, step_fn=step_fn, device=device,
                                  grad_clip=grad_clip, amp=amp,
                                  accumulation_steps=accumulation_steps, **confirm_options)
    if device is None:  # batches follow the model (left as they are on CPU)
        home = _train.model_device(model)
        device = home if home is not None and home.type != "cpu" else None
    return _Setup(model, optimizer, train_loader, loss_fn, step_fn, device, grad_clip, amp,
                  accumulation_steps, confirm_task=confirm_task)


def _group_scales(optimizer: torch.optim.Optimizer, scheduler: Any,
                  caller: str = "find_lr") -> list[float]:
    """:func:`lrkit.errors.check_group_lrs`, whose error names an LR scheduler attached to
    ``optimizer`` (``scheduler``, or one that left ``initial_lr`` in its groups) as what set
    the LRs it refuses: a warmup from 0 (``LambdaLR(lambda s: s / n)``) leaves group 0 at 0.
    ``caller`` (``find_lr``, ``from_torch``) is the call the message tells to move."""
    try:
        return check_group_lrs(optimizer)
    except ValueError as e:
        attached = any("initial_lr" in g for g in optimizer.param_groups)
        if scheduler is None and not attached:
            raise
        which = (f"scheduler ({type(scheduler).__name__}, at step "
                 f"{getattr(scheduler, 'last_epoch', '?')})" if scheduler is not None
                 else "an LR scheduler attached to the optimizer")
        raise ValueError(
            f"{e}: {which} set these LRs (a warmup from 0 starts at 0), and {caller} "
            f"keeps only their ratios: call {caller} before attaching the scheduler, or once "
            "it has stepped past 0") from None


def _check_confirm_options(val_loader: Any, *, steps: Any, schedule: Any, metric_fn: Any,
                           higher_is_better: Any) -> None:
    """The arguments ``confirm=True`` needs with a plain model, named when missing or wrong
    (``schedule`` is read by :func:`lrkit.tasks.from_torch`)."""
    if val_loader is None:
        raise ValueError("confirm=True needs val_loader: the short confirm runs are "
                         "scored on held-out data")
    if steps is None:
        raise ValueError("confirm=True needs steps: the length of your full training "
                         "run in optimizer steps (each confirm run is a fraction of it)")
    check_int("steps", steps, minimum=1)
    if not isinstance(higher_is_better, bool):
        raise TypeError(f"higher_is_better must be a bool, got {higher_is_better!r}")
    if metric_fn is not None and not callable(metric_fn):
        raise TypeError(f"metric_fn must be callable(model, val_loader) -> float, got "
                        f"{metric_fn!r}")


def _run_sweeps(setup: _Setup, plans: list[np.ndarray], *, seed: int, snap: Any,
                scales: list[float], val_loader: Any, stop: Callable[[], Any], scaler: Any,
                progress: bool) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[str], int,
                                         float]:
    """Train every sweep of ``plans`` through :func:`lrkit.train.fit`, each from the same
    starting point (a Task's model rebuilt, else ``snap`` restored) on the next batches of one
    data stream (independent noise), stopped by a fresh ``stop()`` callback. Returns each
    sweep's ``(lrs, losses)`` (the val loss when ``val_loader`` is given), its stop reason,
    the steps trained and the wall time."""
    from . import train as _train

    model, optimizer, task = setup.model, setup.optimizer, setup.task
    total = sum(len(p) for p in plans)  # steps over every sweep
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="LR range test", leave=False)
    val = (_val_loss_fn(val_loader, setup.loss_fn, setup.step_fn, setup.device)
           if val_loader is not None else None)
    data = _train._cycle(setup.train_loader, total * setup.accumulation_steps,
                         name="train_loader")  # (an error names find_lr's argument)
    start = time.perf_counter()
    per_sweep: list[tuple[np.ndarray, np.ndarray]] = []
    reasons: list[str] = []
    steps_done = 0
    try:
        for r, plan in enumerate(plans):
            if r > 0 and task is not None:
                model = task.build_model(seed)
                if setup.device is not None:
                    model.to(setup.device)
                optimizer = task.recipe.make_optimizer(model.parameters(), float(plan[0]))
            elif r > 0:
                snap.restore(rng=False)
            rec = _RangeTestRecorder(stop(), val, bar)
            frozen = _freeze_hypergradients(optimizer)
            try:
                out = _train.fit(model, optimizer, data, num_steps=len(plan),
                                 loss_fn=setup.loss_fn, step_fn=setup.step_fn,
                                 schedule=_Sweep(plan), group_scales=scales, callbacks=[rec],
                                 grad_clip=setup.grad_clip,
                                 accumulation_steps=setup.accumulation_steps, amp=setup.amp,
                                 scaler=scaler, device=setup.device, ddp_average_loss=True)
            finally:
                for group, beta in frozen:
                    group["hypergrad_lr"] = beta
            lrs_r = list(out.lrs)
            losses_r = list(rec.losses if val is not None else out.losses)
            if len(losses_r) < len(lrs_r):  # a non-finite training loss stopped fit early
                losses_r = (list(out.losses) if val is None else losses_r + [math.nan]
                            )[: len(lrs_r)]
            per_sweep.append((np.asarray(lrs_r, dtype=float), np.asarray(losses_r, dtype=float)))
            reasons.append(out.stop_reason)
            steps_done += out.steps_done
    finally:
        if bar is not None:
            bar.close()
    return per_sweep, reasons, steps_done, time.perf_counter() - start


def put_back(task: Any, seed: int, rng: tuple | None = None) -> None:
    """Leave a Task's model at its starting point after runs of it (``find_lr``, ``lrkit.tune``
    and ``lrkit.search`` do, also after an error or Ctrl-C): a :func:`lrkit.tasks.from_torch`
    task (or ``from_lightning``'s) trains the user's own model object in place, and hands it
    back as it was when the task was built (its weights, buffers, modes and ``.grad``, the
    generators of its train, val and test loaders and a persistent-worker training loader's
    iterator, through its ``build_model.put_back()``); for a built-in task this builds a model
    that is thrown away; anything else (a search objective) is left alone. ``rng``, the global
    RNGs' state when the caller started (``lrkit.train._rng_state()``), is put back for any
    task: every run seeds them, and the caller's next draws were those of the last run's
    seed (a model built after ``tune`` had the same "random" init every time)."""
    from . import train as _train

    if _is_task(task):
        back = getattr(task.build_model, "put_back", None)
        if callable(back):
            back()
        else:
            task.build_model(seed)  # (which seeds the global RNGs: put back after it)
    if rng is not None:
        _train._set_rng_state(rng)


def _freeze_hypergradients(optimizer: Any) -> list[tuple[dict, float]]:
    """Switch off a hypergradient optimizer's LR adaptation for a sweep, returning each group
    with its ``hypergrad_lr`` to put back. The sweep then steps at exactly its LR, as the base
    rule (SGD, Adam) would: what it finds is the initial LR the adaptation starts from (and
    scales its bounds by). Adapting during the sweep, SGD-HD's additive rule lifted a 1e-7
    step to ~1e-2 at once, the test blew up at its start and tune trained at 1.6e-7 (digits:
    test accuracy 0.10, chance)."""
    from .optim.hd import _HDOptimizer

    if not isinstance(optimizer, _HDOptimizer):
        return []
    frozen = [(g, g["hypergrad_lr"]) for g in optimizer.param_groups]
    for g, _ in frozen:
        g["hypergrad_lr"] = 0.0
    return frozen


#: the fewest points of a curve the rules read
MIN_POINTS = 8


#: a sweep that blows up within this share of its planned steps, with no descent before, started
#: above the LRs that train (a model that is already trained stays flat for longer: from the
#: default start_lr, 1e-7, the first fifth ends at 4e-6)
EARLY_BLOWUP_SHARE = 0.2
#: ... and so did one with no descent whose loss over the rest of that first fifth (its median)
#: already stands this many times above the loss at its first step, blown up or not. The
#: blow-up rule misses such a sweep: its divergence stop compares with the best smoothed loss,
#: which the jump itself sets high (start_lr 5 on an MLP: 2.3 at once to 3.5-20, stopped only
#: after 28 of 50 steps), so the rule read a flat curve "as for a model already trained"
EARLY_RISE = 1.5


def _starts_too_high(lrs: np.ndarray, losses: np.ndarray, stop_reason: str,
                     planned: int) -> str | None:
    """What shows that a sweep with no clear descent started above the LRs that train, in
    words (``None`` when nothing does): a blow-up within ``EARLY_BLOWUP_SHARE`` of its
    ``planned`` steps, or a loss that stands ``EARLY_RISE`` x above its first value over the
    rest of that share."""
    if stop_reason in ("nan", "diverged") and lrs.size < EARLY_BLOWUP_SHARE * planned:
        return (f"before the loss "
                f"{'became non-finite' if stop_reason == 'nan' else 'diverged'} after "
                f"{lrs.size} of {planned} steps, at lr {lrs[-1]:.3g}")
    k = min(lrs.size - 1, max(MIN_POINTS, int(EARLY_BLOWUP_SHARE * planned)))
    early = losses[1:k + 1]
    early = early[np.isfinite(early)]
    first = float(losses[0])
    if early.size < 3 or not (math.isfinite(first) and first > 0):
        return None
    median = float(np.median(early))
    if median <= EARLY_RISE * first:
        return None
    return (f"and the loss rose at once: from {first:.3g} at the first step (lr "
            f"{lrs[0]:.3g}) to a median of {median:.3g} over the next {k} (up to lr "
            f"{lrs[k]:.3g})")


def _suggest_sweep(lrs: np.ndarray, losses: np.ndarray, num_iter: int,
                   stop_reason: str = "completed", planned: int | None = None
                   ) -> dict[str, Suggestion]:
    """Every rule's suggestion from one sweep (``num_iter``: what the peers' trimming reads;
    ``planned``: the sweep's planned length, default ``num_iter``)."""
    planned = num_iter if planned is None else planned
    if lrs.size >= MIN_POINTS:
        out = _suggest.suggest_all(lrs, losses, num_iter=num_iter)
        own = out["lrkit"]
        high = (_starts_too_high(lrs, losses, stop_reason, planned) if own.lr is None
                else None)
        if high is not None:
            out["lrkit"] = replace(own, reason=(
                f"no clear descent {high}: the sweep starts above the LRs that train; lower "
                f"start_lr (a decade or more below {lrs[0]:.3g}). If the loss still rises or "
                f"blows up at once, check the model, the loss and the data before the LR (the "
                f"rule read: {own.reason})"))
        return out
    if lrs.size and not np.isfinite(losses[0]):
        why = (f"the loss was {losses[0]} at the first step, at lr {lrs[0]:.3g}: the model, "
               "the data or the loss function produce it, not the learning rate")
    elif stop_reason in ("nan", "diverged"):
        why = (f"the loss {'became non-finite' if stop_reason == 'nan' else 'diverged'} after "
               f"{lrs.size} steps (at lr {lrs[-1]:.3g}), too few to read: lower start_lr")
    else:
        why = f"only {lrs.size} steps before the test stopped ({stop_reason})"
    return {m: Suggestion(None, m, "none", why) for m in _suggest.methods()}


_CONFIDENCE = ("none", "low", "medium", "high")


def _combine(per_sweep: list[dict[str, Suggestion]]) -> dict[str, Suggestion]:
    """Each rule's suggestions from repeated sweeps, combined: the geometric mean of the LRs
    (and of the band's edges) of the sweeps that found one, when at least half did; the median
    confidence; the schedule settings follow the combined LR and band."""
    out: dict[str, Suggestion] = {}
    for m in per_sweep[0]:
        found = [d[m] for d in per_sweep if d[m].lr is not None]
        if 2 * len(found) < len(per_sweep):
            first = next(d[m] for d in per_sweep if d[m].lr is None)
            out[m] = Suggestion(None, m, "none", f"{len(per_sweep) - len(found)} of "
                                f"{len(per_sweep)} sweeps gave no LR; first: {first.reason}")
            continue
        lrs = np.array([f.lr for f in found])
        lr = float(np.exp(np.mean(np.log(lrs))))
        ranks = sorted(_CONFIDENCE.index(f.confidence) for f in found
                       if f.confidence in _CONFIDENCE)
        conf = _CONFIDENCE[ranks[(len(ranks) - 1) // 2]] if ranks else found[0].confidence
        why = (f"geometric mean of {len(found)} sweeps (their LRs span "
               f"{lrs.max() / lrs.min():.2f}x); median sweep: "
               f"{found[int(np.argsort(lrs)[len(lrs) // 2])].reason}")
        bands = [f.band for f in found if f.band is not None]
        if len(bands) == len(found) and all(f.schedules for f in found):
            lo = float(np.exp(np.mean(np.log([b[0] for b in bands]))))
            hi = float(np.exp(np.mean(np.log([b[1] for b in bands]))))
            out[m] = Suggestion.at(lr, (lo, hi), method=m, confidence=conf, reason=why)
        else:
            out[m] = Suggestion(lr, m, conf, why)
    return out


def _build_result(lrs: np.ndarray, losses: np.ndarray, stop_reason: str, *, method: str,
                  num_iter: int, cost: int, wall: float, settings: dict,
                  train_size: int | None, batch_size: int | None,
                  sweeps: list[tuple[np.ndarray, np.ndarray]] | None = None) -> RangeTestResult:
    n = lrs.size
    if sweeps is not None and len(sweeps) > 1:
        all_s = _combine([_suggest_sweep(x, y, x.size, stop_reason,
                                         planned=settings.get("sweep_steps"))
                          for x, y in sweeps])
    else:
        all_s = _suggest_sweep(lrs, losses, num_iter, stop_reason)
    smoothed = _suggest.smooth_curve(lrs, losses) if n >= 2 else np.full(n, np.nan)
    advice: dict[str, Any] = {}
    if n >= 16:
        advice.update(_suggest.num_iter_sensitivity(lrs, losses, method=method))
    advice["recommended_num_iter"] = _suggest.recommended_num_iter(
        train_size=train_size or None, batch_size=batch_size)
    spread = advice.get("spread")
    more = max(2 * num_iter, advice["recommended_num_iter"])
    thinned = [advice.get(k) for k in ("1", "2", "4") if k in advice]
    chosen = all_s[method]
    if spread is not None and spread > THIN_SPREAD:
        advice["note"] = (f"the suggestion moves {spread:.1f}x when the curve is thinned: use "
                          f"num_iter >= {more}")
        if chosen.lr is not None and chosen.confidence in ("high", "medium"):
            # a reading that a coarser sampling of the same curve moves this far is a noise
            # dip, not a property of the curve: say so in the confidence
            all_s = {**all_s, method: replace(
                chosen, confidence="low",
                reason=f"{chosen.reason}; it moves {spread:.1f}x when the curve is thinned 2x "
                       f"and 4x (noise): use num_iter >= {more}, or confirm=True")}
    elif any(v is None for v in thinned) and any(v is not None for v in thinned):
        advice["note"] = (f"the rule answers on some thinnings of the curve and abstains on "
                          f"others (it is at the edge of what it can read): use num_iter >= "
                          f"{more}")
    elif thinned and all(v is None for v in thinned):
        advice["note"] = "the rule abstains at every thinning of the curve (2x and 4x)"
    else:
        advice["note"] = "the suggestion is stable under thinning the curve 2x and 4x"
    if num_iter < SWEEP_STEPS:
        advice["note"] += (f"; a sweep of {num_iter} < {SWEEP_STEPS} steps trains less at each "
                           "LR and its suggestion can move 1.5-3x (measured): use num_iter >= "
                           f"{SWEEP_STEPS}")
    return RangeTestResult(
        lrs=tuple(float(v) for v in lrs), losses=tuple(float(v) for v in losses),
        smoothed=tuple(float(v) for v in smoothed), stopped_at=max(n - 1, 0),
        stop_reason=stop_reason, suggestion=all_s[method], suggestions=all_s,
        num_iter_advice=advice, cost_steps=int(cost), settings=settings, wall_time=wall)


# ------------------------------------------------------------------------------- confirm mode
#: spacing of the confirm candidates in decades of LR (the oracle grid's resolution)
CONFIRM_SPACING = 0.25
#: ... and a decade when the curve's rule abstained and the centre is a guess (the peers'
#: read of the curve, else the recipe's default LR), with no ceiling on the travel up: a
#: guess is as uncertain as that (random small CNNs whose loss sat at chance through the
#: sweep: the best LR lay 10-400x above the guessed centre; ``lrkit.tune`` does the same)
CONFIRM_GUESS_SPACING = 1.0


def window_spacing(result: RangeTestResult) -> float:
    """Decades between neighbouring short-run LRs around the centre that
    :func:`_confirm_centre` gives for ``result`` (confirm mode's and ``lrkit.tune``'s):
    ``CONFIRM_SPACING`` around the curve's suggestion, ``CONFIRM_GUESS_SPACING`` around a
    guess."""
    return CONFIRM_SPACING if result.suggestion.lr is not None else CONFIRM_GUESS_SPACING


def _confirm_centre(task: Any, result: RangeTestResult) -> tuple[Suggestion, str]:
    """Where confirm starts: the curve's suggestion; when it abstains, the peers' read of the
    same curve (fastai's valley, else its minimum / 10), and only then the recipe's default."""
    s = result.suggestion
    if s.lr is not None:
        return s, ("the range test's suggestion" if s.method == "lrkit" else
                   f"the range test's {s.method} rule")
    sm = np.asarray(result.smoothed, dtype=float)
    sm = sm[np.isfinite(sm)]
    fell = sm.size >= 2 and (float(sm[: int(np.argmin(sm)) + 1].max() - sm.min())
                             > PEER_FALLBACK_DROP * max(abs(float(sm[0])), 1e-12))
    for name, div in (("valley", 1.0), ("minimum", 10.0)) if fell else ():
        peer = result.suggestions.get(name)
        if peer is not None and peer.lr is not None:
            lr = peer.lr / div
            return (Suggestion.at(lr, (lr / 2, 2 * lr), method=s.method, confidence="none",
                                  reason=s.reason),
                    f"fastai's {name} rule on the same curve" + (" / 10" if div > 1 else ""))
    d = task.recipe.default_lr
    sug = Suggestion.at(d, (d / 2, 2 * d), method=s.method, confidence="none", reason=s.reason)
    sug = sug.scaled(d / sug.lr_for(task.recipe.schedule), method=s.method,
                     confidence="none", reason=s.reason)
    return sug, "the recipe's default LR (the curve gave no usable point)"


#: without lrkit's suggestion, confirm starts from the peers' read of a curve whose smoothed
#: loss fell by more than this fraction of its start (a flat curve carries no information)
PEER_FALLBACK_DROP = 0.05
#: how far one travel step jumps, in decades, when the best confirm run sits at an edge
CONFIRM_TRAVEL = 0.5
#: confirm never travels above this multiple of the curve's band top (a constant-LR bound: for
#: a cosine peak it allows 4x the constant-LR suggestion)
CONFIRM_CEILING = 2.0


def ceiling_stop(nxt: float, ceiling: float, top: float | None) -> str:
    """Why an upward walk (confirm's travel, tune's rung-1 walk) stopped at ``ceiling``, in
    words: ``CONFIRM_CEILING`` x the range test's band ``top``, or (confirm, when its first
    window already reaches higher) that window's top LR."""
    if top is not None and math.isclose(ceiling, CONFIRM_CEILING * top, rel_tol=1e-9):
        what = f"{CONFIRM_CEILING:g}x the range test's band top"
    else:
        what = "the top of the first window of candidates"
    return (f"the next step, {nxt:.3g}, would pass the ceiling of {what} ({ceiling:.3g}), "
            "above which short runs that favour high LRs are not trusted")


#: the shortest confirm run worth reading: a run of a few steps only shows which LR lowers the
#: loss fastest at first, the highest that does not blow up (``lrkit.tune``'s rungs too)
MIN_SHORT_RUN_STEPS = 10
#: the most compute confirm may spend, as a fraction of one full run: its short runs, their
#: travel, and the longer run at the winner (``LONG_CHECK_MIN``)
CONFIRM_MAX_TOTAL = 1.0
#: what that full run leaves after the short runs goes to one longer run at the winner, read for
#: overfitting like a short run (:func:`overfit_step`), when it is at least this many short runs
#: long: a winner 3-10x above the full run's best (a short run at a high LR has not yet
#: overfit, ``benchmarks/confirm_horizon.py``) peaks inside it
LONG_CHECK_MIN = 2.0
#: ... also after the collapse rule (:func:`_overfits_beyond`) rescaled the winner to its short
#: run's end: where time rescaling favours the lower LR (seen under Adam on small data), the
#: winner's own best integrated LR lies later, and a longer run that keeps improving beyond its
#: noise moves the pick to that run's end (iris, 60 examples, Adam: 0.0063 -> 0.019, the best
#: 0.03; digits-bn seed 2, a batch-norm net whose 17-step runs sit near chance: 0.011 -> 0.032)
LONG_CHECK_COLLAPSE = True


def tail_spread(values: Sequence[float]) -> float:
    """The spread (population standard deviation) of the last quarter of a run's val
    evaluations, at least 3: the metric's own step-to-step noise (it also holds what trend is
    left, so it errs large). Confirm and ``lrkit.tune`` use it to say when two short runs cannot
    be told apart."""
    return float(np.std(list(values)[-max(3, len(values) // 4):]))


def metric_noise(values: Sequence[float]) -> float:
    """The val metric's evaluation-to-evaluation noise along one run: the larger of the spread
    of its last evaluations (:func:`tail_spread`) and its second-difference noise
    (:func:`lrkit.monitor.val_noise`). The spread alone says nothing where a schedule anneals
    the LR to 0: the run then ends on identical evaluations (spread 0)."""
    from .monitor import val_noise

    values = list(values)
    return max(tail_spread(values), val_noise(values))


def _own_noise(run: dict) -> float | None:
    """:func:`metric_noise` of a short run's own val evaluations (``run["val_curve"]``), or
    ``None`` with fewer than 4 finite ones."""
    vs = [v for _, v in _finite_points(run.get("val_curve") or [])]
    return metric_noise(vs) if len(vs) >= 4 else None


def separation(task: Any, best: dict, others: list[dict]) -> dict | None:
    """How clearly a short run ``best`` beat the runner-up among ``others`` (run dicts with
    ``lr``, ``metric``, ``diverged``; ``best`` with its ``val_curve``): the margin of their val
    metrics against the noise of the winner's own evaluations (:func:`metric_noise`).
    ``None`` without a runner-up that scored or without a val curve. Confirm mode and
    ``lrkit.tune`` say "could not tell apart" when ``clear`` is false."""
    scored = [r for r in others if not r["diverged"] and math.isfinite(float(r["metric"]))]
    noise = _own_noise(best)
    if not scored or noise is None:
        return None
    second = min(scored, key=lambda r: _rank_key(task, float(r["metric"])))
    margin = abs(float(best["metric"]) - float(second["metric"]))
    return {"runner_up_lr": float(second["lr"]), "runner_up_metric": float(second["metric"]),
            "margin": margin, "noise": noise, "clear": margin > noise}


def bracket(task: Any, best: dict, runs: Sequence[dict]) -> dict[str, Any]:
    """The short runs' uncertainty about the best LR, around the winner ``best``.

    ``below`` / ``above``: the nearest LRs under and over ``best["lr"]`` whose run scored worse
    than ``best`` beyond the noise of ``best``'s own evaluations (:func:`metric_noise`), or
    diverged; if the val metric is unimodal in the LR, the best LR for runs of this length lies
    strictly between them (``None`` on a side where no run was worse: it may lie beyond).
    ``alike``: the lowest and highest LR that scored within that noise of ``best`` (``best``'s
    own LR twice when none did)."""
    noise = _own_noise(best) or 0.0
    own, at = _rank_key(task, float(best["metric"])), float(best["lr"])
    below = above = None
    alike = [at, at]
    for r in runs:
        lr = float(r["lr"])
        if (r["diverged"] or not math.isfinite(float(r["metric"]))
                or _rank_key(task, float(r["metric"])) - own > noise):
            if lr < at and (below is None or lr > below):
                below = lr
            elif lr > at and (above is None or lr < above):
                above = lr
        else:
            alike = [min(alike[0], lr), max(alike[1], lr)]
    return {"below": below, "above": above, "alike": alike}


def range_sentence(lr_range: Sequence[float | None],
                   alike: Sequence[float] | None = None, diverged: float | None = None) -> str:
    """``TuneResult.lr_range`` in words, with the confirmation runs that scored alike
    (``alike``, the halving outcome's ``lr_alike``), or the LR at which the final run
    diverged (``diverged``: it is then the upper bound). It is the short runs' uncertainty:
    on held-out tasks the full-run best lay outside tune's on about a third of the MLP runs
    (``docs/tune.md``)."""
    if diverged is not None:
        return f"the best peak lr lies below {diverged:.3g}, where the full run diverged"
    lo, hi = lr_range
    same = (f"runs from {alike[0]:.3g} to {alike[1]:.3g} scored alike"
            if alike and alike[1] > alike[0] * 1.0001 else "")
    if lo is not None and hi is not None:
        where = f"between {lo:.3g} and {hi:.3g} (worse beyond noise at both"
    elif lo is not None:
        where = f"above {lo:.3g} (worse beyond noise there, none above"
    elif hi is not None:
        where = f"below {hi:.3g} (worse beyond noise there, none below"
    elif same:
        return f"the short {same} within noise and none was worse: they do not bound the best"
    else:
        return "no short runs bound the best peak lr"
    return f"by the short runs, the best peak lr lies {where}{'; ' + same if same else ''})"


#: how many combined standard errors of the held-out batch loss must separate two runs before
#: :func:`loss_tiebreak` overrides val's pick (a one-sided test at about 2%)
TIEBREAK_Z = 2.0


def fresh_loss(task: Any, run: dict) -> tuple[float, float] | None:
    """The mean training loss over the last quarter of a short run, and its standard error,
    when every batch of the run was new to the model (``steps x batch_size x
    accumulation_steps <= train_size``):
    the loss on a batch it has not trained on is a held-out estimate, averaged over far more
    examples than a small val split holds. ``None`` for a longer run (its batch losses then
    measure fitting, not generalising), a diverged one, an unknown ``train_size`` or fewer
    than 8 losses."""
    losses = np.asarray(run.get("losses") or run.get("train_losses") or [], dtype=float)
    size = int(getattr(task, "train_size", 0) or 0)
    if (run.get("diverged") or size <= 0 or losses.size < 8
            or losses.size * int(task.recipe.batch_size)
            * int(getattr(task.recipe, "accumulation_steps", 1) or 1) > size):
        return None
    tail = losses[-(losses.size // 4):]
    if not np.all(np.isfinite(tail)):
        return None
    return float(tail.mean()), float(tail.std(ddof=1) / math.sqrt(tail.size))


def loss_tiebreak(task: Any, best: int, runs: Sequence[dict]) -> int:
    """Break a val tie with held-out training loss: among the runs whose val metric lies within
    the noise of ``runs[best]``'s own evaluations (:func:`metric_noise`), the one whose
    :func:`fresh_loss` is lowest, when it beats ``runs[best]``'s by more than ``TIEBREAK_Z``
    combined standard errors; else ``best``. Every run compared must have a fresh loss.

    Seen on small CNNs scored by accuracy (``benchmarks/results/heldout-random.md``): after 30
    steps every LR sat within a few val images of chance, so val's pick (or a tie's lower LR)
    was noise, while the batch losses (30 x 16 new examples) fell clearly faster at the LR the
    full run preferred."""
    own, noise = fresh_loss(task, runs[best]), _own_noise(runs[best])
    if own is None or noise is None:
        return best
    pick, pick_loss = best, own
    for i, r in enumerate(runs):
        if i == best or r["diverged"] or not math.isfinite(float(r["metric"])):
            continue
        if abs(float(r["metric"]) - float(runs[best]["metric"])) > noise:
            continue
        fl = fresh_loss(task, r)
        if fl is None:
            return best
        if fl[0] + TIEBREAK_Z * math.hypot(fl[1], own[1]) < own[0] and fl[0] < pick_loss[0]:
            pick, pick_loss = i, fl
    return pick


def tiebreak_evidence(task: Any, winner: dict, val_pick: dict) -> dict:
    """What :func:`loss_tiebreak` weighed when ``winner`` beat ``val_pick`` (val's own pick):
    both val metrics and both held-out batch losses with their standard errors."""
    (lw, sw), (lv, sv) = fresh_loss(task, winner), fresh_loss(task, val_pick)  # type: ignore
    return {"val_pick_lr": float(val_pick["lr"]), "val_pick_metric": float(val_pick["metric"]),
            "loss": lw, "loss_se": sw, "val_pick_loss": lv, "val_pick_loss_se": sv}


def tiebreak_sentence(tb: dict, fmt: Callable[[float], str] = "{:.4g}".format) -> str:
    """The plain-words account of a :func:`tiebreak_evidence` (confirm's reason, tune's
    explanation)."""
    return (f"validation could not tell it from {tb['val_pick_lr']:.3g} (which scored "
            f"{fmt(tb['val_pick_metric'])}, within the noise of its evaluations), but the "
            f"training loss on batches neither run had seen before could: {tb['loss']:.4g} ± "
            f"{tb['loss_se']:.2g} against {tb['val_pick_loss']:.4g} ± "
            f"{tb['val_pick_loss_se']:.2g} over the last quarter of each run")


def _unclear(task: Any, best: dict, table: list[dict]) -> str | None:
    """Why confirm's winner cannot be told from the runner-up (:func:`separation`), or
    ``None``."""
    sep = separation(task, best, [r for r in table if r is not best])
    if sep is None or sep["clear"]:
        return None
    return (f"the runner-up at {sep['runner_up_lr']:.3g} scored {sep['runner_up_metric']:.4g}, "
            f"within the noise of the winner's own evaluations ({sep['noise']:.2g}): the "
            f"short runs could not tell these LRs apart")


def _too_short(conf: str, why: str, steps: int, candidates: int, full: int) -> tuple[str, str]:
    """Confirm's confidence and reason when its runs are under :data:`MIN_SHORT_RUN_STEPS`:
    "low", with what would give runs long enough."""
    if steps >= MIN_SHORT_RUN_STEPS:
        return conf, why
    need = MIN_SHORT_RUN_STEPS * candidates / full
    fix = (f"confirm_budget={math.ceil(100 * need) / 100:g} gives runs of "
           f"{MIN_SHORT_RUN_STEPS}" if need <= 1.0 else
           f"a {full}-step run is too short for {candidates} confirm runs of "
           f"{MIN_SHORT_RUN_STEPS}")
    return "low", (f"runs of {steps} steps only show which LR lowers the loss fastest at first "
                   f"({fix}); {why}")


def _confirm(task: Any, result: RangeTestResult, *, seed: int, candidates: int, budget: float,
             progress: bool) -> RangeTestResult:
    """Check the suggestion with short runs scored on held-out data, pick among them, and travel
    when the best is at an edge.

    Candidates: ``candidates`` LRs ``CONFIRM_SPACING`` (a quarter) decade apart, centred on the
    curve's suggestion for the task's recipe (``Suggestion.lr_for``; when the rule abstains, the
    peers' read of the same curve, see ``_confirm_centre``, and then ``CONFIRM_GUESS_SPACING``,
    a decade, apart). Each trains ``budget / candidates``
    of a full run with the recipe's schedule rebuilt for that horizon (a miniature of the full
    run, its warmup scaled: :meth:`lrkit.tasks.Recipe.warmup_for`) and is scored on the task's
    ``"val"`` split. While the best sits at an edge of the LRs tried, one more run ``CONFIRM_TRAVEL`` (half a) decade beyond it follows, until a run is worse
    or confirm has spent ``CONFIRM_MAX_TOTAL`` (one) full run; the best wins (an exact tie goes to
    the lower LR, unless the runs' losses on batches they had not seen tell them apart:
    :func:`loss_tiebreak`). The result is the centre suggestion moved by ``winner / centre``
    (every schedule setting with it), so the recipe's own setting is the winner.

    Then :func:`overfit_step` may time-rescale the winner (``benchmarks/design_overfit.py``).
    When it does not, or does by the collapse rule alone (``LONG_CHECK_COLLAPSE``), and what is
    left of the full run is at least ``LONG_CHECK_MIN`` short runs, that rest trains one longer
    run at the winner, and :func:`overfit_step` reads it the same way: a winner whose
    overfitting starts beyond the short runs' horizon is time-rescaled to the longer run's best
    val point (diabetes seed 4: 0.0049 -> 0.0012, test MSE 0.598 -> 0.503; the oracle's best LR
    0.001); after the collapse rule, a longer run that keeps improving to its end
    (:func:`_kept_improving`) moves the pick to that end (digits-bn seed 2: 0.011 -> 0.032, test
    accuracy 0.914 -> 0.981).

    Why this design (``benchmarks/design_confirm.py``, every strategy simulated on short runs at
    every grid LR, scored by the oracle's test metric): 3 candidates at 1/6 of a run each was
    the cheapest strategy within 1% of the oracle on the tasks whose best LR the training curve
    locates; travel only spends more where the window's edge wins, which is where a
    generalisation-limited best LR lies more than half a decade from the curve's suggestion.
    """
    from .train import check_scored

    s, origin = _confirm_centre(task, result)
    spacing = window_spacing(result)
    family = task.recipe.schedule
    full = task.recipe.steps
    centre = float(s.lr_for(family))
    half = (candidates - 1) / 2
    steps = max(1, int(round(budget * full / candidates)))
    runs = _ConfirmRuns(task, seed, steps, candidates, progress)
    try:
        for i in range(candidates):
            runs.trial(centre * 10 ** (spacing * (i - half)))
        check_scored(runs.table, "confirm")
        # upward travel never passes CONFIRM_CEILING x the top of the curve's band: beyond it
        # the constant-LR sweep was already climbing towards divergence, and short runs, which
        # favour high LRs, are least trustworthy there (charrnn: the window walked to 3x the
        # best peak; a step shortened to fit under the ceiling put mnist1d just past its cliff)
        band_top = s.band[1] if s.band is not None else None
        ceiling = (math.inf if result.suggestion.lr is None else
                   max(CONFIRM_CEILING * (centre if band_top is None else band_top),
                       centre * 10 ** spacing))
        travelled, stop = _travel(runs, ceiling, band_top,
                                  max(candidates, int(CONFIRM_MAX_TOTAL * full // steps)))
        best = runs.best()
        point = overfit_step(task, best, runs.table)
        collapse = point is not None and _overfits_beyond(task, best, runs.table) is not None
        horizon, long_check = steps, None
        room = min(full, int(CONFIRM_MAX_TOTAL * full) - runs.spent)
        if ((point is None or (collapse and LONG_CHECK_COLLAPSE)) and not best["diverged"]
                and room >= LONG_CHECK_MIN * steps):
            horizon, long_check, point = _long_check(runs, best, room, point, collapse)
    finally:
        runs.close()
    cost = result.cost_steps + runs.spent
    runs_said = f"{len(runs.table)} runs of {steps} steps" + (
        f" and one of {long_check['steps']} at the winner" if long_check else "")
    tried = [r["lr"] for r in runs.table]
    common = {"candidates": tried, "schedule": family,
              "runs": runs.table, "origin": origin, "travel_steps": travelled,
              # what stopped the window, for a winner left at an edge of the LRs tried
              "travel_stop": stop if best["lr"] in (min(tried), max(tried)) else None,
              "long_check": long_check, "metric": task.metric,
              "higher_is_better": task.higher_is_better, "steps": runs.spent,
              "full_run_steps": full, "fraction_of_full_run": runs.spent / full,
              "total_fraction_with_range_test": cost / full}
    said = f"started from {origin}; {runs_said} = {runs.spent / full:.2f} of a full run"
    if point is not None:
        sug, confirm = _rescaled(runs, best, point, horizon, s, centre, said, common)
        if long_check is not None and long_check["diverged"]:
            sug, confirm = _capped_by_divergence(sug, confirm, long_check)
    else:
        sug, confirm = _kept(runs, best, stop, travelled, long_check, s, centre,
                             f"{said} (range test + confirm: {cost / full:.2f})", common)
    sugs = dict(result.suggestions)
    sugs[sug.method] = sug  # ("lrkit+confirm", or "valley+confirm" from another rule)
    return replace(result, suggestion=sug, suggestions=sugs, cost_steps=cost, confirm=confirm)


class _ConfirmRuns:
    """Confirm's runs of one task and seed: :meth:`trial` trains one (``steps`` long unless
    told), scored on val every ``steps // CONFIRM_EVALS`` and at its end; the short ones go in
    ``table``; ``spent`` counts every step; :meth:`best` is the pick among ``table``.
    ``candidates`` is the first window's size."""

    def __init__(self, task: Any, seed: int, steps: int, candidates: int,
                 progress: bool) -> None:
        self.task, self.seed, self.steps, self.candidates = task, seed, steps, candidates
        self.table: list[dict] = []
        self.spent = 0
        # val's pick lost to the held-out batch losses (loss_tiebreak): {id(winner): val's}
        self.by_loss: dict[int, dict] = {}
        self.bar = None
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=candidates, desc="confirm runs", leave=False)

    def trial(self, lr: float, n: int | None = None, short: bool = True) -> dict:
        from . import train as _train

        n = self.steps if n is None else n
        if self.bar is not None and self.bar.n >= self.bar.total:
            self.bar.total += 1
        track = _ValTrack(self.task, every=max(1, n // CONFIRM_EVALS), steps=n)
        out = _train.run(self.task, lr, steps=n, seed=self.seed, eval_split="val",
                         callbacks=[track])
        self.spent += out.steps_done
        row = {"lr": lr, "steps": n, "metric": out.metric, "diverged": out.diverged,
               "scored": out.scored, "val_curve": track.curve + [(out.steps_done, out.metric)],
               "train_losses": [float(v) for v in out.losses],
               "lrs": [float(v) for v in out.lrs]}
        if short:
            self.table.append(row)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(lr=f"{lr:.2g}", metric=f"{out.metric:.4g}")
        return row

    def best(self) -> dict:
        """Val's pick (an exact tie to the lower LR), unless val could not tell it from another
        run and their held-out batch losses could (:func:`loss_tiebreak`)."""
        table = self.table
        i = min(range(len(table)), key=lambda k: (_rank_key(self.task, table[k]["metric"]),
                                                  table[k]["lr"]))
        j = loss_tiebreak(self.task, i, table)
        self.by_loss.clear()
        if j != i:
            self.by_loss[id(table[j])] = table[i]
        return table[j]

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _travel(runs: _ConfirmRuns, ceiling: float, band_top: float | None,
            max_runs: int) -> tuple[int, str | None]:
    """While the best run sits at an edge of the LRs tried, one more run ``CONFIRM_TRAVEL``
    decade beyond it, until a run is worse, the next upward step would pass ``ceiling`` (no
    shortened step: a small step up lands near the cliff), or ``max_runs`` are spent; every run
    diverged: downwards. Returns the travel steps taken and why an edge winner was not
    travelled beyond (or ``None``)."""
    task, table = runs.task, runs.table
    travelled = 0
    while True:
        best = runs.best()
        if len(table) >= max_runs:
            return travelled, (f"confirm's budget ({CONFIRM_MAX_TOTAL:g} full run of travel "
                               "and candidates) was spent")
        lrs = sorted(r["lr"] for r in table)
        if not best["diverged"] and id(best) not in runs.by_loss and sum(
                _rank_key(task, r["metric"]) == _rank_key(task, best["metric"])
                for r in table) > 1:
            return travelled, None  # a tie (the lower LR wins it): no evidence of a best beyond
        if best["lr"] == lrs[0] and not best["diverged"]:
            nxt = lrs[0] / 10 ** CONFIRM_TRAVEL
        elif best["lr"] == lrs[-1] and not best["diverged"]:
            nxt = lrs[-1] * 10 ** CONFIRM_TRAVEL
            if nxt > ceiling:
                return travelled, ceiling_stop(nxt, ceiling, band_top)
        elif all(r["diverged"] for r in table):
            nxt = lrs[0] / 10 ** CONFIRM_TRAVEL
        else:
            return travelled, None
        row = runs.trial(nxt)
        travelled += 1
        if not task.better(row["metric"], best["metric"]):
            return travelled, None


def _long_check(runs: _ConfirmRuns, best: dict, room: int, point: tuple | None,
                collapse: bool) -> tuple[int, dict, tuple | None]:
    """What the budget has left (``room`` steps): one longer run at the winner, read for the
    overfitting that sets in beyond the short runs' horizon (after the collapse rule: for
    whether the winner's own best lies later than the point the run above gave). Returns the
    horizon the overfitting point refers to, the longer run's record, and the point
    (``(fraction, why)``, the short runs' own when the longer run says nothing new)."""
    task, winner, steps = runs.task, best["lr"], runs.steps
    row = runs.trial(winner, room, short=False)
    long_check = {k: row[k] for k in ("lr", "steps", "metric", "diverged", "val_curve", "lrs")}
    if row["diverged"]:
        long_check["diverged_at"] = row["val_curve"][-1][0]  # (steps done, metric)
    own = overfit_step(task, row, [row])
    doubt = _long_rise_doubt(task, row, best, runs.table) if own is not None else None
    if doubt is not None:
        long_check["not_read"] = doubt
        own = None
    if own is not None:
        horizon, fraction = row["steps"], own[0]
        t_star = _step_at(row, fraction * _tau(row)(horizon), horizon)
        long_check["overfit_fraction"] = fraction
        return horizon, long_check, (fraction, (
            f"a longer run at the best short run's lr {winner:.3g} ({horizon} steps) overfits: "
            f"its val {task.metric} peaks at step {t_star:.0f} and then worsens"))
    if collapse and doubt is None and _kept_improving(task, row, steps):
        long_check["overfit_fraction"] = 1.0
        return row["steps"], long_check, (1.0, (
            f"the short run above replays the best one (lr {winner:.3g}) and then gets no "
            f"better, but a longer run at {winner:.3g} ({row['steps']} steps) kept improving "
            f"to its end, past the short runs' point"))
    return steps, long_check, point


def _rescaled(runs: _ConfirmRuns, best: dict, point: tuple, horizon: int, s: Suggestion,
              centre: float, said: str, common: dict) -> tuple[Suggestion, dict]:
    """Confirm's pick when the runs overfit: the winner time-rescaled so the full run ends where
    the (short or longer) run's val was best (gradient-flow time rescaling); what stopped the
    window's travel (``common["travel_stop"]``) is said when the winner is at an edge."""
    task, winner = runs.task, best["lr"]
    full = task.recipe.steps
    fraction, why = point
    rescaled = winner * fraction * horizon / full
    if common["travel_stop"]:
        low = winner == min(r["lr"] for r in runs.table)
        why += (f" (the best short run is at the {'low' if low else 'high'} edge of the LRs "
                f"tried: {common['travel_stop']})")
    why += (f", so a {full}-step run at that LR would overfit; at {rescaled:.3g} the full "
            f"run integrates the same LR as that run up to that point (gradient-flow "
            f"time rescaling); {said}. The rescaling is an estimate: where the best "
            f"LR is set by overfitting, full-length runs settle it (lrkit.search(task): a "
            f"range test and 3 full runs)")
    conf, why = _too_short("medium", why, runs.steps, runs.candidates, full)
    br = bracket(task, best, runs.table)
    return s.scaled(rescaled / centre, method=f"{s.method}+confirm", confidence=conf, reason=why), {
        **common, "winner": rescaled, "short_run_winner": winner,
        "overfit_fraction": fraction,
        "lr_range": [None if br[k] is None else br[k] * rescaled / winner
                     for k in ("below", "above")],
        "rule": ("time-rescaled: short-run winner x (the integrated LR to the best val of "
                 + ("the longer run at it" if horizon != runs.steps else "its run")
                 + " / the full run's)")}


def _kept(runs: _ConfirmRuns, best: dict, stop: str | None, travelled: int,
          long_check: dict | None, s: Suggestion, centre: float, said: str,
          common: dict) -> tuple[Suggestion, dict]:
    """Confirm's pick when no overfitting moved it: the best short run's LR, its confidence by
    where it lies among the LRs tried."""
    task, table, winner = runs.task, runs.table, best["lr"]
    lrs = sorted(r["lr"] for r in table)
    tied_out = id(best) in runs.by_loss
    if all(r["diverged"] for r in table):
        conf, why = "low", (f"every confirm run diverged; {winner:.3g} is the lowest LR tried: "
                            "lower start_lr / end_lr")
    elif winner in (lrs[0], lrs[-1]):
        subject = "the chosen LR" if tied_out else f"the best val {task.metric}"
        conf, why = "medium", (f"{subject} is at the "
                               f"{'low' if winner == lrs[0] else 'high'} edge of the LRs tried "
                               f"after {travelled} travel step(s): the best may lie beyond"
                               + (f" ({stop})" if stop else ""))
    else:
        subject = "the chosen" if tied_out else f"the best val {task.metric}"
        conf, why = "high", (f"{subject} of {len(table)} short runs lies inside "
                             "them" + (f" (the window travelled {travelled} half-decade step(s))"
                                       if travelled else ""))
    tiebreak = tiebreak_evidence(task, best, runs.by_loss[id(best)]) if tied_out else None
    unclear = _unclear(task, best, table)
    if tiebreak is not None:
        why = f"{why}; {tiebreak_sentence(tiebreak)}"
    elif unclear is not None and conf == "high":
        conf, why = "medium", f"{why}, but {unclear}"
    br = bracket(task, best, table)
    lr_range = [br["below"], br["above"]]
    pick, ranged, extra = winner, range_sentence(lr_range, br["alike"]), {}
    if long_check is not None and long_check["diverged"]:
        pick, lower = _below_divergence(table, winner)
        lo = br["below"] if br["below"] is not None and br["below"] <= pick else None
        conf, lr_range, extra = "low", [lo, winner], {"stepped_down_from": winner}
        why += (f"; but a longer run at it ({long_check['steps']} steps) diverged at step "
                f"{long_check['diverged_at']}: a full run at {winner:.3g} may diverge too, so "
                f"the pick steps down to {lower}")
        ranged = (f"the best peak lr lies below {winner:.3g}, where the longer run diverged"
                  + (f", and above {lo:.3g} (worse beyond noise there)" if lo else ""))
    elif long_check is not None:
        why += (f"; a longer run at it ({long_check['steps']} steps) "
                + (f"peaked and worsened, not read: {long_check['not_read']}"
                   if "not_read" in long_check else "did not overfit"))
    why += f"; {ranged}; {said}"
    conf, why = _too_short(conf, why, runs.steps, runs.candidates, task.recipe.steps)
    return s.scaled(pick / centre, method=f"{s.method}+confirm", confidence=conf, reason=why), {
        **common, "winner": pick, **extra,
        "loss_tiebreak": tiebreak, "lr_range": lr_range, "lr_alike": br["alike"],
        "rule": f"best val {task.metric} after {runs.steps} steps (recipe schedule rebuilt)"}


#: when the longer run at confirm's winner diverges, the pick steps down to the nearest lower
#: short run that trained (did not diverge, scored); with none below, to the winner divided by
#: this factor (one step of the candidates' spacing: a quarter decade)
LONG_DIVERGED_CUT = 10 ** CONFIRM_SPACING


def _below_divergence(table: list[dict], winner: float) -> tuple[float, str]:
    """Confirm's pick when the longer run at ``winner`` diverged, and how it was chosen in
    words: the nearest lower short run's LR that trained, else ``winner /
    LONG_DIVERGED_CUT``."""
    lower = [float(r["lr"]) for r in table if float(r["lr"]) < winner and not r["diverged"]
             and math.isfinite(float(r["metric"]))]
    if lower:
        pick = max(lower)
        return pick, f"the nearest lower short run's lr, {pick:.3g} (it trained)"
    pick = winner / LONG_DIVERGED_CUT
    return pick, (f"{pick:.3g}, {LONG_DIVERGED_CUT:.3g}x below it (no short run below it "
                  "trained)")


def _capped_by_divergence(sug: Suggestion, confirm: dict, long_check: dict
                          ) -> tuple[Suggestion, dict]:
    """A time-rescaled pick (below the short-run winner) after the longer run at the winner
    diverged: ``lr_range``'s top capped at the winner, and the reason says why."""
    lr, (lo, hi) = float(long_check["lr"]), confirm["lr_range"]
    why = (f"{sug.reason}; a longer run at the short-run winner {lr:.3g} "
           f"({long_check['steps']} steps) diverged at step {long_check['diverged_at']}: the "
           f"best peak lr lies below it")
    return replace(sug, reason=why), {**confirm,
                                      "lr_range": [lo, lr if hi is None else min(hi, lr)]}


#: validation evaluations along each confirm run (to see a run overfit)
CONFIRM_EVALS = 10
#: a confirm run overfits when, after its best val metric (step t*), the val metric got worse
#: by more than VAL_RISE (relative) by the run's end while its training loss still fell by more
#: than TRAIN_FALLS: it memorises. (A val metric that only stops improving is not enough: on
#: digits' small val split the accuracy plateaus early in a short run at the best LR.)
VAL_RISE = 0.03
TRAIN_FALLS = 0.05
#: ... and it got worse while training on: from its best to its end the run integrated at least
#: this much more LR (``tau``, the schedule included). Without it, a val metric that wobbles
#: after a step schedule's decay (the LR 10-100x lower: 5% more ``tau`` in the rest of the
#: run) read as a peak, and the final run's LR was cut ~r1/S (a random mnist1d task,
#: ``benchmarks/heldout_random_tasks.py``: 0.012 -> 0.0023, +16.7%). At a constant LR the
#: last two of ten evaluations add 25%, so constant-LR runs are read as before; a peak at 60%
#: of a cosine or 1-cycle miniature is followed by 12% / 20% more, at 50% of a step schedule
#: by 5%. The confirm simulation (``benchmarks/design_overfit.py``, 11 tasks x 5 seeds) is
#: unchanged for every value up to 0.3; at 0.2 a noisy 1-cycle winner at the edge of
#: stability (its peak at 60%: +19.95%) was no longer cut and its full run diverged.
OWN_TAU_GROWTH = 0.1


class _ValTrack:
    """Callback: the task's val metric every ``every`` steps of a confirm run of ``steps`` steps,
    except at the last: the run's own final metric (``train.run(..., eval_split="val")``) is
    that point, appended by the caller."""

    def __init__(self, task: Any, every: int, steps: int) -> None:
        self.task, self.every, self.steps = task, every, steps
        self.curve: list[tuple[int, float]] = []

    def on_train_start(self, model: nn.Module, optimizer: Any) -> None:
        self.curve = []

    def on_step_end(self, info: Any) -> None:
        if (info.step + 1) % self.every == 0 and info.step + 1 < self.steps:
            from .train import evaluating

            with evaluating(info.model):
                value = self.task.score(info.model, "val")
            self.curve.append((info.step + 1, value))

    def on_eval(self, step: int, metric: float) -> None:
        return None

    def on_train_end(self, result: Any) -> None:
        pass


def _overfit_point(task: Any, row: dict) -> tuple[int, float] | None:
    """``(t*, value)`` of the best val metric of a confirm run that overfits, else ``None``.

    The run overfits when its val metric at the end is worse than at its best (step t*, before
    the last two evaluations) by more than ``VAL_RISE`` of the best, while its training loss
    (mean over the tenth of the run before each point) still fell by more than ``TRAIN_FALLS``
    from t* to the end: the model memorises the training data."""
    curve = _finite_points(row.get("val_curve", []))
    losses = np.asarray(row.get("train_losses", []), dtype=float)
    if row["diverged"] or len(curve) < 4 or losses.size < 10:
        return None
    values = np.array([v for _, v in curve])
    sign = -1.0 if task.higher_is_better else 1.0  # lower signed value is better
    i_star = int(np.argmin(sign * values))
    if i_star >= len(curve) - 2:  # best at (or next to) the end: still improving
        return None
    t_star, t_end = curve[i_star][0], curve[-1][0]
    best = float(sign * values[i_star])
    rise = float(sign * values[-1]) - best
    window = max(1, losses.size // 10)

    def train_at(t: int) -> float:
        t = min(max(t, window), losses.size)
        return float(np.mean(losses[t - window:t]))

    l_star, l_end = train_at(t_star), train_at(t_end)
    falls = (l_star - l_end) / max(abs(l_star), 1e-12)
    if rise > VAL_RISE * max(abs(best), 1e-12) and falls > TRAIN_FALLS:
        return t_star, float(values[i_star])
    return None


#: the run above the winner "collapses" onto it when, at the same lr x t, its val metric is
#: within this fraction of the winner's own improvement (first evaluation to end) of the
#: winner's end value. Fitted on ``benchmarks/design_overfit.py`` (9 tasks x 5 seeds): 0.08-0.12
#: give the same picks, and leave-one-task-out chooses 0.10-0.12 with a held-out regret of
#: <= +1.0% on every task but digits-small.
COLLAPSE_GAP = 0.10
#: ... and more lr x t does not pay when the run above then gains less than this fraction of
#: that improvement. 0: it must get worse. The simulation preferred 0.05-0.10 (digits-small
#: +15% -> +11%), but in ``lrkit bench methods`` 0.05 moved no digits-small pick and cut one
#: mnist5k seed 12x (a training-limited task whose val merely flattens for a while).
PLATEAU_GAIN = 0.0
#: the collapse rule reads the winner's val curve only when it improved by more than this
#: fraction of its end value: below it the runs sit on a plateau (a model still near chance,
#: where every short run ends within noise of the others), and "then gets no better" is that
#: plateau, not overfitting (seen: a tiny BERT fine-tuned, 50-step runs at 3.5%: the rule cut
#: the LR 6x, to a full-run val loss 4x worse). Every collapse on the built-in tasks
#: (``design_overfit.py``) came after 43% or more, so any value from 0.035 to 0.43 picks the same
#: there (leave-one-task-out: identical); it was 0.01. The run above's rise after the match
#: does not separate the two (1-100% of the winner's gain on the built-in tasks, 16% on the
#: plateau). A metric that starts near its best (fine-tuning at a high accuracy) and overfits
#: within the short run is still caught by the winner's own peak (:func:`_overfit_point`).
MIN_LEARNED = 0.1
#: ... read as the median of the run above's last this many evaluations after the match (its
#: final evaluation alone let one noisy point cut a regression's LR 8x in tune: Friedman #1 with
#: Adam, +90.8% -> +12.1%). 3 vs 1: the simulation (``design_overfit.py``) moves diabetes
#: +0.4% -> +0.6% and no other task; ``lrkit bench methods`` (confirm on diabetes,
#: digits-small, cancer-small, digits-bn) and tune on the eleven tasks pick exactly as before
COLLAPSE_TAIL = 3


def _cum_lr(run: Mapping[str, Any]) -> np.ndarray | None:
    """A run's LR integrated over its first 0, 1, ..., n steps (the running sum of its per-step
    LRs); ``None`` without its LR trajectory (an older record)."""
    lrs = run.get("lrs") or []
    if not lrs:
        return None
    return np.concatenate([[0.0], np.cumsum(np.asarray(lrs, dtype=float))])


def _tau(run: Mapping[str, Any]) -> Callable[[float], float]:
    """``tau(t)``: the LR integrated over a run's first ``t`` steps (linear between steps), the
    gradient-flow time. Without the run's LR trajectory the LR is taken as constant: ``lr x t``."""
    cum = _cum_lr(run)
    if cum is None:
        return lambda t: float(run["lr"]) * t
    steps = np.arange(cum.size, dtype=float)
    return lambda t: float(np.interp(t, steps, cum))


def _step_at(run: Mapping[str, Any], tau: float, steps: float) -> float:
    """The step at which a run's integrated LR reaches ``tau`` (``steps`` if it never does)."""
    cum = _cum_lr(run)
    if cum is None:
        return min(steps, tau / float(run["lr"]))
    if tau >= cum[-1]:
        return float(min(steps, cum.size - 1))
    return float(np.interp(tau, cum, np.arange(cum.size, dtype=float)))


def _val_at(run: Mapping[str, Any], curve: Sequence[tuple[Any, float]],
            tau: float) -> tuple[float, float]:
    """``(step, val)``: where ``run`` (its finite val ``curve``) has integrated ``tau`` of LR,
    and its val metric there (linear between evaluations): one run read at another's
    gradient-flow time."""
    t = _step_at(run, tau, curve[-1][0])
    return t, float(np.interp(t, [x for x, _ in curve], [v for _, v in curve]))


def _overfits_beyond(task: Any, best: dict, table: list[dict]) -> str | None:
    """Why a full run at the short-run winner's LR would overfit, or ``None``.

    Gradient-flow time rescaling: in the small-LR regime a run's state depends on the LR
    integrated over its steps, ``tau(t) = sum of lr_s`` (``lr x t`` at a constant LR; for a
    schedule, the miniature's own shape), so the next higher LR tried (b) replays the winner's
    (w) run in less time. When b, at the step where its ``tau`` equals w's final one, has w's
    final val metric (within ``COLLAPSE_GAP`` of w's improvement: the two runs collapse onto one
    curve), and b then gains less than ``PLATEAU_GAIN`` of it (or gets worse) with more ``tau``,
    the val metric's best lies near w's final ``tau``: a full run at w's LR travels past it, at
    best for nothing and usually into overfitting. (When b is worse at equal ``tau``, higher
    LRs hurt by noise, not by time, and the winner stands.)"""
    if best["diverged"]:
        return None
    above = sorted((r for r in table if r["lr"] > best["lr"] and not r["diverged"]),
                   key=lambda r: r["lr"])
    curve_w = _finite_points(best.get("val_curve", []))
    if not above or len(curve_w) < 2:
        return None
    b = above[0]
    curve_b = _finite_points(b.get("val_curve", []))
    if len(curve_b) < 2:
        return None
    steps = curve_b[-1][0]
    t_match, matched = _val_at(b, curve_b, _tau(best)(curve_w[-1][0]))
    w_metric, b_metric = curve_w[-1][1], curve_b[-1][1]  # the end: the runs' metrics
    w_end, b_end = _rank_key(task, w_metric), _rank_key(task, b_metric)
    gap = _rank_key(task, matched) - w_end
    size = abs(curve_w[0][1] - w_metric)
    if size <= MIN_LEARNED * abs(w_metric):  # the winner barely learned: no curve to read
        return None
    # "then gets no better": the median of b's last COLLAPSE_TAIL evaluations after the match,
    # so that one noisy final evaluation cannot decide (seen on a regression's val loss)
    tail = [_rank_key(task, v) for t, v in curve_b if t > t_match][-COLLAPSE_TAIL:]
    b_tail = float(np.median(tail)) if tail else b_end
    if gap <= COLLAPSE_GAP * size and b_tail > _rank_key(task, matched) - PLATEAU_GAIN * size:
        return (f"the short run at lr {b['lr']:.3g} reaches the best run's (lr "
                f"{best['lr']:.3g}) integrated lr at step {t_match:.0f} with its val "
                f"{task.metric} ({matched:.4g} against {w_metric:.4g}) and then gets no better "
                f"({b_metric:.4g} at step {steps})")
    return None


def _kept_improving(task: Any, long: dict, steps: int) -> bool:
    """Whether the longer run's val metric at its end is better than at step ``steps`` (the
    short runs' end) by more than twice its evaluations' noise."""
    curve = _finite_points(long.get("val_curve", []))
    if long.get("diverged") or len(curve) < 4:
        return False
    values = [v for _, v in curve]
    at = float(np.interp(steps, [t for t, _ in curve], values))
    gain = _rank_key(task, at) - _rank_key(task, values[-1])
    return gain > 2.0 * metric_noise(values)


def _long_rise_doubt(task: Any, long: dict, best: dict, runs: list[dict]) -> str | None:
    """Why the longer run's val peak (:func:`_overfit_point`) may not time-rescale the winner,
    or ``None`` when it may. Two checks the short runs do not need (there the run above and
    the runs below at the same horizon are the comparison), each seen failing on random
    held-out tasks (``benchmarks/heldout_random_tasks.py``):

    - the rise from the peak to the end is beyond twice the longer run's own noise
      (:func:`metric_noise`): an RMSprop run at a constant LR on mnist1d fell 0.46 -> 0.43
      in val accuracy with evaluations jumping by 0.02-0.05, and the LR was cut 5x
      (+6.4% instead of -0.6%);
    - time rescaling holds below the winner: the nearest short run at a lower LR, at its end,
      scores no worse than the winner's short run at the same integrated LR (within
      ``COLLAPSE_GAP`` of the winner's improvement). Where the lower LR is worse at equal
      ``lr x t``, a full run at the rescaled LR does not replay the longer run's best point:
      RMSprop's first steps, with no bias correction, are ~10x the LR whatever it is (a
      diabetes regression under cosine: the winner's short run had val MSE 0.555 where the run
      below ended at 0.612 at the same ``lr x t``; rescaled 8-16x down, +20.7% instead of
      +3.9%)."""
    values = [v for _, v in _finite_points(long.get("val_curve", []))]
    peak = _overfit_point(task, long)
    if peak is None:
        return "no peak"
    noise = metric_noise(values)
    if abs(values[-1] - peak[1]) <= 2.0 * noise:
        return (f"its rise, {abs(values[-1] - peak[1]):.3g}, is within twice its evaluations' "
                f"noise ({noise:.3g})")
    below = sorted((r for r in runs if r["lr"] < best["lr"] and not r["diverged"]),
                   key=lambda r: r["lr"])
    curve_w = _finite_points(best.get("val_curve", []))
    curve_b = _finite_points(below[-1].get("val_curve", [])) if below else []
    if len(curve_w) < 2 or not curve_b:
        return "no short run below the winner to check time rescaling against"
    _, matched = _val_at(best, curve_w, _tau(below[-1])(curve_b[-1][0]))
    size = abs(curve_w[0][1] - curve_w[-1][1])
    if _rank_key(task, curve_b[-1][1]) - _rank_key(task, matched) > COLLAPSE_GAP * size:
        return (f"the run at {below[-1]['lr']:.3g} ends worse ({curve_b[-1][1]:.4g}) than the "
                f"winner was at the same integrated LR ({matched:.4g}): time rescaling does not "
                "hold")
    return None


def overfit_step(task: Any, best: dict, runs: list[dict]) -> tuple[float, str] | None:
    """``(fraction, why)`` when a full run at the best short run's LR would overfit, else
    ``None``. ``fraction = tau(t*) / tau(end)``: the share of the short run's integrated LR at
    which its val metric was best; the full run then takes ``lr x fraction x steps / full_steps``
    and covers the same integrated LR (``lr x t*`` at a constant LR, the miniature's shape
    otherwise). First the run above replaying it (``_overfits_beyond``: t* is the short run's
    end, fraction 1), then the best run's own val peak (``_overfit_point``), read only when
    the run integrated ``OWN_TAU_GROWTH`` more LR after it and no run below it dips at the same
    step (:func:`_dips_below`). ``runs`` are the
    short runs of one horizon and one schedule family, ``best`` among them; each a dict with
    ``lr``, ``metric``, ``diverged``, ``val_curve``, ``train_losses`` and (optional) ``lrs``.
    Neither rule reads a best run whose training loss fell by less than ``MIN_TRAIN_FALL``.
    Shared by confirm mode and ``lrkit.tune``."""
    if _train_fall(best) < MIN_TRAIN_FALL:
        return None
    beyond = _overfits_beyond(task, best, runs)
    if beyond is not None:
        return 1.0, beyond
    own = _overfit_point(task, best)
    if own is not None:
        steps = _finite_points(best["val_curve"])[-1][0]
        tau = _tau(best)
        if tau(steps) < (1.0 + OWN_TAU_GROWTH) * tau(own[0]):
            return None  # worse after an LR annealed away: not from training further
        if _dips_below(task, best, runs, own[0]):
            return None
        return tau(own[0]) / tau(steps), (
            f"the best short run (lr {best['lr']:.3g}) overfits: its val {task.metric} peaks at "
            f"step {own[0]} of {steps} and then worsens")
    return None


#: the best short run's training loss must have fallen by this share of its start (mean of
#: its first tenth against its last tenth) before its val curve is read for an optimum in
#: ``lr x t``: a model still near its start has a val plateau, not a best point, and the
#: collapse and own-peak rules read it as one (a random MNIST-1D MLP, ``heldout_random_tasks.py
#: --seed 6`` row 0: tune's 30-step runs near chance, training loss down 15%, the final LR cut
#: 5x, test accuracy 0.219 against 0.272 unrescaled and 0.36 at the grid's best). Every rescale
#: on the built-in tasks (``design_overfit.py``, 311) came after a fall of 45% or more (median
#: 82%), so any value up to 0.44 picks the same there; 0.3 leaves room on both sides.
MIN_TRAIN_FALL = 0.3


def _train_fall(run: Mapping[str, Any]) -> float:
    """The share by which ``run``'s training loss fell: 1 - mean(last tenth) / mean(first
    tenth); ``inf`` when it has no usable losses (nothing to say: the rules decide)."""
    losses = np.asarray(run.get("train_losses", []), dtype=float)
    losses = losses[np.isfinite(losses)]
    if losses.size < 10:
        return math.inf
    k = losses.size // 10
    first = float(np.mean(losses[:k]))
    if first <= 0:
        return math.inf
    return 1.0 - float(np.mean(losses[-k:])) / first


def _dips_below(task: Any, best: dict, runs: list[dict], t_star: float) -> bool:
    """Whether a run at a lower LR (same horizon and family) also peaks and worsens
    (:func:`_overfit_point`) at the very step ``t_star`` where the best run's own val peaks.

    Overfitting comes with training further, at an integrated LR (gradient-flow time): a run
    at a lower LR reaches the best run's peak at a later step, if at all. The runs of one rung
    share their batches (one seed), so a dip at the same step in runs at different LRs is
    that batch order or the val split's noise, not memorising. Seen on digits (tune, seed 2):
    the 36-step runs at 0.229 and 0.129 both peaked at step 30 and fell 8% and 4% in
    validation accuracy by step 36; read as overfitting, the final run took 0.1x the winner's
    LR, the monitor flagged it as 10x too low, and it scored 0.939 test accuracy (0.964 at the
    winner's LR). Only the same step counts: on diabetes (seed 1) a run below peaks at step 28
    of 78 and the winner at 49, on val curves that jump by 25% between evaluations, and the
    rescale there is right (a full run at the winner's LR: test MSE 0.498 against 0.481).
    Only at a constant LR from the peak on: under a schedule every run passes the same phase
    at the same step, and a dip there (a one-cycle's high-LR middle) says the peak is too high,
    which the rescale answers (a random diabetes task, 1-cycle miniatures of 36 steps at 0.025
    and 0.045 both best at step 12: rescaled, test MSE 0.592; not, 0.617)."""
    lrs = best.get("lrs")
    if lrs is not None and len(lrs) > int(t_star):
        tail = np.asarray(lrs[int(t_star):], dtype=float)
        if tail.size and tail.max() - tail.min() > 0.01 * abs(tail.max()):
            return False
    for r in runs:
        if r.get("diverged") or float(r["lr"]) >= float(best["lr"]):
            continue
        point = _overfit_point(task, r)
        if point is not None and point[0] == t_star:
            return True
    return False


def _finite_points(curve: Iterable) -> list[tuple[Any, float]]:
    """The ``(step, value)`` points of a val curve whose value is a finite number (a curve read
    back from JSON may hold ``None`` or ``"NaN"`` / ``"Infinity"`` strings), one per step: a
    run's curve ends with its final metric at the step of its last tracked evaluation, and a
    repeated point would count as one more evaluation after the best (the last one kept)."""
    out: list[tuple[Any, float]] = []
    for t, v in curve:
        try:
            v = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(v):
            if out and out[-1][0] == t:
                out[-1] = (t, v)
            else:
                out.append((t, v))
    return out


def _rank_key(task: Any, metric: float) -> float:
    if metric != metric:
        return math.inf
    return -metric if task.higher_is_better else metric


# ----------------------------------------------------------------------------------- the CLI
def add_find_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``lrkit find`` (wire with ``parser.set_defaults(func=cli_find)``)."""
    parser.add_argument("--task", required=True, help="built-in task name or module:function")
    parser.add_argument("--plot", default=None, help="write the curve to this PNG")
    parser.add_argument("--json", default=None, help="write the result to this JSON file")
    parser.add_argument("--num-iter", type=int, default=100,
                        help="steps of the sweep (beyond 100: repeats of a 100-step sweep)")
    parser.add_argument("--start-lr", type=float, default=1e-7, help="the sweep's first LR")
    parser.add_argument("--end-lr", type=float, default=10.0, help="the sweep's last LR")
    parser.add_argument("--method", default="lrkit", choices=list(_suggest.methods()),
                        help="the rule read off the curve (lrkit's, or a peer's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the model and the batches")
    parser.add_argument("--confirm", action="store_true",
                        help="confirm with short runs scored on held-out data")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def cli_find(args: argparse.Namespace) -> int:
    """``lrkit find --task NAME [--plot out.png] [--json out.json]``: print the suggestion."""
    from . import tasks

    task = tasks.load(args.task) if ":" in args.task else tasks.get(args.task)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    res = find_lr(task, num_iter=args.num_iter, start_lr=args.start_lr, end_lr=args.end_lr,
                  method=args.method, seed=args.seed, confirm=args.confirm,
                  progress=not args.no_progress)
    if args.json:  # the files first: a reader that goes (`| head -1`) does not lose them
        res.to_json(args.json)
    if args.plot:
        res.plot(args.plot)
    s = res.suggestion
    print(f"range test on {task.name}: {res.stop_reason} after {res.stopped_at + 1} steps")
    if s.lr is None:
        print(f"no suggestion: {s.reason}")
    else:
        print(f"suggested lr ({s.method}): {s.lr:.3g}   band {s.band[0]:.3g} .. {s.band[1]:.3g}"
              if s.band else f"suggested lr ({s.method}): {s.lr:.3g}")
        print(f"for {task.name}'s recipe ({task.recipe.schedule}): lr "
              f"{s.lr_for(task.recipe.schedule):.3g}")
        print(f"confidence: {s.confidence} ({s.reason})")
        for fam, st in s.schedules.items():
            print(f"  {fam:14s} " + ", ".join(f"{k}={v:.3g}" for k, v in st.items()))
    others = ", ".join(f"{k}={v.lr:.3g}" for k, v in res.suggestions.items()
                       if v.lr is not None and k != s.method)
    print(f"other rules: {others}")
    print(f"cost: {res.cost_steps} steps ({res.cost_steps / task.recipe.steps:.2f} of a full run)")
    for written in (args.json, args.plot):
        if written:
            print(f"wrote {written}")
    return 0


#: the ``lrkit find`` command, for the CLI's command table
add_cli_arguments = add_find_arguments
cli_main = cli_find
