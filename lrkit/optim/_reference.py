"""Slow reference twins of :class:`~lrkit.optim.hd.SGDHD` and :class:`~lrkit.optim.hd.AdamHD`.

One param group, all parameters flattened into one float64 vector, every formula written out
line by line as in Baydin et al. (2018), Algorithms "SGD-HD", "SGDN-HD" and "Adam-HD". The tests
check the fast (``torch._foreach_*``) optimizers against these step by step. Not for training.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch


def _flat(ts: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).double() for t in ts])


class _Reference:
    def __init__(self, params: Sequence[torch.Tensor], *, lr: float, weight_decay: float,
                 hypergrad_lr: float, hypergrad: str, lr_bounds: tuple[float, float]) -> None:
        self.shapes = [p.shape for p in params]
        self.theta = _flat(params)
        self.alpha = float(lr)
        self.lr0 = float(lr)
        self.beta = float(hypergrad_lr)
        self.rule = hypergrad
        self.bounds = lr_bounds
        self.wd = float(weight_decay)
        self.prev_d: torch.Tensor | None = None  # d_{t-1}
        self.prev_factor = 1.0
        self.lrs: list[float] = []  # the LR of every update, alpha_t * c_t

    def _new_alpha(self, g: torch.Tensor) -> float:
        if self.prev_d is None:
            return self.alpha
        h = -float(g @ self.prev_d)  # h_t = grad f(theta_{t-1}) . grad_alpha u_{t-1}
        if self.rule == "additive":
            alpha = self.alpha - self.beta * self.prev_factor * h
        else:
            norm = float(g.norm() * self.prev_d.norm())
            alpha = self.alpha * (1 - self.beta * self.prev_factor * (h / norm if norm else 0.0))
        lo, hi = self.bounds[0] * self.lr0, self.bounds[1] * self.lr0
        if not math.isfinite(alpha):  # NaN or overflow: the low bound, whatever hi is
            return lo
        return min(max(alpha, lo), hi)

    def params(self) -> list[torch.Tensor]:
        out, i = [], 0
        for shape in self.shapes:
            n = math.prod(shape)
            out.append(self.theta[i:i + n].reshape(shape))
            i += n
        return out


class SGDHDReference(_Reference):
    """SGD-HD, written out: ``step(grads, factor)`` takes the raw gradients of the parameters."""

    def __init__(self, params: Sequence[torch.Tensor], *, lr: float, momentum: float = 0.0,
                 dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False,
                 hypergrad_lr: float = 1e-3, hypergrad: str = "additive",
                 lr_bounds: tuple[float, float] = (1e-3, 1e3)) -> None:
        super().__init__(params, lr=lr, weight_decay=weight_decay, hypergrad_lr=hypergrad_lr,
                         hypergrad=hypergrad, lr_bounds=lr_bounds)
        self.mu, self.tau, self.nesterov = momentum, dampening, nesterov
        self.v: torch.Tensor | None = None

    def step(self, grads: Sequence[torch.Tensor], factor: float = 1.0) -> None:
        g = _flat(grads) + self.wd * self.theta
        self.alpha = self._new_alpha(g)
        if self.mu == 0:
            d = g
        else:
            self.v = g.clone() if self.v is None else self.mu * self.v + (1 - self.tau) * g
            d = g + self.mu * self.v if self.nesterov else self.v
        lr = self.alpha * factor
        self.theta = self.theta - lr * d
        self.prev_d, self.prev_factor = d.clone(), factor
        self.lrs.append(lr)


class AdamHDReference(_Reference):
    """Adam-HD, written out (L2 or decoupled weight decay)."""

    def __init__(self, params: Sequence[torch.Tensor], *, lr: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, decoupled_weight_decay: bool = False,
                 hypergrad_lr: float = 1e-7, hypergrad: str = "additive",
                 lr_bounds: tuple[float, float] = (1e-3, 1e3)) -> None:
        super().__init__(params, lr=lr, weight_decay=weight_decay, hypergrad_lr=hypergrad_lr,
                         hypergrad=hypergrad, lr_bounds=lr_bounds)
        self.b1, self.b2, self.eps, self.decoupled = betas[0], betas[1], eps, decoupled_weight_decay
        self.m = torch.zeros_like(self.theta)
        self.v = torch.zeros_like(self.theta)
        self.t = 0

    def step(self, grads: Sequence[torch.Tensor], factor: float = 1.0) -> None:
        g = _flat(grads)
        if not self.decoupled:
            g = g + self.wd * self.theta
        self.alpha = self._new_alpha(g)
        lr = self.alpha * factor
        if self.decoupled:
            self.theta = self.theta * (1 - lr * self.wd)
        self.t += 1
        self.m = self.b1 * self.m + (1 - self.b1) * g
        self.v = self.b2 * self.v + (1 - self.b2) * g * g
        m_hat = self.m / (1 - self.b1 ** self.t)
        v_hat = self.v / (1 - self.b2 ** self.t)
        d = m_hat / (v_hat.sqrt() + self.eps)
        self.theta = self.theta - lr * d
        self.prev_d, self.prev_factor = d, factor
        self.lrs.append(lr)
