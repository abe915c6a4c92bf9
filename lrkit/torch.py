"""PyTorch adapter: drive a torch optimizer with a lrkit :class:`~lrkit.schedules.Schedule`.

:class:`LRSchedule` is a real ``torch.optim.lr_scheduler.LRScheduler`` subclass, so plain loops,
PyTorch Lightning and Hugging Face Trainer accept it. It keeps **one integer clock**: the number of
optimizer updates that really happened (a ``GradScaler`` that skips a step on inf/NaN gradients
does not advance it). ``step()`` evaluates the schedule in closed form at that clock:

    lr_i(t) = group_scales[i] * plateau_scale * schedule(t)

and, where the schedule cycles momentum (``cyclic``, ``onecycle``), sets ``momentum`` (SGD,
RMSprop) or ``betas[0]`` (Adam family) to ``schedule.momentum(t)``. Resume = restore the clock.

:class:`Plateau` is ReduceLROnPlateau's rule (same parameter names) as a pure function of the
metric history; it holds a multiplicative scale that **composes** with any schedule (warmup then
reduce-on-plateau, cosine whose scale is cut when the validation metric stalls).

>>> import torch
>>> from lrkit import schedules
>>> p = torch.nn.Parameter(torch.zeros(2))
>>> opt = torch.optim.SGD([p], lr=1.0, momentum=0.9)
>>> sched = LRSchedule(opt, schedules.cosine(0.1, 100))
>>> opt.param_groups[0]["lr"]
0.1
"""

from __future__ import annotations

import math
import warnings
import weakref
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from .errors import check_choice, check_finite, check_int, check_positive, check_range
from .schedules import Schedule, from_spec

__all__ = ["LRSchedule", "Plateau", "PlateauState", "HorizonWarning"]

_STATE_VERSION = 1


class HorizonWarning(UserWarning):
    """Training ran past the horizon a finite schedule was built for (warned once per run)."""


# ---------------------------------------------------------------------------------- plateau rule
@dataclass(frozen=True)
class PlateauState:
    """What a :class:`Plateau` rule remembers: its scale, best metric and counters."""

    scale: float = 1.0
    best: float = math.inf  # +inf (mode "min") or -inf (mode "max") before the first report
    num_bad: int = 0
    cooldown_counter: int = 0
    reports: int = 0
    cuts: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PlateauState:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


@dataclass(frozen=True, kw_only=True)
class Plateau:
    """ReduceLROnPlateau's rule as a multiplicative scale that composes with a schedule.

    Same names and semantics as ``torch.optim.lr_scheduler.ReduceLROnPlateau``: a report is
    *better* when ``metric < best * (1 - threshold)`` (min, rel), ``metric < best - threshold``
    (min, abs), ``metric > best * (1 + threshold)`` (max, rel) or ``metric > best + threshold``
    (max, abs); a NaN is never better. After more than ``patience`` reports without improvement the
    scale becomes ``max(scale * factor, min_scale)``, then ``cooldown`` reports are ignored.
    Differences: it scales instead of setting an LR (``min_scale`` replaces ``min_lr``, and torch's
    ``eps`` on absolute LR changes does not apply), and :meth:`update` is pure.

    >>> rule = Plateau(patience=1, factor=0.5)
    >>> s = rule.initial()
    >>> for m in (1.0, 1.0, 1.0):
    ...     s = rule.update(s, m)
    >>> s.scale
    0.5
    """

    mode: str = "min"
    factor: float = 0.1
    patience: int = 10
    threshold: float = 1e-4
    threshold_mode: str = "rel"
    cooldown: int = 0
    min_scale: float = 0.0

    def __post_init__(self) -> None:
        check_choice("mode", self.mode, ("min", "max"))
        checked = {
            "factor": check_range("factor", self.factor, 0.0, 1.0, low_open=True, high_open=True),
            "patience": check_int("patience", self.patience, minimum=0),
            "threshold": check_positive("threshold", self.threshold, allow_zero=True),
            "cooldown": check_int("cooldown", self.cooldown, minimum=0),
            "min_scale": check_range("min_scale", self.min_scale, 0.0, 1.0),
        }
        check_choice("threshold_mode", self.threshold_mode, ("rel", "abs"))
        for key, value in checked.items():
            object.__setattr__(self, key, value)

    def initial(self) -> PlateauState:
        """The state before any report: scale 1, best = +inf (min) or -inf (max)."""
        return PlateauState(best=math.inf if self.mode == "min" else -math.inf)

    def is_better(self, metric: float, best: float) -> bool:
        """Whether ``metric`` improves on ``best`` by more than the threshold."""
        rel = self.threshold_mode == "rel"
        if self.mode == "min":
            return metric < (best * (1.0 - self.threshold) if rel else best - self.threshold)
        return metric > (best * (1.0 + self.threshold) if rel else best + self.threshold)

    def update(self, state: PlateauState, metric: Any) -> PlateauState:
        """The state after one more report of ``metric`` (pure; ``state`` is not changed)."""
        if not isinstance(state, PlateauState):
            raise TypeError(f"state must be a PlateauState, got {type(state).__name__}")
        value = _as_metric(metric)
        best, num_bad = state.best, state.num_bad
        if self.is_better(value, best):
            best, num_bad = value, 0
        else:
            num_bad += 1
        cooldown_counter = state.cooldown_counter
        if cooldown_counter > 0:
            cooldown_counter -= 1
            num_bad = 0
        scale, cuts = state.scale, state.cuts
        if num_bad > self.patience:
            new = max(scale * self.factor, self.min_scale)
            if new < scale:
                scale, cuts = new, cuts + 1
            cooldown_counter = self.cooldown
            num_bad = 0
        return PlateauState(scale, best, num_bad, cooldown_counter, state.reports + 1, cuts)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _as_metric(metric: Any) -> float:
    if isinstance(metric, bool):
        raise TypeError(f"metric must be a real number, got {metric!r}")
    try:
        return float(metric)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(
            f"metric must be a real number (or a 1-element tensor), got {metric!r} "
            f"({type(metric).__name__})"
        ) from None


