"""Hypergradient descent: SGD-HD (plain, momentum, Nesterov) and Adam-HD.

Baydin, Cornish, Martínez Rubio, Schmidt and Wood, *Online Learning Rate Adaptation with
Hypergradient Descent*, ICLR 2018 (arXiv:1703.04782). Every optimizer ``θ_t = θ_{t-1} + u_t`` with
``u_t = -α_t d_t`` (``d_t`` the optimizer's direction) gets its learning rate by gradient descent on
the loss with respect to the learning rate itself (the paper's general rule, Section 2)::

    h_t = ∇f(θ_{t-1}) · ∇_α u(Θ_{t-2}, α_{t-1}) = -g_t · d_{t-1}        (the hypergradient)
    α_t = α_{t-1} - β h_t = α_{t-1} + β g_t · d_{t-1}                    (additive rule)

``d_{t-1}`` is the previous step's direction: ``g_{t-1}`` for SGD (Algorithm "SGD-HD"),
``g_{t-1} + μ v_{t-1}`` for Nesterov momentum (Algorithm "SGDN-HD"; lrkit also covers heavy-ball
momentum, where ``d_{t-1} = v_{t-1}``, the momentum buffer itself) and ``m̂_{t-1} / (√v̂_{t-1} + ε)``
for Adam (Algorithm "Adam-HD"). Storing ``d_{t-1}`` is the "one extra copy of the gradient" of the
paper; heavy-ball momentum reuses its momentum buffer and needs none.

What lrkit adds (the original package, ``gbaydin/hypergradient-descent``, has neither):

- **Every param group adapts its own LR** (the dot product runs over the group's parameters).
- **Bounds.** The adapted LR stays in ``[lr_bounds[0] * lr0, lr_bounds[1] * lr0]`` where ``lr0`` is
  the group's initial LR (default ``(1e-3, 1e3)``: three decades either way). A step that would
  leave the interval is clipped to it and counted in ``group["hd_clipped"]``. A non-finite
  candidate (a NaN, or an inf from an overflowing dot product, even with ``high = inf``) is
  set to the *low* bound and counted: the hypergradient it came from says nothing.
- **A scale-free rule** (``hypergrad="multiplicative"``): the hypergradient normalised to a cosine,
  applied multiplicatively (the multiplicative variant discussed by Baydin et al. and analysed by
  Martínez Rubio, 2017)::

      α_t = α_{t-1} (1 + β · g_t·d_{t-1} / (‖g_t‖ ‖d_{t-1}‖))

  Its ``β`` is a relative change per step and does not depend on the model's size, while the
  additive rule's raw dot product grows with the number of parameters and the gradients' scale.
- **Schedules multiply the adapted LR.** Each group holds the adapted LR ``α`` in
  ``group["hd_lr"]`` and a schedule factor ``c`` in ``group["hd_factor"]``; the LR it steps with
  is ``group["lr"] = α · c``. Writing ``group["lr"] = s`` (what a scheduler such as
  :class:`lrkit.torch.LRSchedule` or ``LambdaLR`` does) sets ``c = s / lr0`` and at once
  ``group["lr"] = α · c``: a schedule built with the optimizer's LR as its peak contributes its
  *shape* (warmup, decay) on top of the adaptation. With ``hypergrad_lr=0`` (no adaptation) the
  LR is exactly the schedule's, as with ``torch.optim.SGD``. The hypergradient of the loss with
  respect to ``α`` carries the factor of the step it differentiates: ``α_t = α_{t-1} + β c_{t-1}
  g_t·d_{t-1}`` (``c ≡ 1`` without a schedule, the paper's rule). Schedulers that *read*
  ``group["lr"]`` and multiply it (PyTorch's chainable ``ExponentialLR``, ``StepLR``) would
  compound the adaptation into the factor: use closed-form ones (``LRSchedule``, ``LambdaLR``).

So ``param_groups[i]["lr"]`` is always the LR of the next update, for loggers, schedulers and
lrkit's monitor, and ``state_dict()`` carries everything needed to resume exactly.

>>> import torch
>>> w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
>>> opt = SGDHD([w], lr=0.1, hypergrad_lr=0.01)
>>> for _ in range(3):
...     opt.zero_grad()
...     (w ** 2).sum().backward()   # gradients keep their sign: the LR grows
...     opt.step()
>>> opt.param_groups[0]["lr"] > 0.1
True
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Sequence

import torch
from torch.optim import Optimizer

from ..errors import as_real, check_choice, check_finite, check_positive, check_range

__all__ = ["SGDHD", "AdamHD", "HYPERGRAD_RULES", "MULTIPLICATIVE_BETA"]

#: the two learning-rate update rules
HYPERGRAD_RULES = ("additive", "multiplicative")

#: default β of the multiplicative rule: the largest relative LR change per step (5%); measured in
#: benchmarks/bench_adaptive.py
MULTIPLICATIVE_BETA = 0.05

#: group keys the HD optimizers maintain next to the usual ones
_HD_KEYS = ("hd_lr", "hd_lr0", "hd_factor", "hd_prev_factor", "hd_steps", "hd_clipped")
#: SGD-HD's flag "the gradient tensors are reused in place, keep copies" (absent in older dicts)
_COPY_KEY = "hd_copy"


class _HDGroup(dict):
    """A param group in which writing ``"lr"`` sets the schedule factor (see the module doc).

    ``group["lr"] = s`` stores ``hd_factor = s / hd_lr0`` and ``lr = hd_lr * hd_factor``; every
    other key behaves as in a plain dict. The optimizer itself writes through ``dict.__setitem__``.
    """

    def __setitem__(self, key: str, value: Any) -> None:
        if key == "lr" and "hd_lr0" in self:
            s = check_finite("param_group['lr']", _as_number("param_group['lr']", value))
            if s < 0:
                raise ValueError(f"param_group['lr'] must be >= 0, got {value!r}")
            factor = s / self["hd_lr0"]
            dict.__setitem__(self, "hd_factor", factor)
            dict.__setitem__(self, "lr", self["hd_lr"] * factor)
            return
        dict.__setitem__(self, key, value)

    def __reduce__(self) -> tuple:  # copy / pickle without going through __setitem__
        return (_HDGroup, (dict(self),))


def _as_number(name: str, value: Any) -> Any:
    """``value`` as a float when it is a one-element tensor or a NumPy scalar (what
    ``torch.optim.SGD`` takes as an LR), else unchanged for the checks that follow."""
    if isinstance(value, torch.Tensor) or type(value).__module__ == "numpy":
        is_bool = (value.dtype == torch.bool if isinstance(value, torch.Tensor)
                   else getattr(value.dtype, "kind", "") == "b")
        if is_bool:
            raise TypeError(f"{name} must be a real number, got {value!r}")
        return as_real(name, value)
    return value


def _check_bounds(value: Any) -> tuple[float, float]:
    if (isinstance(value, (str, bytes)) or not isinstance(value, Sequence)) or len(value) != 2:
        raise TypeError(f"lr_bounds must be a pair (low, high) of multiples of the initial lr, "
                        f"got {value!r}")
    low = check_range("lr_bounds[0]", value[0], 0.0, 1.0, low_open=True)
    high = value[1]
    if isinstance(high, bool) or not isinstance(high, (int, float)) or high != high:
        raise TypeError(f"lr_bounds[1] must be a real number >= 1 (or inf), got {high!r}")
    if high < 1.0:
        raise ValueError(f"lr_bounds[1] must be >= 1 (a multiple of the initial lr), got {high!r}")
    return low, float(high)


class _HDOptimizer(Optimizer):
    """Shared machinery: group validation, the LR update, the schedule factor, exact resume."""

    def _check_group(self, group: dict) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    #: default β of the additive rule (the paper's experiments)
    _DEFAULT_BETA = 1e-3

    def _check_common(self, group: dict) -> None:
        group["lr"] = check_positive("lr", _as_number("lr", group["lr"]))
        if group["hypergrad_lr"] is None:
            group["hypergrad_lr"] = (self._DEFAULT_BETA if group["hypergrad"] == "additive"
                                     else MULTIPLICATIVE_BETA)
        group["hypergrad_lr"] = check_positive("hypergrad_lr", group["hypergrad_lr"],
                                               allow_zero=True)
        check_choice("hypergrad", group["hypergrad"], HYPERGRAD_RULES)
        if group["hypergrad"] == "multiplicative" and group["hypergrad_lr"] >= 1.0:
            raise ValueError("hypergrad_lr must be < 1 with hypergrad='multiplicative' (it is the "
                             f"largest relative LR change per step), got {group['hypergrad_lr']!r}")
        group["lr_bounds"] = _check_bounds(group["lr_bounds"])
        group["weight_decay"] = check_positive("weight_decay", group["weight_decay"],
                                               allow_zero=True)

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        self._check_group(group)
        lr0 = float(group["lr"])
        group.update(hd_lr=lr0, hd_lr0=lr0, hd_factor=1.0, hd_prev_factor=1.0, hd_steps=0,
                     hd_clipped=0, **{_COPY_KEY: False})
        self.param_groups[-1] = _HDGroup(group)

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self.param_groups[:] = [_HDGroup(g) for g in self.param_groups]
        for g in self.param_groups:
            missing = [k for k in _HD_KEYS if k not in g]
            if missing:
                raise ValueError(f"state_dict is not from a {type(self).__name__}: its param "
                                 f"groups lack {missing}")
            dict.setdefault(g, _COPY_KEY, False)

    def _adapt(self, group: dict, dot: torch.Tensor | float, norms: float | None) -> None:
        """``α_t`` from the hypergradient dot product ``g_t·d_{t-1}``; sets ``group["lr"]``."""
        alpha = group["hd_lr"]
        beta = group["hypergrad_lr"] * group["hd_prev_factor"]
        dot = float(dot)
        if group["hypergrad"] == "additive":
            new = alpha + beta * dot
        else:
            cosine = dot / norms if norms else 0.0
            new = alpha * (1.0 + beta * cosine)
        low, high = group["lr_bounds"]
        lo, hi = low * group["hd_lr0"], high * group["hd_lr0"]
        if not math.isfinite(new):  # NaN or an overflow (even under lr_bounds[1] = inf)
            new = lo
            dict.__setitem__(group, "hd_clipped", group["hd_clipped"] + 1)
        elif not lo <= new <= hi:
            new = hi if new > hi else lo
            dict.__setitem__(group, "hd_clipped", group["hd_clipped"] + 1)
        dict.__setitem__(group, "hd_lr", new)
        dict.__setitem__(group, "lr", new * group["hd_factor"])

    def _finish(self, group: dict) -> None:
        dict.__setitem__(group, "hd_prev_factor", group["hd_factor"])
        dict.__setitem__(group, "hd_steps", group["hd_steps"] + 1)

    @staticmethod
    def _closure_loss(closure: Callable[[], Any] | None) -> Any:
        """``closure()`` with gradients enabled (``step`` runs under ``no_grad``), or ``None``."""
        if closure is None:
            return None
        with torch.enable_grad():
            return closure()

    def _with_grads(self, group: dict) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The group's parameters that have a gradient, and those (dense) gradients."""
        params = [p for p in group["params"] if p.grad is not None]
        if any(p.grad.is_sparse for p in params):
            raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
        return params, [p.grad for p in params]

    @staticmethod
    def _dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
        """``Σ_i a_i · b_i`` over a list of tensors (one reduction kernel per tensor)."""
        if len(a) == 1:
            return torch.dot(a[0].reshape(-1), b[0].reshape(-1))
        return torch.stack([torch.dot(x.reshape(-1), y.reshape(-1)) for x, y in zip(a, b)]).sum()

    @staticmethod
    def _norm_product(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
        na = torch.stack(torch._foreach_norm(a)).norm()
        nb = torch.stack(torch._foreach_norm(b)).norm()
        return float(na * nb)


class SGDHD(_HDOptimizer):
    """SGD with hypergradient descent on its learning rate (SGD-HD / SGDN-HD).

    Update at step ``t`` (``g_t`` the gradient plus ``weight_decay * θ``, as ``torch.optim.SGD``)::

        h_t = -g_t · d_{t-1}                 hypergradient (0 at the first step)
        α_t = α_{t-1} - β c_{t-1} h_t          (additive; or the multiplicative rule, see module)
        v_t = μ v_{t-1} + (1 - τ) g_t          momentum buffer (v_1 = g_1, as PyTorch)
        d_t = g_t              (plain, Baydin et al. 2018, Algorithm "SGD-HD")
              v_t              (heavy-ball momentum)
              g_t + μ v_t      (Nesterov, Algorithm "SGDN-HD")
        θ_t = θ_{t-1} - α_t c_t d_t

    ``c`` is the schedule factor (1 without a schedule; see :mod:`lrkit.optim.hd`). With
    ``hypergrad_lr=0`` this is ``torch.optim.SGD`` exactly.

    Args:
        params: parameters or param-group dicts (each group adapts its own LR).
        lr: initial learning rate ``α_0`` (> 0): a number, a NumPy scalar or a one-element
            tensor (kept as a float).
        momentum: ``μ`` in ``[0, 1)``.
        dampening: ``τ`` in ``[0, 1]``.
        nesterov: Nesterov momentum (needs ``momentum > 0`` and ``dampening == 0``).
        weight_decay: L2 penalty added to the gradient (>= 0).
        hypergrad_lr: ``β`` (>= 0). Default (``None``): 1e-3 for the additive rule, the value of
            the paper's SGD-HD experiments, and :data:`MULTIPLICATIVE_BETA` (0.05) for the
            multiplicative one.
            The original package's default is 1e-6; the additive rule's dot product scales with
            the number of parameters and the gradient scale, so the best ``β`` depends on the
            model (see ``docs/adaptive.md``).
        hypergrad: ``"additive"`` (the paper) or ``"multiplicative"`` (scale-free; ``β < 1``).
        lr_bounds: ``(low, high)`` multiples of the initial lr that bound the adapted LR,
            ``0 < low <= 1 <= high`` (``high`` may be ``inf``; a non-finite adapted LR still
            falls to the low bound, see :mod:`lrkit.optim.hd`).

    Raises:
        ValueError / TypeError: a bad hyper-parameter; the message names it.

    Memory: plain and Nesterov SGD-HD keep one extra tensor per parameter (``d_{t-1}``); heavy-ball
    momentum reads ``d_{t-1}`` from its momentum buffer and keeps none.

    Plain SGD-HD keeps ``d_{t-1} = g_{t-1}`` by *reference*, not by copy: after
    ``zero_grad(set_to_none=True)`` (PyTorch's default) the next ``backward`` allocates a fresh
    gradient, so the old one is still intact at the next step, and the step saves a read and a
    write of every gradient. If the gradient tensors are instead reused in place
    (``zero_grad(set_to_none=False)``, accumulating without zeroing, gradient bucket views), the
    next step finds its gradient in the very tensor it kept; it then skips that one adaptation
    (``d_{t-1}`` is gone) and copies from then on (``group["hd_copy"]``, saved in the state dict).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        hypergrad_lr: float | None = None,
        hypergrad: str = "additive",
        lr_bounds: tuple[float, float] = (1e-3, 1e3),
    ) -> None:
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, hypergrad_lr=hypergrad_lr, hypergrad=hypergrad,
                        lr_bounds=lr_bounds)
        super().__init__(params, defaults)

    def _check_group(self, group: dict) -> None:
        self._check_common(group)
        group["momentum"] = check_range("momentum", group["momentum"], 0.0, 1.0, high_open=True)
        group["dampening"] = check_range("dampening", group["dampening"], 0.0, 1.0)
        if not isinstance(group["nesterov"], bool):
            raise TypeError(f"nesterov must be a bool, got {group['nesterov']!r}")
        if group["nesterov"] and (group["momentum"] == 0 or group["dampening"] != 0):
            raise ValueError("nesterov=True needs momentum > 0 and dampening == 0, got "
                             f"momentum={group['momentum']!r}, dampening={group['dampening']!r}")

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One SGD-HD update of every param group (see the class docstring)."""
        loss = self._closure_loss(closure)
        for group in self.param_groups:
            params, grads = self._with_grads(group)
            if not params:
                continue
            mu, wd, nesterov = group["momentum"], group["weight_decay"], group["nesterov"]
            if wd != 0:
                grads = torch._foreach_add(grads, params, alpha=wd)
            states = [self.state[p] for p in params]
            heavy_ball = mu != 0 and not nesterov
            key = "momentum_buffer" if heavy_ball else "hd_prev"
            # --- hypergradient over the parameters that have a previous direction d_{t-1}
            old = [i for i, s in enumerate(states) if key in s]
            by_reference = mu == 0 and wd == 0 and not group[_COPY_KEY]  # d_{t-1} is a p.grad
            if by_reference and any(params[i].grad.data_ptr() == states[i][key].data_ptr()
                                    for i in old if params[i].grad.numel()):
                dict.__setitem__(group, _COPY_KEY, True)  # reused in place: d_{t-1} is lost
                for i in old:
                    del states[i][key]  # it is the live .grad: copies get their own memory
                old = []
            if old:
                g_old = [grads[i] for i in old]
                prev = [states[i][key] for i in old]
                norms = self._norm_product(g_old, prev) \
                    if group["hypergrad"] == "multiplicative" else None
                self._adapt(group, self._dot(g_old, prev), norms)
            else:
                dict.__setitem__(group, "lr", group["hd_lr"] * group["hd_factor"])
            lr = group["lr"]
            # --- the SGD step (torch.optim.SGD's arithmetic) and d_t for the next hypergradient
            if mu != 0:
                for s, g in zip(states, grads):
                    if "momentum_buffer" not in s:  # v_1 = g_1, as torch.optim.SGD
                        s["momentum_buffer"] = torch.clone(g).detach()
                        s["hd_fresh"] = True
                upd = [i for i, s in enumerate(states) if not s.pop("hd_fresh", False)]
                if upd:
                    bufs_upd = [states[i]["momentum_buffer"] for i in upd]
                    torch._foreach_mul_(bufs_upd, mu)
                    torch._foreach_add_(bufs_upd, [grads[i] for i in upd],
                                        alpha=1 - group["dampening"])
                bufs = [s["momentum_buffer"] for s in states]
                if nesterov:
                    direction = torch._foreach_add(grads, bufs, alpha=mu)
                    for s, d in zip(states, direction):
                        s["hd_prev"] = d
                else:
                    direction = bufs
            elif wd != 0 or not group[_COPY_KEY]:  # g_t is ours (weight decay) or fresh: keep it
                for s, g in zip(states, grads):
                    s["hd_prev"] = g
                direction = grads
            else:
                for s, g in zip(states, grads):
                    if "hd_prev" not in s:
                        s["hd_prev"] = torch.empty_like(g, memory_format=torch.preserve_format)
                direction = [s["hd_prev"] for s in states]
                torch._foreach_copy_(direction, grads)
            torch._foreach_add_(params, direction, alpha=-lr)
            self._finish(group)
        return loss


class AdamHD(_HDOptimizer):
    """Adam with hypergradient descent on its learning rate (Adam-HD).

    Baydin et al. 2018, Algorithm "Adam-HD", with the bias-corrected moments of the paper::

        h_t = -g_t · d_{t-1}                 hypergradient (0 at the first step)
        α_t = α_{t-1} - β c_{t-1} h_t          (additive; or the multiplicative rule, see module)
        m_t = β1 m_{t-1} + (1 - β1) g_t,   v_t = β2 v_{t-1} + (1 - β2) g_t²
        d_t = m̂_t / (√v̂_t + ε),   m̂_t = m_t / (1 - β1^t),   v̂_t = v_t / (1 - β2^t)
        θ_t = θ_{t-1} - α_t c_t d_t

    (The original package computes ``d_{t-1}`` with ``ε`` outside the bias correction of ``v``,
    i.e. ``ε / √(1-β2^{t-1})``; lrkit follows the paper, which is also ``torch.optim.Adam``'s
    arithmetic.) ``weight_decay`` is an L2 term added to ``g_t`` (Adam), or with
    ``decoupled_weight_decay=True`` the AdamW decay ``θ ← θ (1 - α_t c_t λ)`` before the step.
    With ``hypergrad_lr=0`` this is ``torch.optim.Adam`` / ``AdamW``.

    Args:
        params: parameters or param-group dicts (each group adapts its own LR).
        lr: initial learning rate ``α_0`` (> 0): a number, a NumPy scalar or a one-element
            tensor (kept as a float).
        betas: ``(β1, β2)``, each in ``[0, 1)``.
        eps: ``ε`` (> 0).
        weight_decay: ``λ`` (>= 0).
        decoupled_weight_decay: AdamW-style decay instead of L2.
        hypergrad_lr: ``β`` (>= 0). Default (``None``): 1e-7 for the additive rule, the value of
            the paper's Adam-HD experiments (the original package's default is 1e-8; see
            :class:`SGDHD` on its size dependence), and :data:`MULTIPLICATIVE_BETA` (0.05) for
            the multiplicative one.
        hypergrad: ``"additive"`` (the paper) or ``"multiplicative"`` (scale-free; ``β < 1``).
        lr_bounds: ``(low, high)`` multiples of the initial lr that bound the adapted LR.

    Memory: one extra tensor per parameter (``d_{t-1}``) on top of Adam's two moments.
    """

    _DEFAULT_BETA = 1e-7

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        decoupled_weight_decay: bool = False,
        hypergrad_lr: float | None = None,
        hypergrad: str = "additive",
        lr_bounds: tuple[float, float] = (1e-3, 1e3),
    ) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        decoupled_weight_decay=decoupled_weight_decay, hypergrad_lr=hypergrad_lr,
                        hypergrad=hypergrad, lr_bounds=lr_bounds)
        super().__init__(params, defaults)

    def _check_group(self, group: dict) -> None:
        self._check_common(group)
        betas = group["betas"]
        if isinstance(betas, (str, bytes)) or not isinstance(betas, Sequence) or len(betas) != 2:
            raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        group["betas"] = (check_range("betas[0]", betas[0], 0.0, 1.0, high_open=True),
                          check_range("betas[1]", betas[1], 0.0, 1.0, high_open=True))
        group["eps"] = check_positive("eps", group["eps"])
        if not isinstance(group["decoupled_weight_decay"], bool):
            raise TypeError("decoupled_weight_decay must be a bool, got "
                            f"{group['decoupled_weight_decay']!r}")

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One Adam-HD update of every param group (see the class docstring)."""
        loss = self._closure_loss(closure)
        for group in self.param_groups:
            params, grads = self._with_grads(group)
            if not params:
                continue
            beta1, beta2 = group["betas"]
            wd, decoupled = group["weight_decay"], group["decoupled_weight_decay"]
            if wd != 0 and not decoupled:
                grads = torch._foreach_add(grads, params, alpha=wd)
            states = [self.state[p] for p in params]
            # --- hypergradient over the parameters that have a previous direction d_{t-1}
            old = [i for i, s in enumerate(states) if "hd_prev" in s]
            if old:
                g_old = [grads[i] for i in old]
                prev = [states[i]["hd_prev"] for i in old]
                norms = self._norm_product(g_old, prev) \
                    if group["hypergrad"] == "multiplicative" else None
                self._adapt(group, self._dot(g_old, prev), norms)
            else:
                dict.__setitem__(group, "lr", group["hd_lr"] * group["hd_factor"])
            lr = group["lr"]
            for s, p in zip(states, params):
                if "step" not in s:
                    s["step"] = 0
                    s["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    s["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                s["step"] += 1
            m = [s["exp_avg"] for s in states]
            v = [s["exp_avg_sq"] for s in states]
            if wd != 0 and decoupled:
                torch._foreach_mul_(params, 1 - lr * wd)
            torch._foreach_lerp_(m, grads, 1 - beta1)
            torch._foreach_mul_(v, beta2)
            torch._foreach_addcmul_(v, grads, grads, 1 - beta2)
            # d_t = (m / bc1) / (sqrt(v) / sqrt(bc2) + eps) = m / (sqrt(v) bc1/sqrt(bc2) + eps bc1),
            # kept for the next hypergradient (the bias corrections ride on the scalars: one pass
            # over v fewer than dividing and multiplying separately)
            steps = {s["step"] for s in states}
            if len(steps) == 1:
                t = steps.pop()
                bc1 = 1 - beta1 ** t
                scale: Any = bc1 / math.sqrt(1 - beta2 ** t)
                shift: Any = group["eps"] * bc1
            else:  # parameters that joined later have their own step count, as in torch.optim.Adam
                bc1s = [1 - beta1 ** s["step"] for s in states]
                scale = [b / math.sqrt(1 - beta2 ** s["step"]) for b, s in zip(bc1s, states)]
                shift = [group["eps"] * b for b in bc1s]
            denom = torch._foreach_sqrt(v)
            torch._foreach_mul_(denom, scale)
            torch._foreach_add_(denom, shift)
            # m / denom as 1 / (denom / m), in denom's memory: no second model-sized allocation
            # per step (m = ±0 gives ±inf, then ±0, as m / denom does; in float16 a quotient
            # above 65504 also becomes inf, so directions below ~1.5e-5 round to 0)
            torch._foreach_div_(denom, m)
            torch._foreach_reciprocal_(denom)
            direction = denom
            for s, d in zip(states, direction):
                s["hd_prev"] = d
            torch._foreach_add_(params, direction, alpha=-lr)
            self._finish(group)
        return loss
