"""Learning-rate schedules as pure, immutable functions of the step (stdlib only, no torch).

A :class:`Schedule` maps the 0-based index of an optimizer step to the learning rate that step
uses: ``s(step) -> float``. ``s.momentum(step)`` gives the momentum (or Adam ``beta1``) for the
families that cycle it, else ``None``. ``s.spec`` is a JSON-able dict and ``from_spec(s.spec)``
rebuilds an equal schedule; combinators nest their children's specs. ``s.horizon`` is the number
of steps a finite schedule was designed for (``None`` when it has no end); at and after its
horizon a schedule holds its final value, and the PyTorch adapter warns once when training runs
past it.

Families that PyTorch has use PyTorch's parameter names and defaults and reproduce
``torch.optim.lr_scheduler`` step for step (closed forms, so no drift from chained products).
See ``docs/schedules.md`` for the table of families and the conventions of each peer.

>>> s = warmup(cosine(0.1, 100), 10)
>>> s(0), s(10), s.horizon
(0.0, 0.1, 110)
>>> from_spec(s.spec) == s
True
"""

from __future__ import annotations

import bisect
import inspect
import json
import math
import os
from typing import AbstractSet, Any, Callable, ClassVar, Iterable, Mapping, Sequence

from .errors import (
    check_choice,
    check_int,
    check_positive,
    check_probability,
    check_range,
    check_warmup,
    closest,
)

__all__ = [
    "Schedule",
    "from_spec",
    "names",
    "FAMILIES",
    "check_families",
    "family",
    "plot",
    # PyTorch families
    "constant",
    "step",
    "multistep",
    "exponential",
    "linear",
    "polynomial",
    "cosine",
    "cosine_restarts",
    "cyclic",
    "onecycle",
    # families PyTorch lacks
    "warmup_linear",
    "warmup_cosine",
    "inverse_sqrt",
    "inverse_time",
    "wsd",
    "piecewise",
    # combinators
    "warmup",
    "sequence",
    "scale",
    "floor",
    "cooldown",
]

_REGISTRY: dict[str, Callable[..., "Schedule"]] = {}


# --------------------------------------------------------------------------------------------
# the base class
# --------------------------------------------------------------------------------------------


def _check_step(step: Any) -> int:
    """A step index: an ``int`` (numpy integers accepted) that is >= 0."""
    return check_int("step", step, minimum=0)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Schedule):
        return value.spec
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


class Schedule:
    """An immutable, picklable learning-rate schedule: ``s(step) -> lr``.

    Build one with a family function (``cosine(0.1, 1000)``), a combinator
    (``warmup(s, 100)``) or :func:`from_spec`; never instantiate this class directly.
    Equality and hashing follow the spec.
    """

    __slots__ = ("_params", "_hash")
    name: ClassVar[str] = ""

    def __init__(self, **params: Any) -> None:
        for key, value in params.items():
            object.__setattr__(self, key, value)
        object.__setattr__(self, "_params", tuple(params.items()))
        object.__setattr__(self, "_hash", hash((self.name, self._params)))

    # -- immutability ------------------------------------------------------------------------
    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable; build a new schedule instead")

    def __delattr__(self, key: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def _set(self, **values: Any) -> None:
        for key, value in values.items():
            object.__setattr__(self, key, value)

    # -- public interface --------------------------------------------------------------------
    def __call__(self, step: int) -> float:
        """The learning rate of the optimizer step with 0-based index ``step``."""
        return self._lr(_check_step(step))

    def momentum(self, step: int) -> float | None:
        """Momentum (or Adam beta1) at ``step`` for families that cycle it, else ``None``."""
        return self._mom(_check_step(step))

    @property
    def spec(self) -> dict[str, Any]:
        """A JSON-able dict ``{"name": ..., **params}``; ``from_spec(spec)`` rebuilds it."""
        return {"name": self.name, **{k: _jsonable(v) for k, v in self._params}}

    @property
    def horizon(self) -> int | None:
        """Steps the schedule was designed for (it holds its final value from there), or None."""
        return None

    # -- to implement ------------------------------------------------------------------------
    def _lr(self, t: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def _mom(self, t: int) -> float | None:
        return None

    def _mom_within(self, n: int | None) -> bool:
        """Whether ``_mom(t)`` is not None at some step ``0 <= t < n`` (any step when ``n`` is
        None), decided from the structure: a ``sequence`` may start cycling momentum late."""
        return False

    # -- value semantics ---------------------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Schedule):
            return NotImplemented
        return type(self) is type(other) and self._params == other._params

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._params)
        return f"{self.name}({args})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (from_spec, (self.spec,))


def _register(fn: Callable[..., Schedule]) -> Callable[..., Schedule]:
    _REGISTRY[fn.__name__] = fn
    return fn


# --------------------------------------------------------------------------------------------
# argument checks specific to schedules
# --------------------------------------------------------------------------------------------


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    return value


def _check_milestones(name: str, value: Any, *, minimum: int = 1) -> tuple[int, ...]:
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise TypeError(f"{name} must be a list of integers, got {value!r}")
    out = tuple(check_int(f"{name}[{i}]", m, minimum=minimum) for i, m in enumerate(value))
    for a, b in zip(out, out[1:]):
        if b <= a:
            raise ValueError(f"{name} must be strictly increasing, got {list(out)!r}")
    return out


def _check_momenta(base_momentum: Any, max_momentum: Any) -> tuple[float, float]:
    base = check_range("base_momentum", base_momentum, 0.0, 1.0)
    top = check_range("max_momentum", max_momentum, 0.0, 1.0)
    if base > top:
        raise ValueError(
            f"base_momentum must be <= max_momentum, got base_momentum={base_momentum!r} "
            f"and max_momentum={max_momentum!r}"
        )
    return base, top


def _check_floor(name: str, value: Any, lr: float, lr_name: str = "lr") -> float:
    v = check_positive(name, value, allow_zero=True)
    if v > lr:
        raise ValueError(f"{name} must be <= {lr_name} ({lr!r}), got {value!r}")
    return v


def _as_schedule(name: str, value: Any) -> Schedule:
    if isinstance(value, Schedule):
        return value
    if isinstance(value, (Mapping, str)):
        return from_spec(value)
    raise TypeError(
        f"{name} must be a Schedule or a spec dict, got {value!r} ({type(value).__name__})"
    )


def _decay_shape(shape: str, p: float) -> float:
    """Fraction of the way still to go, from 1 at p=0 to 0 at p=1."""
    if shape == "linear":
        return 1.0 - p
    if shape == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * p))
    return 1.0 - math.sqrt(p)  # "1-sqrt"


_DECAY_SHAPES = ("linear", "cosine", "1-sqrt")


# --------------------------------------------------------------------------------------------
# PyTorch families
# --------------------------------------------------------------------------------------------