# ---------------------------------------------------------------------------------- the adapter
def _check_group_scales(group_scales: Any, n: int) -> list[float]:
    if group_scales is None:
        return [1.0] * n
    if isinstance(group_scales, (str, bytes, Mapping)) or not isinstance(group_scales, Sequence):
        if isinstance(group_scales, torch.Tensor) or hasattr(group_scales, "tolist"):
            group_scales = group_scales.tolist()
        else:
            raise TypeError(
                f"group_scales must be a list of positive floats, one per param group, "
                f"got {group_scales!r} ({type(group_scales).__name__})"
            )
    if len(group_scales) != n:
        raise ValueError(
            f"group_scales must have one entry per optimizer param group ({n}), "
            f"got {len(group_scales)}: {list(group_scales)!r}"
        )
    return [check_positive(f"group_scales[{i}]", v) for i, v in enumerate(group_scales)]


def _momentum_key(group: Mapping[str, Any]) -> str | None:
    if "betas" in group:
        return "betas"
    if "momentum" in group:
        return "momentum"
    return None


class LRSchedule(LRScheduler):
    """Apply ``schedule`` to ``optimizer``: group ``i`` gets ``group_scales[i] * plateau_scale *
    schedule(t)`` where ``t`` counts the optimizer updates that really happened.

    Args:
        optimizer: any ``torch.optim.Optimizer``. Its configured ``lr`` is overwritten: the
            schedule gives absolute learning rates (use ``group_scales`` for per-group ratios).
        schedule: a :class:`~lrkit.schedules.Schedule`, its spec dict, or any callable
            ``step -> lr`` (a plain callable has no momentum and no horizon).
        group_scales: one positive factor per param group (discriminative LRs); default all 1.
        plateau: a :class:`Plateau` rule fed through :meth:`report` (or ``step(metric)``).
        clock: ``"updates"`` (default): ``t`` = optimizer updates done, seen through an optimizer
            step post-hook, so skipped AMP steps do not count and calling ``step()`` twice is
            harmless; ``"calls"``: ``t`` = number of ``step()`` calls (PyTorch's convention, for
            schedules indexed by epochs).

    Construction sets the LR (and momentum) of step 0 at once, like PyTorch. ``step()`` may be
    called after every ``optimizer.step()`` (or less often; with Lightning use
    ``interval="step"``). Past a finite schedule's ``horizon`` it warns once
    (:class:`HorizonWarning`) and the schedule holds its final value; it never raises.
    ``state_dict()`` holds plain data only (``torch.load(weights_only=True)`` works); the
    schedule, scales and plateau rule come from the constructor, the clock and plateau state from
    the checkpoint. ``last_epoch`` is the clock, ``base_lrs`` the step-0 LRs, ``get_last_lr()``
    the LRs set last. A copy (``copy.deepcopy``, ``pickle``, ``torch.save`` of the object) goes
    on from where the original was. It sets absolute LRs each step, so torch's
    ``ReduceLROnPlateau`` beside it cuts once, never more: use ``plateau=`` instead.

    Raises:
        TypeError: ``optimizer`` not an Optimizer, ``schedule`` not callable, ``plateau`` not a
            Plateau, ``group_scales`` not a list.
        ValueError: wrong ``group_scales`` length or a non-finite / non-positive scale; a schedule
            that cycles momentum (at any step) on an optimizer with neither ``momentum`` nor
            ``betas``.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        schedule: Schedule | Mapping[str, Any] | Callable[[int], float],
        *,
        group_scales: Sequence[float] | None = None,
        plateau: Plateau | None = None,
        clock: str = "updates",
    ) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
            )
        if isinstance(schedule, Mapping):
            schedule = from_spec(schedule)
        if isinstance(schedule, Schedule):
            self._lr_fn: Callable[[int], float] = schedule._lr
            cycles = schedule._mom_within(None)  # at any step (a sequence may start late)
            self._mom_fn: Callable[[int], float | None] | None = schedule._mom if cycles else None
            self._trusted = True
            self._horizon = schedule.horizon
        elif callable(schedule) and not isinstance(schedule, (int, float, torch.Tensor)):
            self._lr_fn, self._mom_fn, self._trusted, self._horizon = schedule, None, False, None
        else:
            raise TypeError(
                "schedule must be a lrkit Schedule, its spec dict, or a callable step -> lr, "
                f"got {schedule!r} ({type(schedule).__name__}); for a fixed LR use "
                "lrkit.schedules.constant(lr)"
            )
        self.schedule = schedule
        groups = optimizer.param_groups
        self._scales = _check_group_scales(group_scales, len(groups))
        if plateau is not None and not isinstance(plateau, Plateau):
            raise TypeError(
                f"plateau must be a lrkit.torch.Plateau or None, got {type(plateau).__name__}"
            )
        self.plateau = plateau
        self._plateau_state = plateau.initial() if plateau is not None else None
        self.clock = check_choice("clock", clock, ("updates", "calls"))
        self._updates = 0
        self._horizon_warned = False
        self._opt_stepped = False  # optimizer.step() seen since construction

        lr0 = self._lr_at(0)
        if self._mom_fn is not None:
            for i, g in enumerate(groups):
                if _momentum_key(g) is None:
                    raise ValueError(
                        f"schedule cycles momentum (at some step) but optimizer "
                        f"{type(optimizer).__name__} param group {i} has neither 'momentum' nor "
                        "'betas'; use an optimizer with momentum (SGD, RMSprop) or betas (Adam "
                        "family), or a schedule with cycle_momentum=False"
                    )

        self._watch_optimizer(optimizer)
        super().__init__(optimizer)  # sets initial_lr / base_lrs, then step() applies step 0
        self.base_lrs = [s * lr0 for s in self._scales]
        for g, base in zip(groups, self.base_lrs):
            g["initial_lr"] = base

    def _watch_optimizer(self, optimizer: Optimizer) -> None:
        """Register the step post-hook that sees optimizer updates (and counts them with
        ``clock="updates"``)."""
        me = weakref.ref(self)

        def count_update(opt: Optimizer, args: Any, kwargs: Any) -> None:
            sched = me()
            if sched is None:
                return
            sched._opt_stepped = True
            # fused optimizers get GradScaler's verdict as `found_inf` and skip in the kernel
            found_inf = getattr(opt, "found_inf", None)
            if isinstance(found_inf, torch.Tensor) and bool(found_inf.item()):
                return
            if sched.clock == "updates":
                sched._updates += 1

        handle = optimizer.register_step_post_hook(count_update)
        weakref.finalize(self, handle.remove)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """After ``copy.deepcopy``, ``pickle`` or ``torch.save``/``load`` (of the schedule, alone
        or with its optimizer): torch's Optimizer does not carry step hooks over, so the copy
        registers its own on its (copied) optimizer; without it the clock stopped."""
        self.__dict__.update(state)
        self.__dict__.setdefault("_opt_stepped", True)
        self._watch_optimizer(self.optimizer)

    # -- evaluation ---------------------------------------------------------------------------
    def _lr_at(self, t: int) -> float:
        lr = self._lr_fn(t)
        if not self._trusted:
            if isinstance(lr, torch.Tensor):
                lr = lr.item()
            lr = check_finite(f"schedule({t})", lr)
            if lr < 0:
                raise ValueError(f"schedule({t}) must be >= 0, got {lr!r}")
        return lr

    def _plateau_scale(self) -> float:
        return 1.0 if self._plateau_state is None else self._plateau_state.scale

    def get_lr(self) -> list[float]:
        """The LRs for the current clock (closed form; no side effects)."""
        lr = self._plateau_scale() * self._lr_at(max(self.last_epoch, 0))
        return [s * lr for s in self._scales]

    _get_closed_form_lr = get_lr

    def _apply(self, t: int) -> None:
        self.last_epoch = t
        lr = self._lr_at(t)
        if self._plateau_state is not None:
            lr *= self._plateau_state.scale
        groups = self.optimizer.param_groups
        scales = self._scales
        if len(groups) != len(scales):
            raise ValueError(
                f"the optimizer has {len(groups)} param groups but group_scales has "
                f"{len(scales)} (a group was added after the LRSchedule was built); build a new "
                f"LRSchedule with {len(groups)} group_scales and carry the clock over: "
                "new = LRSchedule(optimizer, schedule, group_scales=[...]); "
                "new.load_state_dict(old.state_dict())"
            )
        last = []
        for g, s in zip(groups, scales):
            v = s * lr
            cur = g["lr"]
            if isinstance(cur, torch.Tensor):
                cur.fill_(v)
                last.append(cur.clone())
            else:
                g["lr"] = v
                last.append(v)
        self._last_lr = last
        if self._mom_fn is not None:
            m = self._mom_fn(t)
            if m is not None:
                for i, g in enumerate(groups):
                    if "betas" in g:
                        b = g["betas"]
                        if isinstance(b[0], torch.Tensor):
                            b[0].fill_(m)
                        else:
                            g["betas"] = (m, *b[1:])
                    elif "momentum" in g:
                        g["momentum"] = m
                    else:
                        raise ValueError(
                            f"schedule cycles momentum at step {t} but param group {i} has "
                            "neither 'momentum' nor 'betas'"
                        )
        h = self._horizon
        if h is not None and t > h and not self._horizon_warned:
            self._horizon_warned = True
            warnings.warn(
                f"training ran past the schedule's horizon: {t} optimizer updates done, but "
                f"the schedule was built for {h} (steps 0..{h - 1}). It holds its final value "
                f"from here on: lr = {lr:.6g}"
                + ("" if len(scales) == 1 else " (times each group's scale)")
                + ". Build the schedule for the real number of steps, or continue it explicitly "
                "(schedules.sequence / cooldown). (PyTorch's OneCycleLR would raise "
                "'Tried to step ... times' here.)",
                HorizonWarning,
                stacklevel=3,
            )

    # -- the LRScheduler contract -------------------------------------------------------------
    def step(self, metric: Any = None) -> None:  # type: ignore[override]
        """Set the LR (and momentum) for the current number of optimizer updates.

        With ``metric`` (ReduceLROnPlateau's calling convention, e.g. Lightning's
        ``reduce_on_plateau=True``) the metric is also passed to :meth:`report`.
        """
        if self.clock == "calls" and not self._is_initial:
            if self._step_count == 1 and not self._opt_stepped:
                warnings.warn(
                    "Detected call of `LRSchedule.step()` before `optimizer.step()` with "
                    "clock='calls': the clock counts step() calls, so this skips the schedule's "
                    "value of step 0. Call optimizer.step() first (as PyTorch asks), or use "
                    "clock='updates', which counts the optimizer updates themselves.",
                    UserWarning,
                    stacklevel=2,
                )
            self._updates += 1
        self._step_count += 1
        if metric is not None:
            if self.plateau is None:
                raise TypeError(
                    "LRSchedule.step() takes a metric only with a plateau rule "
                    "(LRSchedule(..., plateau=Plateau(...))); its clock counts optimizer updates, "
                    f"so there is no epoch argument; got step({metric!r})"
                )
            self._plateau_state = self.plateau.update(self._plateau_state, metric)
        self._apply(self._updates)

    def _update_lr(self, epoch: int | None = None) -> None:
        """PyTorch's hook for a scheduler set to a given step: ``SequentialLR`` starts the next
        scheduler at its milestone with ``_update_lr(0)``. The clock restarts there (it counted
        updates since construction: in ``SequentialLR([LinearLR warmup, LRSchedule(cosine)])``
        the cosine jumped from its step 0 to its step 11 one update after the milestone)."""
        if epoch is None:
            self.step()
            return
        self._updates = check_int("epoch", epoch, minimum=0)
        self._apply(self._updates)

    def report(self, metric: Any) -> bool:
        """Feed a validation metric to the plateau rule; returns True when it cut the scale.

        A cut applies at once (the next optimizer update uses it); the clock does not move.
        """
        if self.plateau is None:
            raise ValueError(
                "report() needs a plateau rule: build LRSchedule(..., plateau=Plateau(...)); "
                "this one has plateau=None"
            )
        before = self._plateau_state
        self._plateau_state = self.plateau.update(before, metric)
        cut = self._plateau_state.scale != before.scale
        if cut:
            self._apply(self.last_epoch)
        return cut

    @property
    def plateau_state(self) -> PlateauState | None:
        """The plateau rule's state (``None`` without a rule)."""
        return self._plateau_state

    @property
    def updates(self) -> int:
        """The clock: optimizer updates done (or ``step()`` calls with ``clock="calls"``)."""
        return self._updates

    def state_dict(self) -> dict[str, Any]:
        """Plain-data state: the clock, the plateau state, and informational config."""
        return {
            "version": _STATE_VERSION,
            "updates": self._updates,
            "last_epoch": self.last_epoch,
            "_step_count": self._step_count,
            "horizon_warned": self._horizon_warned,
            "plateau_state": None if self._plateau_state is None else self._plateau_state.to_dict(),
            # informational (the constructor's values are used on load):
            "clock": self.clock,
            "group_scales": list(self._scales),
            "plateau": None if self.plateau is None else self.plateau.to_dict(),
            "schedule": self.schedule.spec if isinstance(self.schedule, Schedule) else None,
            "base_lrs": list(self.base_lrs),
            "_last_lr": list(self._last_lr),
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore the clock and plateau state, then set the LR (and momentum) they give.

        The schedule may differ from the checkpoint's (e.g. branch a cooldown from a checkpoint),
        and so may ``group_scales``: this LRSchedule's own apply, to as many param groups as its
        optimizer has (carry the clock over after ``add_param_group``:
        ``new.load_state_dict(old.state_dict())``).

        Raises:
            ValueError: not an LRSchedule state, another format ``version``, another ``clock``
                (its count means something else), a negative ``updates`` / ``last_epoch``, or a
                plateau state for an LRSchedule without a plateau rule.
            TypeError: ``updates`` / ``last_epoch`` not an integer.
        """
        if not isinstance(state_dict, Mapping) or "updates" not in state_dict:
            is_map = isinstance(state_dict, Mapping)
            got = sorted(state_dict) if is_map else type(state_dict).__name__
            raise ValueError(
                "state_dict must come from LRSchedule.state_dict() (with an 'updates' key), "
                f"got {got!r}"
            )
        version = state_dict.get("version", _STATE_VERSION)
        if version != _STATE_VERSION:
            raise ValueError(
                f"state_dict['version'] must be {_STATE_VERSION} (the format this lrkit reads), "
                f"got {version!r}: it was saved by another lrkit"
            )
        clock = state_dict.get("clock", self.clock)
        if clock != self.clock:
            raise ValueError(
                f"state_dict['clock'] is {clock!r} but this LRSchedule has clock={self.clock!r}: "
                "its 'updates' counts something else; build the LRSchedule with "
                f"clock={clock!r}"
            )
        updates = check_int("state_dict['updates']", state_dict["updates"], minimum=0)
        last_epoch = check_int(
            "state_dict['last_epoch']", state_dict.get("last_epoch", updates), minimum=0
        )
        step_count = check_int(
            "state_dict['_step_count']", state_dict.get("_step_count", self._step_count), minimum=0
        )
        ps = state_dict.get("plateau_state")
        if ps is not None and self.plateau is None:
            raise ValueError(
                "state_dict holds a plateau state (scale "
                f"{ps.get('scale')!r}) but this LRSchedule has plateau=None; pass the same "
                "plateau=Plateau(...) as the run that saved it"
            )
        self._updates = updates
        self._step_count = step_count
        self._horizon_warned = bool(state_dict.get("horizon_warned", False))
        if self.plateau is not None:
            self._plateau_state = (
                PlateauState.from_dict(ps) if ps is not None else self.plateau.initial()
            )
        self._apply(last_epoch)