class _Constant(Schedule):
    __slots__ = ("lr",)
    name = "constant"

    def _lr(self, t: int) -> float:
        return self.lr


@_register
def constant(lr: float) -> Schedule:
    """A constant learning rate: ``lr_t = lr``.

    >>> constant(0.1)(1000)
    0.1
    """
    return _Constant(lr=check_positive("lr", lr))


def _power(gamma: float, k: int, step: int) -> float:
    """``gamma ** k`` for the LR of ``step``; where a ``gamma > 1`` overflows a float, a
    ValueError naming gamma and the step (it was a bare "Numerical result out of range" from
    inside ``LRSchedule.step()``, then an OverflowError the CLI printed as a traceback)."""
    try:
        return gamma**k
    except OverflowError:
        raise ValueError(f"gamma ** {k} = {gamma!r} ** {k} overflows a float at step {step}: a "
                         "gamma > 1 grows the LR without bound; end the run before this step or "
                         "use gamma <= 1") from None


class _Step(Schedule):
    __slots__ = ("lr", "step_size", "gamma")
    name = "step"

    def _lr(self, t: int) -> float:
        return self.lr * _power(self.gamma, t // self.step_size, t)


@_register
def step(lr: float, step_size: int, *, gamma: float = 0.1) -> Schedule:
    """Step decay, PyTorch ``StepLR``: ``lr_t = lr * gamma ** (t // step_size)``.

    The decay applies at step ``k * step_size`` itself (``t >= k * step_size``).

    >>> s = step(1.0, 10, gamma=0.5)
    >>> s(9), s(10)
    (1.0, 0.5)
    """
    return _Step(
        lr=check_positive("lr", lr),
        step_size=check_int("step_size", step_size, minimum=1),
        gamma=check_positive("gamma", gamma),
    )


class _MultiStep(Schedule):
    __slots__ = ("lr", "milestones", "gamma")
    name = "multistep"

    def _lr(self, t: int) -> float:
        return self.lr * _power(self.gamma, bisect.bisect_right(self.milestones, t), t)


@_register
def multistep(lr: float, milestones: Sequence[int], *, gamma: float = 0.1) -> Schedule:
    """Decay at milestones, PyTorch ``MultiStepLR``: ``lr_t = lr * gamma ** #{m <= t}``.

    ``milestones`` must be strictly increasing integers >= 1 (PyTorch silently accepts
    unsorted or repeated milestones; lrkit rejects them).

    >>> s = multistep(1.0, [3, 5], gamma=0.5)
    >>> [s(t) for t in (2, 3, 5)]
    [1.0, 0.5, 0.25]
    """
    return _MultiStep(
        lr=check_positive("lr", lr),
        milestones=_check_milestones("milestones", milestones),
        gamma=check_positive("gamma", gamma),
    )


class _Exponential(Schedule):
    __slots__ = ("lr", "gamma")
    name = "exponential"

    def _lr(self, t: int) -> float:
        return self.lr * _power(self.gamma, t, t)


@_register
def exponential(lr: float, gamma: float) -> Schedule:
    """Exponential decay, PyTorch ``ExponentialLR``: ``lr_t = lr * gamma ** t``."""
    return _Exponential(lr=check_positive("lr", lr), gamma=check_positive("gamma", gamma))


class _Linear(Schedule):
    __slots__ = ("lr", "start_factor", "end_factor", "total_iters")
    name = "linear"

    def _lr(self, t: int) -> float:
        frac = min(self.total_iters, t) / self.total_iters
        return self.lr * (self.start_factor + (self.end_factor - self.start_factor) * frac)


@_register
def linear(
    lr: float,
    *,
    start_factor: float = 1.0 / 3,
    end_factor: float = 1.0,
    total_iters: int = 5,
) -> Schedule:
    """Linear ramp of the factor, PyTorch ``LinearLR``.

    ``lr_t = lr * (start_factor + (end_factor - start_factor) * min(t, total_iters) / total_iters)``;
    held at ``lr * end_factor`` after ``total_iters`` (no horizon: it is defined for ever).
    Ranges as PyTorch: ``start_factor`` in (0, 1], ``end_factor`` in [0, 1].
    """
    return _Linear(
        lr=check_positive("lr", lr),
        start_factor=check_range("start_factor", start_factor, 0.0, 1.0, low_open=True),
        end_factor=check_range("end_factor", end_factor, 0.0, 1.0),
        total_iters=check_int("total_iters", total_iters, minimum=1),
    )


class _Polynomial(Schedule):
    __slots__ = ("lr", "total_iters", "power")
    name = "polynomial"

    def _lr(self, t: int) -> float:
        return self.lr * (1.0 - min(self.total_iters, t) / self.total_iters) ** self.power

    @property
    def horizon(self) -> int | None:
        return self.total_iters


@_register
def polynomial(lr: float, *, total_iters: int = 5, power: float = 1.0) -> Schedule:
    """Polynomial decay to 0, PyTorch ``PolynomialLR``.

    ``lr_t = lr * (1 - min(t, total_iters) / total_iters) ** power``; horizon ``total_iters``.
    """
    return _Polynomial(
        lr=check_positive("lr", lr),
        total_iters=check_int("total_iters", total_iters, minimum=1),
        power=check_positive("power", power),
    )


class _Cosine(Schedule):
    __slots__ = ("lr", "T_max", "eta_min")
    name = "cosine"

    def _lr(self, t: int) -> float:
        if t >= self.T_max:
            return self.eta_min
        return self.eta_min + (self.lr - self.eta_min) * (1 + math.cos(math.pi * t / self.T_max)) / 2

    @property
    def horizon(self) -> int | None:
        return self.T_max


@_register
def cosine(lr: float, T_max: int, *, eta_min: float = 0.0) -> Schedule:
    """Cosine annealing (Loshchilov & Hutter 2017, SGDR), PyTorch ``CosineAnnealingLR``.

    ``lr_t = eta_min + (lr - eta_min) * (1 + cos(pi * t / T_max)) / 2`` for ``t <= T_max``, then
    **held at eta_min** (PyTorch's curve rises again after ``T_max``, period ``2 * T_max``; use
    ``cosine_restarts`` for restarts). Horizon ``T_max``: train for ``T_max`` steps (0 .. T_max-1).

    >>> s = cosine(1.0, 4)
    >>> [round(s(t), 4) for t in range(6)]
    [1.0, 0.8536, 0.5, 0.1464, 0.0, 0.0]
    """
    lr = check_positive("lr", lr)
    return _Cosine(
        lr=lr,
        T_max=check_int("T_max", T_max, minimum=1),
        eta_min=_check_floor("eta_min", eta_min, lr),
    )


class _CosineRestarts(Schedule):
    __slots__ = ("lr", "T_0", "T_mult", "eta_min")
    name = "cosine_restarts"

    def _lr(self, t: int) -> float:
        if self.T_mult == 1:
            t_cur, t_i = t % self.T_0, self.T_0
        else:  # exact integer search of the current cycle (O(log t) iterations)
            start, t_i = 0, self.T_0
            while t >= start + t_i:
                start += t_i
                t_i *= self.T_mult
            t_cur = t - start
        return self.eta_min + (self.lr - self.eta_min) * (1 + math.cos(math.pi * t_cur / t_i)) / 2


@_register
def cosine_restarts(lr: float, T_0: int, *, T_mult: int = 1, eta_min: float = 0.0) -> Schedule:
    """Cosine annealing with warm restarts (SGDR), PyTorch ``CosineAnnealingWarmRestarts``.

    ``lr_t = eta_min + (lr - eta_min) * (1 + cos(pi * T_cur / T_i)) / 2``, where cycle ``i`` lasts
    ``T_i = T_0 * T_mult ** i`` steps and ``T_cur`` counts steps since the last restart.
    """
    lr = check_positive("lr", lr)
    return _CosineRestarts(
        lr=lr,
        T_0=check_int("T_0", T_0, minimum=1),
        T_mult=check_int("T_mult", T_mult, minimum=1),
        eta_min=_check_floor("eta_min", eta_min, lr),
    )


class _Cyclic(Schedule):
    __slots__ = (
        "base_lr", "max_lr", "step_size_up", "step_size_down", "mode", "gamma",
        "cycle_momentum", "base_momentum", "max_momentum", "_total", "_ratio",
    )  # fmt: skip
    name = "cyclic"

    def _phase(self, t: int) -> tuple[float, float]:
        cycle = math.floor(1 + t / self._total)
        x = 1.0 + t / self._total - cycle
        if x <= self._ratio:
            height = x / self._ratio
        else:
            height = (x - 1) / (self._ratio - 1)
        if self.mode == "triangular":
            amp = 1.0
        elif self.mode == "triangular2":
            amp = 0.5 ** (cycle - 1)  # underflows to 0 (PyTorch's 1 / 2.0 ** ... overflows)
        else:  # exp_range scales by iterations
            amp = _power(self.gamma, t, t)
        return height, amp

    def _lr(self, t: int) -> float:
        height, amp = self._phase(t)
        return self.base_lr + (self.max_lr - self.base_lr) * height * amp

    def _mom(self, t: int) -> float | None:
        if not self.cycle_momentum:
            return None
        height, amp = self._phase(t)
        return self.max_momentum - (self.max_momentum - self.base_momentum) * height * amp

    def _mom_within(self, n: int | None) -> bool:
        return self.cycle_momentum


@_register
def cyclic(
    base_lr: float,
    max_lr: float,
    *,
    step_size_up: int = 2000,
    step_size_down: int | None = None,
    mode: str = "triangular",
    gamma: float = 1.0,
    cycle_momentum: bool = True,
    base_momentum: float = 0.8,
    max_momentum: float = 0.9,
) -> Schedule:
    """Cyclical learning rates (Smith 2017), PyTorch ``CyclicLR`` (learning rate and momentum).

    With ``C = step_size_up + step_size_down``, ``r = step_size_up / C``,
    ``cycle = floor(1 + t / C)``, ``x = 1 + t / C - cycle`` and height ``h = x / r`` on the way
    up, ``(x - 1) / (r - 1)`` on the way down:
    ``lr_t = base_lr + (max_lr - base_lr) * h * a``, momentum ``max_m - (max_m - base_m) * h * a``,
    with amplitude ``a`` = 1 (triangular), ``0.5 ** (cycle - 1)`` (triangular2) or
    ``gamma ** t`` (exp_range). ``step_size_down=None`` means ``step_size_up``; ``0`` gives a
    sawtooth. PyTorch's custom ``scale_fn`` is not supported (it is not serialisable).
    Unlike PyTorch, triangular2 never overflows: its amplitude underflows to 0 after about 1075
    cycles and the LR stays at ``base_lr`` (PyTorch's ``1 / 2.0 ** (cycle - 1)`` raises
    OverflowError from cycle 1025).
    """
    base = check_positive("base_lr", base_lr, allow_zero=True)
    top = check_positive("max_lr", max_lr)
    if top < base:
        raise ValueError(f"max_lr must be >= base_lr ({base_lr!r}), got {max_lr!r}")
    up = check_int("step_size_up", step_size_up, minimum=1)
    down = None if step_size_down is None else check_int("step_size_down", step_size_down, minimum=0)
    bm, mm = _check_momenta(base_momentum, max_momentum)
    s = _Cyclic(
        base_lr=base,
        max_lr=top,
        step_size_up=up,
        step_size_down=down,
        mode=check_choice("mode", mode, ("triangular", "triangular2", "exp_range")),
        gamma=check_positive("gamma", gamma),
        cycle_momentum=_check_bool("cycle_momentum", cycle_momentum),
        base_momentum=bm,
        max_momentum=mm,
    )
    total = float(up) + float(up if down is None else down)
    s._set(_total=total, _ratio=float(up) / total)
    return s


class _OneCycle(Schedule):
    __slots__ = (
        "max_lr", "total_steps", "pct_start", "anneal_strategy", "div_factor",
        "final_div_factor", "three_phase", "cycle_momentum", "base_momentum", "max_momentum",
        "_phases",
    )  # fmt: skip
    name = "onecycle"

    def _anneal(self, start: float, end: float, pct: float) -> float:
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def _locate(self, t: int) -> tuple[tuple[float, float, float, float, float], float]:
        if t >= self.total_steps:  # past the horizon: hold the end of the last phase
            return self._phases[-1], 1.0
        start_step = 0.0
        last = len(self._phases) - 1
        for i, phase in enumerate(self._phases):
            end_step = phase[0]
            if t <= end_step or i == last:
                if end_step == start_step:  # a phase of length 0 (PyTorch: ZeroDivisionError)
                    return phase, 0.0
                return phase, (t - start_step) / (end_step - start_step)
            start_step = end_step
        raise AssertionError("unreachable")  # pragma: no cover

    def _lr(self, t: int) -> float:
        phase, pct = self._locate(t)
        return self._anneal(phase[1], phase[2], pct)

    def _mom(self, t: int) -> float | None:
        if not self.cycle_momentum:
            return None
        phase, pct = self._locate(t)
        return self._anneal(phase[3], phase[4], pct)

    def _mom_within(self, n: int | None) -> bool:
        return self.cycle_momentum

    @property
    def horizon(self) -> int | None:
        return self.total_steps


@_register
def onecycle(
    max_lr: float,
    total_steps: int,
    *,
    pct_start: float = 0.3,
    anneal_strategy: str = "cos",
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    three_phase: bool = False,
    cycle_momentum: bool = True,
    base_momentum: float = 0.85,
    max_momentum: float = 0.95,
) -> Schedule:
    """The 1cycle policy (Smith & Topin 2018), PyTorch ``OneCycleLR`` (learning rate and momentum).

    ``initial = max_lr / div_factor``, ``min = initial / final_div_factor``. Phase ends (in steps):
    ``p*T - 1`` then ``T - 1`` (or ``p*T - 1``, ``2*p*T - 2``, ``T - 1`` with ``three_phase``);
    inside a phase ``[s, e]`` the value anneals (``cos``: ``end + (start - end) * (1 + cos(pi*q)) / 2``,
    ``linear``: ``start + (end - start) * q``) with ``q = (t - s) / (e - s)``:
    initial -> max_lr -> min (three phase: initial -> max_lr -> initial -> min), momentum
    max -> base -> max. Horizon ``total_steps``: the minimum is reached at step ``total_steps - 1``
    and held after it (PyTorch raises "Tried to step ..." one step later). Where ``pct_start *
    total_steps == 1`` PyTorch divides by zero at step 0; lrkit returns the phase's start value.
    """
    top = check_positive("max_lr", max_lr)
    total = check_int("total_steps", total_steps, minimum=1)
    pct = check_probability("pct_start", pct_start)
    div = check_positive("div_factor", div_factor)
    final_div = check_positive("final_div_factor", final_div_factor)
    bm, mm = _check_momenta(base_momentum, max_momentum)
    s = _OneCycle(
        max_lr=top,
        total_steps=total,
        pct_start=pct,
        anneal_strategy=check_choice("anneal_strategy", anneal_strategy, ("cos", "linear")),
        div_factor=div,
        final_div_factor=final_div,
        three_phase=_check_bool("three_phase", three_phase),
        cycle_momentum=_check_bool("cycle_momentum", cycle_momentum),
        base_momentum=bm,
        max_momentum=mm,
    )
    initial = top / div
    low = initial / final_div
    # (end_step, start_lr, end_lr, start_momentum, end_momentum), as PyTorch computes them
    if s.three_phase:
        phases = (
            (float(pct * total) - 1, initial, top, mm, bm),
            (float(2 * pct * total) - 2, top, initial, bm, mm),
            (total - 1, initial, low, mm, mm),
        )
    else:
        phases = (
            (float(pct * total) - 1, initial, top, mm, bm),
            (total - 1, top, low, bm, mm),
        )
    s._set(_phases=phases)
    return s


# --------------------------------------------------------------------------------------------
# families PyTorch lacks
# --------------------------------------------------------------------------------------------


def _check_warmup_total(warmup_steps: Any, total_steps: Any) -> tuple[int, int]:
    w = check_int("warmup_steps", warmup_steps, minimum=0)
    total = check_int("total_steps", total_steps, minimum=1)
    if w >= total:
        raise ValueError(f"warmup_steps must be < total_steps ({total_steps!r}), got {warmup_steps!r}")
    return w, total


class _WarmupLinear(Schedule):
    __slots__ = ("lr", "warmup_steps", "total_steps")
    name = "warmup_linear"

    def _lr(self, t: int) -> float:
        if t < self.warmup_steps:
            return self.lr * (t / self.warmup_steps)
        return self.lr * max(0.0, (self.total_steps - t) / (self.total_steps - self.warmup_steps))

    @property
    def horizon(self) -> int | None:
        return self.total_steps


@_register
def warmup_linear(lr: float, *, warmup_steps: int, total_steps: int) -> Schedule:
    """Linear warmup from 0, then linear decay to 0: Hugging Face ``get_linear_schedule_with_warmup``.

    ``lr_t = lr * t / W`` for ``t < W``, then ``lr * max(0, (T - t) / (T - W))``; ``T`` counts
    the warmup steps too. Step 0 has LR 0 (as HF); the LR is 0 from step ``T`` (the horizon).
    """
    w, total = _check_warmup_total(warmup_steps, total_steps)
    return _WarmupLinear(lr=check_positive("lr", lr), warmup_steps=w, total_steps=total)


class _WarmupCosine(Schedule):
    __slots__ = ("lr", "warmup_steps", "total_steps", "num_cycles", "min_lr")
    name = "warmup_cosine"

    def _lr(self, t: int) -> float:
        if t < self.warmup_steps:
            return self.lr * (t / self.warmup_steps)
        progress = (min(t, self.total_steps) - self.warmup_steps) / (self.total_steps - self.warmup_steps)
        factor = 0.5 * (1.0 + math.cos(math.pi * self.num_cycles * 2.0 * progress))
        return self.min_lr + (self.lr - self.min_lr) * factor

    @property
    def horizon(self) -> int | None:
        return self.total_steps


@_register
def warmup_cosine(
    lr: float,
    *,
    warmup_steps: int,
    total_steps: int,
    num_cycles: float = 0.5,
    min_lr: float = 0.0,
) -> Schedule:
    """Linear warmup from 0, then cosine to ``min_lr``: Hugging Face
    ``get_cosine_schedule_with_warmup`` / ``get_cosine_with_min_lr_schedule_with_warmup``.

    ``lr_t = lr * t / W`` for ``t < W``; then with ``p = (t - W) / (T - W)``:
    ``lr_t = min_lr + (lr - min_lr) * (1 + cos(2 * pi * num_cycles * p)) / 2``. ``T`` counts the
    warmup steps too; the value at ``T`` (``min_lr`` for ``num_cycles=0.5``) is held after it
    (HF's curve rises again past ``T``).
    """
    lr = check_positive("lr", lr)
    w, total = _check_warmup_total(warmup_steps, total_steps)
    return _WarmupCosine(
        lr=lr,
        warmup_steps=w,
        total_steps=total,
        num_cycles=check_positive("num_cycles", num_cycles),
        min_lr=_check_floor("min_lr", min_lr, lr),
    )


class _InverseSqrt(Schedule):
    __slots__ = ("lr", "warmup_steps", "timescale", "_ts")
    name = "inverse_sqrt"

    def _lr(self, t: int) -> float:
        if t < self.warmup_steps:
            return self.lr * (t / self.warmup_steps)
        shift = self._ts - self.warmup_steps
        return self.lr / math.sqrt((t + shift) / self._ts)


@_register
def inverse_sqrt(lr: float, *, warmup_steps: int, timescale: int | None = None) -> Schedule:
    """Inverse square-root decay after linear warmup (Vaswani et al. 2017; fairseq
    ``inverse_sqrt``; Hugging Face ``get_inverse_sqrt_schedule``).

    ``lr_t = lr * t / W`` for ``t < W``, then ``lr / sqrt((t - W + tau) / tau)`` with
    ``tau = timescale``, by default ``W`` (so ``lr * sqrt(W / t)``) or 10000 when ``W = 0``.
    """
    w = check_int("warmup_steps", warmup_steps, minimum=0)
    ts = None if timescale is None else check_int("timescale", timescale, minimum=1)
    s = _InverseSqrt(lr=check_positive("lr", lr), warmup_steps=w, timescale=ts)
    s._set(_ts=ts if ts is not None else (w or 10_000))
    return s


class _InverseTime(Schedule):
    __slots__ = ("lr", "decay_steps", "decay_rate", "staircase")
    name = "inverse_time"

    def _lr(self, t: int) -> float:
        p = t / self.decay_steps
        if self.staircase:
            p = math.floor(p)
        return self.lr / (1.0 + self.decay_rate * p)


@_register
def inverse_time(
    lr: float, *, decay_steps: float, decay_rate: float, staircase: bool = False
) -> Schedule:
    """Inverse time decay, Keras ``InverseTimeDecay``.

    ``lr_t = lr / (1 + decay_rate * t / decay_steps)`` (``floor(t / decay_steps)`` with
    ``staircase``).
    """
    return _InverseTime(
        lr=check_positive("lr", lr),
        decay_steps=check_positive("decay_steps", decay_steps),
        decay_rate=check_positive("decay_rate", decay_rate, allow_zero=True),
        staircase=_check_bool("staircase", staircase),
    )


class _WSD(Schedule):
    __slots__ = ("lr", "total_steps", "warmup_steps", "decay_steps", "decay_shape", "final_lr")
    name = "wsd"

    def _lr(self, t: int) -> float:
        if t < self.warmup_steps:
            return self.lr * (t / self.warmup_steps)
        stable_end = self.total_steps - self.decay_steps
        if t < stable_end:
            return self.lr
        p = min(1.0, (t - stable_end) / self.decay_steps)
        return self.final_lr + (self.lr - self.final_lr) * _decay_shape(self.decay_shape, p)

    @property
    def horizon(self) -> int | None:
        return self.total_steps


@_register
def wsd(
    lr: float,
    *,
    total_steps: int,
    warmup_steps: int,
    decay_steps: int,
    decay_shape: str = "linear",
    final_lr: float = 0.0,
) -> Schedule:
    """Warmup-stable-decay (Hu et al. 2024, MiniCPM; Hägele et al. 2024, "Scaling Laws and
    Compute-Optimal Training Beyond Fixed Training Durations").

    ``lr_t = lr * t / W`` for ``t < W``; ``lr`` until ``S = T - D``; then with ``p = (t - S) / D``:
    ``final_lr + (lr - final_lr) * f(p)``, ``f`` = ``1 - p`` (linear), ``(1 + cos(pi p)) / 2``
    (cosine) or ``1 - sqrt(p)`` (1-sqrt, Hägele et al.). ``T`` includes warmup and decay;
    ``final_lr`` is reached at step ``T`` (the horizon) and held.
    """
    lr = check_positive("lr", lr)
    total = check_int("total_steps", total_steps, minimum=1)
    w = check_int("warmup_steps", warmup_steps, minimum=0)
    d = check_int("decay_steps", decay_steps, minimum=1)
    if w + d > total:
        raise ValueError(
            f"warmup_steps + decay_steps must be <= total_steps ({total_steps!r}), "
            f"got {warmup_steps!r} + {decay_steps!r}"
        )
    return _WSD(
        lr=lr,
        total_steps=total,
        warmup_steps=w,
        decay_steps=d,
        decay_shape=check_choice("decay_shape", decay_shape, _DECAY_SHAPES),
        final_lr=_check_floor("final_lr", final_lr, lr),
    )


class _Piecewise(Schedule):
    __slots__ = ("points", "interpolation", "_steps", "_values")
    name = "piecewise"

    def _lr(self, t: int) -> float:
        i = bisect.bisect_right(self._steps, t) - 1  # points start at 0, so i >= 0
        if self.interpolation == "constant" or i == len(self._steps) - 1:
            return self._values[i]
        s0, s1 = self._steps[i], self._steps[i + 1]
        v0, v1 = self._values[i], self._values[i + 1]
        return v0 + (v1 - v0) * (t - s0) / (s1 - s0)


@_register
def piecewise(points: Iterable[Iterable[float]], *, interpolation: str = "constant") -> Schedule:
    """Piecewise schedule through ``(step, lr)`` points (cf. Keras ``PiecewiseConstantDecay``,
    optax ``piecewise_interpolate_schedule``): a list of pairs, or an integer NumPy array of
    shape ``(n, 2)``.

    ``constant``: ``lr_t = lr_i`` for ``step_i <= t < step_{i+1}`` (a new value applies *at* its
    step, like PyTorch's milestones; Keras and optax switch one step later). ``linear``:
    ``lr_t = lr_i + (lr_{i+1} - lr_i) * (t - step_i) / (step_{i+1} - step_i)``. The first point
    must be at step 0; the last value is held.

    >>> s = piecewise([[0, 1.0], [10, 0.5]], interpolation="linear")
    >>> s(5), s(20)
    (0.75, 0.5)
    """
    if isinstance(points, (str, bytes, Mapping)) or not isinstance(points, Iterable):
        raise TypeError(f"points must be a list of [step, lr] pairs, got {points!r}")
    pairs = []
    for i, p in enumerate(points):  # rows of a NumPy array too (as multistep takes milestones)
        row = () if isinstance(p, (str, bytes, Mapping, AbstractSet)) or not isinstance(
            p, Iterable) else tuple(p)
        if len(row) != 2:
            raise TypeError(f"points[{i}] must be a [step, lr] pair, got {p!r}")
        pairs.append(
            (
                check_int(f"points[{i}][0] (step)", row[0], minimum=0),
                check_positive(f"points[{i}][1] (lr)", row[1], allow_zero=True),
            )
        )
    if not pairs:
        raise ValueError("points must hold at least one [step, lr] pair, got []")
    if pairs[0][0] != 0:
        raise ValueError(f"points must start at step 0, got first step {pairs[0][0]!r}")
    steps_ = [p[0] for p in pairs]
    for a, b in zip(steps_, steps_[1:]):
        if b <= a:
            raise ValueError(f"points' steps must be strictly increasing, got {steps_!r}")
    if max(p[1] for p in pairs) <= 0:
        raise ValueError(f"points must have at least one lr > 0, got {[list(p) for p in pairs]!r}")
    s = _Piecewise(
        points=tuple(pairs),
        interpolation=check_choice("interpolation", interpolation, ("constant", "linear")),
    )
    s._set(_steps=tuple(steps_), _values=tuple(p[1] for p in pairs))
    return s


# --------------------------------------------------------------------------------------------
# combinators
# --------------------------------------------------------------------------------------------


class _Warmup(Schedule):
    __slots__ = ("schedule", "steps", "start_factor", "shape", "_target")
    name = "warmup"

    def _lr(self, t: int) -> float:
        if t >= self.steps:
            return self.schedule._lr(t - self.steps)
        p = t / self.steps
        f0 = self.start_factor
        if self.shape == "linear":
            f = f0 + (1.0 - f0) * p
        elif self.shape == "cosine":
            f = f0 + (1.0 - f0) * (1.0 - math.cos(math.pi * p)) / 2
        else:  # exponential: geometric from f0 to 1
            f = f0 ** (1.0 - p)
        return self._target * f

    def _mom(self, t: int) -> float | None:
        return self.schedule._mom(max(0, t - self.steps))

    def _mom_within(self, n: int | None) -> bool:
        return self.schedule._mom_within(None if n is None else max(1, n - self.steps))

    @property
    def horizon(self) -> int | None:
        h = self.schedule.horizon
        return None if h is None else self.steps + h


@_register
def warmup(
    schedule: Schedule | Mapping[str, Any],
    steps: int,
    *,
    start_factor: float = 0.0,
    shape: str = "linear",
) -> Schedule:
    """Prepend a warmup of ``steps`` steps; the wrapped schedule starts (at its own step 0) at
    step ``steps`` (timm's ``warmup_prefix=True``, Keras's ``warmup_steps``).

    For ``t < steps`` with ``p = t / steps`` and target ``lr0 = schedule(0)``:
    ``lr_t = lr0 * f(p)``, ``f`` = ``a + (1 - a) p`` (linear), ``a + (1 - a)(1 - cos(pi p)) / 2``
    (cosine) or ``a ** (1 - p)`` (exponential, needs ``a > 0``), ``a = start_factor``; then
    ``lr_t = schedule(t - steps)``. Step 0 has ``lr0 * start_factor`` (0 by default, as HF).
    Momentum during warmup is the schedule's momentum at its step 0.
    """
    child = _as_schedule("schedule", schedule)
    n = check_int("steps", steps, minimum=1)
    f0 = check_range("start_factor", start_factor, 0.0, 1.0)
    kind = check_choice("shape", shape, ("linear", "cosine", "exponential"))
    if kind == "exponential" and f0 <= 0:
        raise ValueError(f"start_factor must be > 0 for shape='exponential', got {start_factor!r}")
    target = child._lr(0)
    if target <= 0:
        raise ValueError(f"schedule must have an LR > 0 at its step 0 to warm up to, got {target!r}")
    s = _Warmup(schedule=child, steps=n, start_factor=f0, shape=kind)
    s._set(_target=target)
    return s


class _Sequence(Schedule):
    __slots__ = ("schedules", "milestones")
    name = "sequence"

    def _part(self, t: int) -> tuple[Schedule, int]:
        i = bisect.bisect_right(self.milestones, t)
        return self.schedules[i], t - (self.milestones[i - 1] if i else 0)

    def _lr(self, t: int) -> float:
        part, local = self._part(t)
        return part._lr(local)

    def _mom(self, t: int) -> float | None:
        part, local = self._part(t)
        return part._mom(local)

    def _mom_within(self, n: int | None) -> bool:
        ends = (*self.milestones, None)
        for part, start, end in zip(self.schedules, (0, *self.milestones), ends):
            if n is not None:
                if start >= n:
                    return False
                end = n if end is None else min(end, n)
            if part._mom_within(None if end is None else end - start):
                return True
        return False

    @property
    def horizon(self) -> int | None:
        h = self.schedules[-1].horizon
        return None if h is None else self.milestones[-1] + h


@_register
def sequence(schedules: Sequence[Schedule | Mapping[str, Any]], milestones: Sequence[int]) -> Schedule:
    """Run schedules one after another, like PyTorch ``SequentialLR`` / optax ``join_schedules``.

    Part ``i`` is active for ``milestones[i-1] <= t < milestones[i]`` and sees its own step
    ``t - milestones[i-1]`` (it restarts at 0 at its milestone). One milestone fewer than parts.

    >>> s = sequence([constant(1.0), constant(0.5)], [3])
    >>> s(2), s(3)
    (1.0, 0.5)
    """
    if isinstance(schedules, (str, bytes, Mapping, Schedule)) or not isinstance(schedules, Iterable):
        raise TypeError(f"schedules must be a list of schedules, got {schedules!r}")
    parts = tuple(_as_schedule(f"schedules[{i}]", s) for i, s in enumerate(schedules))
    if len(parts) < 2:
        raise ValueError(f"schedules must hold at least 2 schedules, got {len(parts)}")
    ms = _check_milestones("milestones", milestones)
    if len(ms) != len(parts) - 1:
        raise ValueError(
            f"milestones must have len(schedules) - 1 = {len(parts) - 1} entries, got {list(ms)!r}"
        )
    return _Sequence(schedules=parts, milestones=ms)


class _Scale(Schedule):
    __slots__ = ("schedule", "factor")
    name = "scale"

    def _lr(self, t: int) -> float:
        return self.factor * self.schedule._lr(t)

    def _mom(self, t: int) -> float | None:
        return self.schedule._mom(t)

    def _mom_within(self, n: int | None) -> bool:
        return self.schedule._mom_within(n)

    @property
    def horizon(self) -> int | None:
        return self.schedule.horizon


@_register
def scale(schedule: Schedule | Mapping[str, Any], factor: float) -> Schedule:
    """Multiply a schedule's learning rate by ``factor > 0``: ``lr_t = factor * schedule(t)``."""
    return _Scale(schedule=_as_schedule("schedule", schedule), factor=check_positive("factor", factor))


class _Floor(Schedule):
    __slots__ = ("schedule", "min_lr")
    name = "floor"

    def _lr(self, t: int) -> float:
        return max(self.min_lr, self.schedule._lr(t))

    def _mom(self, t: int) -> float | None:
        return self.schedule._mom(t)

    def _mom_within(self, n: int | None) -> bool:
        return self.schedule._mom_within(n)

    @property
    def horizon(self) -> int | None:
        return self.schedule.horizon


@_register
def floor(schedule: Schedule | Mapping[str, Any], min_lr: float) -> Schedule:
    """Keep a schedule at or above ``min_lr`` (cf. timm's ``lr_min``, optax's ``end_value``):
    ``lr_t = max(min_lr, schedule(t))``. An explicit, requested floor, not a silent clamp."""
    return _Floor(
        schedule=_as_schedule("schedule", schedule),
        min_lr=check_positive("min_lr", min_lr, allow_zero=True),
    )


class _Cooldown(Schedule):
    __slots__ = ("schedule", "start", "steps", "shape", "final", "_from")
    name = "cooldown"

    def _lr(self, t: int) -> float:
        if t < self.start:
            return self.schedule._lr(t)
        p = min(1.0, (t - self.start) / self.steps)
        return self.final + (self._from - self.final) * _decay_shape(self.shape, p)

    def _mom(self, t: int) -> float | None:
        return self.schedule._mom(min(t, self.start))

    def _mom_within(self, n: int | None) -> bool:
        return self.schedule._mom_within(self.start + 1 if n is None else min(n, self.start + 1))

    @property
    def horizon(self) -> int | None:
        return self.start + self.steps


@_register
def cooldown(
    schedule: Schedule | Mapping[str, Any],
    start: int,
    *,
    steps: int,
    shape: str = "linear",
    final: float = 0.0,
) -> Schedule:
    """Branch a cooldown from any step of a schedule (the point of WSD: Hägele et al. 2024).

    Until ``start`` the schedule runs unchanged; from there, with ``lr_s = schedule(start)`` and
    ``p = min(1, (t - start) / steps)``: ``lr_t = final + (lr_s - final) * f(p)``, ``f`` as in
    :func:`wsd` (linear, cosine, 1-sqrt). Continuous at ``start``; ``final`` is reached at step
    ``start + steps`` (the horizon) and held. Momentum stays at its value at ``start``.

    >>> s = cooldown(constant(1.0), 10, steps=4)
    >>> [s(t) for t in (9, 10, 12, 14, 99)]
    [1.0, 1.0, 0.5, 0.0, 0.0]
    """
    child = _as_schedule("schedule", schedule)
    st = check_int("start", start, minimum=0)
    n = check_int("steps", steps, minimum=1)
    kind = check_choice("shape", shape, _DECAY_SHAPES)
    lr_start = child._lr(st)
    fin = _check_floor("final", final, lr_start, lr_name="the schedule's LR at start")
    s = _Cooldown(schedule=child, start=st, steps=n, shape=kind, final=fin)
    s._set(_from=lr_start)
    return s


# --------------------------------------------------------------------------------------------
# specs
# --------------------------------------------------------------------------------------------

_SIGNATURES = {name: inspect.signature(fn) for name, fn in _REGISTRY.items()}


#: the families :func:`family` builds from a peak LR and a run length (training recipes)
FAMILIES = ("constant", "step", "exponential", "linear", "cosine", "warmup_cosine", "cyclic",
            "onecycle", "wsd")


def check_families(name: str, value: Any) -> tuple[str, ...]:
    """``value`` as a tuple of distinct :data:`FAMILIES` names, else a ValueError naming
    ``name`` (and the entry, ``name[i]``, that is not a family)."""
    if isinstance(value, str) or not isinstance(value, Sequence) or not value:
        raise ValueError(f"{name} must be a non-empty sequence of family names, got {value!r}")
    out = tuple(check_choice(f"{name}[{i}]", v, FAMILIES) for i, v in enumerate(value))
    if len(set(out)) != len(out):
        raise ValueError(f"{name} must not repeat a family, got {list(value)!r}")
    return out


def family(name: str, lr: float, steps: int, *, warmup_steps: int = 0) -> Schedule:
    """A recipe-shaped schedule of family ``name`` with peak ``lr`` over a run of ``steps`` steps.

    The textbook shape of each family, so that ``lr`` (the peak) is the only knob:

    - ``constant``: ``lr`` throughout.
    - ``step``: ``lr``, ×0.1 at 50% and again at 75% of the run (the classic ResNet recipe,
      He et al. 2016).
    - ``exponential``: ``lr * gamma**t`` with ``gamma = 0.01**(1/steps)`` (falls 100× over the run).
    - ``linear``: linear decay to 0 (Hugging Face's default), after ``warmup_steps``.
    - ``cosine``: cosine to 0 over the run (Loshchilov & Hutter 2017).
    - ``warmup_cosine``: linear warmup for ``warmup_steps``, then cosine to 0.
    - ``cyclic``: triangular CLR between ``lr/4`` and ``lr``, 4 cycles (Smith 2017).
    - ``onecycle``: PyTorch ``OneCycleLR`` defaults with ``max_lr = lr`` (Smith 2018).
    - ``wsd``: warmup (``warmup_steps``), stable, then a 1-sqrt decay over the last 20%
      (Hägele et al. 2024).

    ``warmup_steps`` is used by the families with a warmup phase (``linear``, ``warmup_cosine``,
    ``wsd``) and prepended (:func:`warmup`) to the others when > 0. A warmup the family's shape
    cannot fit into ``steps`` is refused (it was shortened, or the schedule ran past the run):
    ``wsd`` needs ``warmup_steps <= steps - max(1, steps // 5)`` (its decay), ``cyclic`` and
    ``onecycle`` need 2 steps after the warmup to reach their peak.

    >>> family("step", 0.1, 100)(60)
    0.010000000000000002
    """
    check_choice("name", name, FAMILIES)
    lr = check_positive("lr", lr)
    n = check_int("steps", steps, minimum=1)
    w = check_warmup(warmup_steps, n)
    if name == "warmup_cosine":
        return warmup_cosine(lr, warmup_steps=w, total_steps=n)
    if name == "linear":
        return warmup_linear(lr, warmup_steps=w, total_steps=n)
    if name == "wsd":
        decay = max(1, n // 5)
        if w > n - decay:
            raise ValueError(f"warmup_steps must be <= {n - decay} for family 'wsd' over {n} "
                             f"steps (it decays over the last {decay}), got {w}")
        return wsd(lr, total_steps=n, warmup_steps=w, decay_steps=decay, decay_shape="1-sqrt")
    body_steps = n - w
    if name in ("cyclic", "onecycle") and body_steps < 2:
        need = "steps must be >= 2" if w == 0 else f"warmup_steps must be <= steps - 2 ({n - 2})"
        raise ValueError(f"family {name!r} needs 2 steps after the warmup to reach its peak: "
                         f"{need}, got warmup_steps={w} and steps={n}")
    if name == "constant":
        body = constant(lr)
    elif name == "step":
        a, b = max(1, body_steps // 2), max(2, (3 * body_steps) // 4)
        body = multistep(lr, [a, b] if b > a else [a], gamma=0.1)
    elif name == "exponential":
        body = exponential(lr, 0.01 ** (1.0 / max(1, body_steps)))
    elif name == "cosine":
        body = cosine(lr, T_max=max(1, body_steps))
    elif name == "cyclic":
        body = cyclic(lr / 4.0, lr, step_size_up=max(1, body_steps // 8))
    else:  # onecycle
        body = onecycle(lr, total_steps=body_steps)
    return warmup(body, w) if w > 0 else body


def names() -> list[str]:
    """The names accepted by :func:`from_spec`: every family, then the combinators."""
    return list(_REGISTRY)


def from_spec(spec: Mapping[str, Any] | str) -> Schedule:
    """Build a schedule from ``{"name": family, **params}`` (or its JSON text).

    Combinators take nested specs (``{"name": "warmup", "schedule": {...}, "steps": 100}``).
    Unknown names suggest the closest family; unknown or missing keys raise ``ValueError``.

    >>> from_spec('{"name": "cosine", "lr": 0.1, "T_max": 10}')
    cosine(lr=0.1, T_max=10, eta_min=0.0)
    """
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError as exc:
            raise ValueError(f"spec must be valid JSON, got {spec!r}: {exc}") from None
    if not isinstance(spec, Mapping):
        raise TypeError(
            f"spec must be a dict (or JSON text) with a 'name' key, got {spec!r} ({type(spec).__name__})"
        )
    if "name" not in spec:
        raise ValueError(f"spec must have a 'name' key, one of {names()}; got keys {sorted(spec)!r}")
    name = spec["name"]
    if not isinstance(name, str):
        raise TypeError(f"spec 'name' must be a string, got {name!r} ({type(name).__name__})")
    if name not in _REGISTRY:
        hint = closest(name, _REGISTRY)
        did_you_mean = f"; did you mean {hint!r}?" if hint else ""
        raise ValueError(f"unknown schedule name {name!r}{did_you_mean} (known: {names()})")
    params = {k: v for k, v in spec.items() if k != "name"}
    sig = _SIGNATURES[name]
    allowed = list(sig.parameters)
    for key in params:
        if key not in sig.parameters:
            hint = closest(key, allowed)
            did_you_mean = f"; did you mean {hint!r}?" if hint else ""
            raise ValueError(
                f"unknown parameter {key!r} for schedule {name!r}{did_you_mean} (expected: {allowed})"
            )
    for key, p in sig.parameters.items():
        if p.default is inspect.Parameter.empty and key not in params:
            raise ValueError(f"missing required parameter {key!r} for schedule {name!r}")
    return _REGISTRY[name](**params)


# --------------------------------------------------------------------------------------------
# plotting
# --------------------------------------------------------------------------------------------

_MAX_PLOT_POINTS = 20_000


def _compact(s: Schedule) -> str:
    """A short label: the repr without parameters left at their defaults."""
    sig = _SIGNATURES[s.name]
    parts = []
    for key, value in s._params:
        default = sig.parameters[key].default
        if default is not inspect.Parameter.empty and value == default:
            continue
        if isinstance(value, Schedule):
            text = _compact(value)
        elif isinstance(value, tuple) and value and isinstance(value[0], Schedule):
            text = "[" + ", ".join(_compact(v) for v in value) + "]"
        elif isinstance(value, float):
            text = f"{value:g}"
        elif isinstance(value, tuple):
            text = json.dumps(_jsonable(value))
        else:
            text = repr(value)
        parts.append(text if key in ("schedule", "schedules") else f"{key}={text}")
    return f"{s.name}({', '.join(parts)})"


def plot(
    schedules: Schedule | Mapping[str, Any] | str | Sequence[Schedule | Mapping[str, Any] | str],
    steps: int,
    path: str | os.PathLike[str] | None = None,
    *,
    labels: Sequence[str] | None = None,
    title: str | None = None,
) -> Any:
    """Draw one or more schedules over steps ``0 .. steps-1`` into one PNG (or any format
    matplotlib knows from the suffix) and return the path; without ``path``, return the figure
    (made in your matplotlib backend: ``plt.show()`` shows it, a notebook shows it once).

    The LR axis is logarithmic when every value is > 0 and they span a factor of 100 or more,
    else linear; momentum gets a second panel when any schedule cycles it; each finite
    schedule's horizon is marked with a dashed line. Doubles as a dry run of a spec.
    """
    if isinstance(schedules, (Schedule, Mapping, str)):
        items: list[Any] = [schedules]
    elif isinstance(schedules, Iterable):
        items = list(schedules)
    else:
        raise TypeError(f"schedules must be a schedule, a spec or a list of them, got {schedules!r}")
    if not items:
        raise ValueError("schedules must hold at least one schedule, got []")
    scheds = [_as_schedule(f"schedules[{i}]", s) for i, s in enumerate(items)]
    n = check_int("steps", steps, minimum=1)
    if labels is None:
        labels = [_compact(s) for s in scheds]
        labels = [x if len(x) <= 80 else x[:77] + "..." for x in labels]
    else:
        labels = list(labels)
        if len(labels) != len(scheds) or not all(isinstance(x, str) for x in labels):
            raise ValueError(
                f"labels must be {len(scheds)} strings (one per schedule), got {labels!r}"
            )
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str, an os.PathLike or None, got {path!r}")
    if title is not None and not isinstance(title, str):
        raise TypeError(f"title must be a string or None, got {title!r}")

    stride = max(1, -(-n // _MAX_PLOT_POINTS))
    xs = list(range(0, n, stride))
    if xs[-1] != n - 1:
        xs.append(n - 1)
    lrs = [[s._lr(x) for x in xs] for s in scheds]
    moms: list[list[float] | None] = []
    for s in scheds:  # any step drawn, not only step 0 (sequence([constant, onecycle]) is late)
        if s._mom_within(n):
            moms.append([math.nan if m is None else m for m in (s._mom(x) for x in xs)])
        else:
            moms.append(None)
    has_mom = any(m is not None for m in moms)

    from ._figures import new_figure  # (matplotlib lazily: schedules import without it)

    if has_mom:
        fig, (ax, ax_m) = new_figure((8, 6.5), 2, 1, shown=path is None, sharex=True,
                                     gridspec_kw={"height_ratios": [2, 1]})
    else:
        (fig, ax), ax_m = new_figure((8, 4.5), shown=path is None), None
    for i, (s, ys, label) in enumerate(zip(scheds, lrs, labels)):
        color = f"C{i % 10}"
        ax.plot(xs, ys, color=color, label=label, lw=1.5)
        h = s.horizon
        if h is not None and h <= n:
            for a in (ax, ax_m) if ax_m is not None else (ax,):
                a.axvline(h, color=color, ls="--", lw=1, alpha=0.7)
            ax.annotate(f"horizon {h}", (h, 0.0), xycoords=("data", "axes fraction"),
                        xytext=(2, 4 + 9 * i), textcoords="offset points", fontsize=7, color=color)
        if ax_m is not None and moms[i] is not None:
            ax_m.plot(xs, moms[i], color=color, lw=1.5)
    values = [v for ys in lrs for v in ys]
    if min(values) > 0 and max(values) / min(values) >= 100:
        ax.set_yscale("log")
    ax.set_ylabel("learning rate")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    if ax_m is not None:
        ax_m.set_ylabel("momentum / beta1")
        ax_m.grid(True, alpha=0.3)
        ax_m.set_xlabel("step")
    else:
        ax.set_xlabel("step")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    if path is None:
        return fig
    out = os.fspath(path)
    fig.savefig(out, dpi=110)
    return out
