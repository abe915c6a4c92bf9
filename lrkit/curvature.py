"""The safe learning rate: curvature, stability tests and batch-size scaling.

For gradient descent on a loss whose Hessian has largest eigenvalue ``λ`` (the *sharpness*), a
step ``θ ← θ − η ∇L`` is stable along the top eigenvector only while ``|1 − ηλ| < 1``, i.e.
``η < 2/λ`` (Nesterov 2004, Thm 2.1.14). lrkit measures ``λ`` on the user's own model and data,
turns it into the bound of the user's optimizer, checks the bound with short runs, and tracks it
during training:

- :func:`hvp`: Hessian-vector products by double backward (Pearlmutter 1994), with a central
  finite-difference fallback for kernels that have no double backward (fused attention).
- :func:`top_eigenvalue`: Lanczos (default) or power iteration on the Hessian (or on the
  preconditioned Hessian ``P^-1/2 H P^-1/2``) of the loss averaged over a fixed set of batches.
- :func:`safe_lr`: ``2/λ`` (GD), ``(2+2β)/λ`` (heavy ball), ``(2+2β)/((1+2β)λ)`` (Nesterov),
  ``(2+2β1)/((1−β1)λ)`` on the preconditioned Hessian (Adam; Cohen et al. 2022); with param
  groups at LR ratios ``R``, on the reference group's LR with ``λ`` of ``R^1/2 H R^1/2``.
- :func:`stability_test`: short constant-LR runs at fractions and multiples of the bound through
  :func:`lrkit.train.run`, so the bound is checked and not just computed.
- :class:`SharpnessTracker`: a :class:`lrkit.train.Callback` recording sharpness against the
  optimizer's threshold (``2/η`` for GD) during training: the edge of stability (Cohen et al.
  2021, "Gradient Descent on Neural Networks Typically Occurs at the Edge of Stability").
- :func:`scale_lr` and :func:`noise_scale`: how the LR moves with the batch size (Goyal et al.
  2017 linear rule; square-root rule, Malladi et al. 2022) and up to which batch size that holds
  (the simple gradient noise scale ``B_simple``, McCandlish et al. 2018).

The bound is *local*: it holds at the point where ``λ`` was measured. Where curvature falls as
training proceeds (logistic regression: the logits grow and ``σ'`` shrinks), the best LR can lie
well above ``2/λ`` at initialisation; ``docs/curvature.md`` shows this on the ``logreg`` task.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from .errors import check_choice, check_int, check_positive, check_range
from .train import Callback, StepInfo, _to_device, check_minimises

if TYPE_CHECKING:  # pragma: no cover
    from .tasks import Task

__all__ = [
    "EigenResult",
    "SafeLR",
    "StabilityRun",
    "StabilityTest",
    "SharpnessTracker",
    "NoiseScale",
    "hvp",
    "top_eigenvalue",
    "safe_lr",
    "stability_test",
    "scale_lr",
    "noise_scale",
    "batch_scaled",
    "add_cli_arguments",
    "cli_main",
]

LossFn = Callable[[nn.Module, Any], torch.Tensor]

#: messages of autograd errors that mean "this op has no double backward"
_NO_DOUBLE_BACKWARD = ("not implemented", "double backward", "does not require grad",
                       "does not have a grad_fn", "twice", "once_differentiable")


# ------------------------------------------------------------------------------------ results
@dataclass(frozen=True)
class EigenResult:
    """The top Hessian eigenvalue of a loss, and how it was obtained.

    Attributes:
        eigenvalue: the largest (algebraic) eigenvalue ``λ_max``: what stability bounds use.
        largest_magnitude: the eigenvalue of largest ``|λ|``, with its sign (negative when
            negative curvature dominates; then ``eigenvalue`` is found by a shifted iteration).
        min_eigenvalue: the smallest Ritz value seen (Lanczos; a power-iteration run reports it
            only when the largest-``|λ|`` eigenvalue is negative), else ``None``.
        n_hvp: Hessian-vector products used.
        converged: whether the estimate met ``tol`` before ``iters`` ran out.
        method: ``"lanczos"`` or ``"power"``.
        hvp: ``"double-backward"`` or ``"finite-difference"``.
        mode: ``"train"`` or ``"eval"`` (see :func:`top_eigenvalue`).
        batches: how many batches the loss was averaged over (a subset of the data).
        examples: how many examples those batches hold (leading dimension of their first tensor).
        preconditioned: whether this is the eigenvalue of ``D H D`` for a diagonal ``D``
            (``P^-1/2`` of an adaptive optimizer, ``R^1/2`` of param groups' LR ratios, or both).
        notes: what was chosen or fell back, in words.
    """

    eigenvalue: float
    largest_magnitude: float
    min_eigenvalue: float | None
    n_hvp: int
    converged: bool
    method: str
    hvp: str
    mode: str
    batches: int
    examples: int
    preconditioned: bool = False
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        d = asdict(self)
        d["notes"] = list(self.notes)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "EigenResult":
        d = dict(d)
        d["notes"] = tuple(d.get("notes", ()))
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class SafeLR:
    """A curvature bound on the learning rate: ``lr = constant / eigenvalue``.

    ``constant`` is the optimizer's stability constant (2 for GD, ``2+2β`` for heavy ball, 38 for
    Adam with β1 = 0.9); ``threshold(lr) = constant / lr`` is the sharpness at which training at
    ``lr`` sits on the edge of stability.

    With a torch optimizer whose param groups step at different LRs, ``lr`` is the bound on the
    reference group's LR (``reference_group``: the first with an LR > 0), ``eigenvalue`` that of
    ``R^1/2 H R^1/2`` with ``R`` each parameter's group ratio ``lr_ratios[g]`` (group LR over the
    reference's), and group ``g``'s safe LR is ``lr_ratios[g] × lr`` (:attr:`group_lrs`).
    """

    lr: float
    constant: float
    optimizer: str
    formula: str
    reference: str
    eigen: EigenResult
    beta: float = 0.0
    lr_ratios: tuple[float, ...] = ()
    reference_group: int = 0

    @property
    def group_lrs(self) -> tuple[float, ...]:
        """Each param group's safe LR, ``lr_ratios[g] × lr`` (``(lr,)`` without groups)."""
        return tuple(r * self.lr for r in self.lr_ratios) if self.lr_ratios else (self.lr,)

    def threshold(self, lr: float) -> float:
        """The sharpness above which ``lr`` (the reference group's) is unstable: ``constant/lr``."""
        return self.constant / check_positive("lr", lr)

    def summary(self) -> str:
        e = self.eigen
        what = "preconditioned sharpness" if e.preconditioned else "sharpness"
        lines = [f"{what} λ = {e.eigenvalue:.4g} ({e.method}, {e.n_hvp} HVPs, "
                 f"{'converged' if e.converged else 'NOT converged'}; {e.hvp} HVPs; "
                 f"{e.mode} mode; {e.batches} batches, {e.examples} examples)",
                 f"safe lr ({self.optimizer}) = {self.formula} = {self.lr:.4g}   [{self.reference}]"]
        if any(r != 1.0 for r in self.lr_ratios):
            lrs = ", ".join(f"{x:.4g}" for x in self.group_lrs)
            lines.append(f"safe lr per param group ({self.reference_group} is the reference): "
                         f"{lrs}")
        lines += [f"note: {n}" for n in e.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["eigen"] = self.eigen.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SafeLR":
        d = dict(d)
        d["eigen"] = EigenResult.from_dict(d["eigen"])
        d["lr_ratios"] = tuple(d.get("lr_ratios", ()))
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


# ------------------------------------------------------------------------------------ the loss
def _check_batches(batches: Any, num_batches: int | None) -> list:
    """A fixed list of batches (the Hessian operator must not change between products)."""
    if isinstance(batches, tuple) and batches and all(isinstance(b, torch.Tensor) for b in batches):
        raise TypeError("batches looks like one batch (a tuple of tensors): pass a list of batches, "
                        "e.g. [(x, y)], or a data loader with num_batches")
    if isinstance(batches, (str, bytes)) or not hasattr(batches, "__iter__"):
        raise TypeError(f"batches must be an iterable of batches, got {type(batches).__name__}")
    if num_batches is None:
        if not hasattr(batches, "__len__"):
            raise ValueError("batches has no length (an iterator or generator): pass num_batches, "
                             "how many batches to average the Hessian over")
        num_batches = len(batches)
        if num_batches == 0:  # not "num_batches must be >= 1": it was not given
            raise ValueError("batches is empty: the Hessian needs at least one batch")
    num_batches = check_int("num_batches", num_batches, minimum=1)
    out = []
    for b in batches:
        out.append(b)
        if len(out) == num_batches:
            break
    if not out:
        raise ValueError("batches is empty: the Hessian needs at least one batch")
    if len(out) < num_batches:
        raise ValueError(f"num_batches is {num_batches} but batches holds only {len(out)}")
    return out


def _examples(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    if isinstance(batch, (list, tuple)) and batch:
        return _examples(batch[0])
    if isinstance(batch, dict) and batch:
        return _examples(next(iter(batch.values())))
    return 1


def _is_dropout(m: nn.Module) -> bool:
    return isinstance(m, (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                          nn.FeatureAlphaDropout))


#: the seed of the random numbers a forward pass draws during a measurement (functional dropout,
#: RReLU, ...): batch ``k`` draws from ``_FORWARD_SEED + k`` on every product, so the operator is
#: one fixed matrix, inside a forked RNG so that the caller's stream is untouched
_FORWARD_SEED = 0

_Saved = list[tuple[nn.Module, str, torch.Tensor, torch.Tensor]]


def _save_buffers(model: nn.Module) -> _Saved:
    """Every buffer of ``model`` (BatchNorm statistics, spectral norm's ``u`` and ``v``, any
    state a forward pass mutates): (module, name, the tensor, a copy)."""
    return [(m, name, b, b.detach().clone()) for m in model.modules()
            for name, b in m._buffers.items() if b is not None]


def _restore_buffers(saved: _Saved) -> None:
    """Put every saved buffer back, the same tensor object with its saved values."""
    with torch.no_grad():
        for m, name, b, copy in saved:
            m._buffers[name] = b
            b.copy_(copy)


def _cuda_devices(model: nn.Module) -> list[int]:
    """The CUDA devices holding ``model``'s parameters or buffers (whose RNGs are forked)."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sorted({t.get_device() for t in tensors if t.is_cuda})


def _rng_states(cuda: list[int]) -> list[torch.Tensor]:
    return [torch.get_rng_state()] + [torch.cuda.get_rng_state(i) for i in cuda]


def _seed(seed: int, cuda: list[int]) -> None:
    """Seed the CPU generator and those of ``cuda`` (not every device, as ``manual_seed``)."""
    torch.random.default_generator.manual_seed(seed)
    for i in cuda:
        torch.cuda.default_generators[i].manual_seed(seed)


@contextlib.contextmanager
def _mode(model: nn.Module, mode: str, notes: list[str]) -> Iterator[None]:
    """Put ``model`` in the Hessian's mode; restore module flags, every buffer and the RNG after.

    ``"train"``: the loss the optimizer descends: BatchNorm normalises with batch statistics (a
    layer the user froze in eval mode stays frozen, as in :func:`lrkit.train.training_modes`),
    dropout modules are switched off so that the operator is deterministic (Lanczos needs a
    fixed matrix). ``"eval"``: every module in eval mode. Either way every buffer (BatchNorm's
    running statistics, spectral norm's ``u``/``v``) is put back afterwards, and the CPU and
    model's CUDA RNGs are forked (``torch.random.fork_rng``), so the caller's random stream is
    untouched: a measurement leaves the model's ``state_dict`` and the training run bitwise as
    they were.
    """
    from .train import module_modes, set_module_modes, training_modes

    flags = module_modes(model)
    saved = _save_buffers(model)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
    dropouts = [m for m in model.modules() if _is_dropout(m) and m.p > 0]
    if mode == "train":
        training_modes(model)  # as the training loop does: a frozen BatchNorm stays frozen
        for m in dropouts:
            m.eval()
        live = [m for m in norms if m.training]
        if live:
            notes.append(f"train mode: {len(live)} BatchNorm layer(s) use batch statistics "
                         f"(running statistics restored afterwards)")
        if dropouts:
            notes.append(f"train mode with {len(dropouts)} dropout layer(s) switched off, so the "
                         f"Hessian is deterministic")
    else:
        model.eval()
        if norms or dropouts:
            notes.append(f"eval mode: BatchNorm uses running statistics, dropout is off "
                         f"({len(norms)} BatchNorm, {len(dropouts)} dropout layer(s))")
    try:
        with torch.random.fork_rng(devices=_cuda_devices(model)):
            yield
    finally:
        _restore_buffers(saved)
        set_module_modes(model, flags)


class _Operator:
    """``v -> D (H + wd) D v`` for the loss averaged over fixed batches (D = 1 without a
    preconditioner), on flat vectors. Counts products; chooses double backward or differences.

    Every forward pass starts from the same state: the model's buffers as they were (spectral
    norm's power iteration would otherwise move ``u``/``v`` on each pass) and the RNG seeded with
    ``_FORWARD_SEED + k`` for batch ``k`` (functional dropout draws the same mask on every
    product). Use it inside :func:`_mode`, which forks the RNG and restores the buffers after."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, batches: list, *, hvp: str,
                 weight_decay: Sequence[float] | None, scale: Sequence[torch.Tensor] | None,
                 notes: list[str]) -> None:
        self.model, self.loss_fn, self.batches, self.notes = model, loss_fn, batches, notes
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("model has no parameter that requires grad")
        self.device = self.params[0].device
        self.dtype = self.params[0].dtype
        self.batches = [_to_device(b, self.device) for b in batches]
        self.method = hvp
        self.wd = None if weight_decay is None else [float(w) for w in weight_decay]
        self.scale = None if scale is None else torch.cat([s.reshape(-1).to(self.dtype)
                                                           for s in scale])
        self.n = sum(p.numel() for p in self.params)
        self.count = 0
        self.saved = _save_buffers(model)
        self.cuda = _cuda_devices(model)
        self.checked_rng = False

    # -- flat <-> per-parameter
    def split(self, v: torch.Tensor) -> list[torch.Tensor]:
        out, i = [], 0
        for p in self.params:
            out.append(v[i:i + p.numel()].view_as(p).to(p.dtype))
            i += p.numel()
        return out

    def flat(self, parts: Sequence[torch.Tensor | None]) -> torch.Tensor:
        # a sparse gradient (nn.Embedding(sparse=True)) has no reshape: densified
        return torch.cat([(torch.zeros_like(p) if g is None else
                           g.to_dense() if g.is_sparse else g).reshape(-1).to(self.dtype)
                          for p, g in zip(self.params, parts)])

    def loss(self, k: int) -> torch.Tensor:
        """The loss of batch ``k``, from the saved buffers and batch ``k``'s fixed seed."""
        _restore_buffers(self.saved)
        _seed(_FORWARD_SEED + k, self.cuda)
        if self.checked_rng:
            out = self.loss_fn(self.model, self.batches[k])
        else:  # the first pass: does the forward draw random numbers?
            seeded = _rng_states(self.cuda)
            out = self.loss_fn(self.model, self.batches[k])
            self.checked_rng = True
            if any(not torch.equal(a, b) for a, b in zip(seeded, _rng_states(self.cuda))):
                self.notes.append("the forward pass draws random numbers (functional dropout or "
                                  "the like, which cannot be switched off as dropout modules "
                                  "are): each batch draws from a fixed seed, the same on every "
                                  "product, so the Hessian is that of one fixed draw")
        if not isinstance(out, torch.Tensor) or out.dim() != 0:
            raise TypeError("loss_fn(model, batch) must return a scalar tensor, got "
                            f"{type(out).__name__} {getattr(out, 'shape', '')}")
        return out

    def gradient(self) -> torch.Tensor:
        """The mean gradient over the batches (flat)."""
        total = torch.zeros(self.n, device=self.device, dtype=self.dtype)
        for k in range(len(self.batches)):
            g = torch.autograd.grad(self.loss(k), self.params, allow_unused=True)
            total += self.flat(g)
        return total / len(self.batches)

    def _double_backward(self, vs: list[torch.Tensor]) -> torch.Tensor:
        total = torch.zeros(self.n, device=self.device, dtype=self.dtype)
        for k in range(len(self.batches)):
            g = torch.autograd.grad(self.loss(k), self.params, create_graph=True, allow_unused=True)
            dot = sum((gi * vi).sum() for gi, vi in zip(g, vs) if gi is not None)
            if not isinstance(dot, torch.Tensor) or not dot.requires_grad:
                raise RuntimeError("the gradient does not require grad: no double backward")
            hv = torch.autograd.grad(dot, self.params, allow_unused=True)
            total += self.flat(hv)
        return total / len(self.batches)

    def _finite_difference(self, v: torch.Tensor) -> torch.Tensor:
        """Central difference ``(∇L(θ + εv) − ∇L(θ − εv)) / 2ε``, ``ε = eps^(1/3)·max(1, |θ|∞)/|v|``
        (the step that balances truncation against rounding error for central differences)."""
        with torch.no_grad():
            theta = torch.cat([p.detach().reshape(-1).to(self.dtype) for p in self.params])
            vnorm = float(v.norm())
            if vnorm == 0.0:
                return torch.zeros_like(v)
            eps = torch.finfo(self.dtype).eps ** (1.0 / 3.0) * max(1.0, float(theta.abs().max()))
            eps /= vnorm
            saved = [p.detach().clone() for p in self.params]

        def at(sign: float) -> torch.Tensor:
            with torch.no_grad():
                for p, s, d in zip(self.params, saved, self.split(v)):
                    p.copy_(s + sign * eps * d)
            return self.gradient()

        try:
            plus, minus = at(1.0), at(-1.0)
        finally:
            with torch.no_grad():
                for p, s in zip(self.params, saved):
                    p.copy_(s)
        return (plus - minus) / (2.0 * eps)

    def hessian_vector(self, v: torch.Tensor) -> torch.Tensor:
        """``(H + wd) v`` (no preconditioner), by the chosen or the working method."""
        self.count += 1
        if self.method in ("auto", "double-backward"):
            try:
                hv = self._double_backward(self.split(v))
                self.method = "double-backward"
            except RuntimeError as e:
                text = str(e).lower()
                if self.method == "double-backward" or not any(s in text for s in _NO_DOUBLE_BACKWARD):
                    raise
                self.notes.append(f"no double backward in this model ({str(e).splitlines()[0]}); "
                                  f"using central finite-difference HVPs (two gradients each)")
                self.method = "finite-difference"
                hv = self._finite_difference(v)
        else:
            hv = self._finite_difference(v)
        if self.wd is not None:
            hv = hv + torch.cat([w * vi.reshape(-1) for w, vi in zip(self.wd, self.split(v))]
                                ).to(hv.dtype)
        return hv

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        if self.scale is None:
            return self.hessian_vector(v)
        return self.scale * self.hessian_vector(self.scale * v)


def hvp(model: nn.Module, loss_fn: LossFn, batches: Iterable, *, vector: Sequence[torch.Tensor],
        num_batches: int | None = None, method: str = "auto", mode: str = "train"
        ) -> list[torch.Tensor]:
    """The Hessian-vector product ``H v`` of the loss averaged over ``batches``.

    ``H v = ∇_θ (∇_θ L(θ) · v)`` by double backward (Pearlmutter 1994, "Fast exact multiplication
    by the Hessian"), or ``(∇L(θ + εv) − ∇L(θ − εv)) / 2ε`` by central differences when a kernel has
    no double backward (``method="auto"`` falls back by itself; ``"double-backward"`` or
    ``"finite-difference"`` force one).

    Args:
        model: the model; its trainable parameters are ``θ`` (in ``model.parameters()`` order).
        loss_fn: ``loss_fn(model, batch) -> scalar`` (the signature of ``Task.loss``; wrap a
            criterion as ``lambda m, b: F.cross_entropy(m(b[0]), b[1])``).
        batches: an iterable of batches (a list, a data loader); see ``num_batches``.
        vector: one tensor per trainable parameter.
        num_batches: how many batches to average over (default: all of a sized ``batches``).
        method: ``"auto"``, ``"double-backward"`` or ``"finite-difference"``.
        mode: ``"train"`` or ``"eval"`` (see :func:`top_eigenvalue`).

    Returns:
        one tensor per trainable parameter.

    >>> m = nn.Linear(2, 1, bias=False)
    >>> x = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    >>> loss = lambda m, b: (m(b[0]) ** 2).mean()          # H = 2 X^T X / n = diag(1, 4)
    >>> [t.tolist() for t in hvp(m, loss, [(x,)], vector=[torch.tensor([[1.0, 1.0]])])]
    [[[1.0, 4.0]]]
    """
    method = check_choice("method", method, ("auto", "double-backward", "finite-difference"))
    mode = check_choice("mode", mode, ("train", "eval"))
    _check_model(model, loss_fn)
    data = _check_batches(batches, num_batches)
    notes: list[str] = []
    with _mode(model, mode, notes):
        op = _Operator(model, loss_fn, data, hvp=method, weight_decay=None, scale=None, notes=notes)
        vs = list(vector)
        if len(vs) != len(op.params) or any(v.shape != p.shape for v, p in zip(vs, op.params)):
            raise ValueError("vector must hold one tensor per trainable parameter, shaped like it: "
                             f"expected {[tuple(p.shape) for p in op.params]}, got "
                             f"{[tuple(getattr(v, 'shape', ())) for v in vs]}")
        return op.split(op(op.flat(vs)))


def _functional_losses() -> frozenset:
    """``torch.nn.functional``'s criteria (``cross_entropy``, ``mse_loss``, ...): what
    ``find_lr`` takes as its ``loss_fn(output, target)``."""
    import torch.nn.functional as F

    names = [n for n in dir(F) if n.endswith("_loss")] + [
        "cross_entropy", "binary_cross_entropy", "binary_cross_entropy_with_logits", "kl_div"]
    return frozenset(getattr(F, n) for n in names if callable(getattr(F, n, None)))


_FUNCTIONAL_LOSSES = _functional_losses()


def _check_loss_fn(loss_fn: Any) -> None:
    """``loss_fn(model, batch) -> loss``; a criterion (a module or a ``torch.nn.functional``
    one, find_lr's ``loss_fn(output, target)``) or an optimizer in its place is named."""
    if isinstance(loss_fn, nn.modules.loss._Loss):
        raise TypeError(f"loss_fn must be callable(model, batch) -> loss (like find_lr's "
                        f"step_fn), got the criterion {type(loss_fn).__name__}(); pass "
                        "lambda model, batch: criterion(model(batch[0]), batch[1])")
    if loss_fn in _FUNCTIONAL_LOSSES:
        raise TypeError(f"loss_fn must be callable(model, batch) -> loss (like find_lr's "
                        f"step_fn), got the criterion {loss_fn.__name__}(output, target) "
                        f"(find_lr's loss_fn); pass lambda model, batch: "
                        f"{loss_fn.__name__}(model(batch[0]), batch[1])")
    if isinstance(loss_fn, torch.optim.Optimizer):
        raise TypeError(f"loss_fn must be callable(model, batch) -> loss, got the optimizer "
                        f"{type(loss_fn).__name__}: the arguments are (model, loss_fn, batches, "
                        "optimizer=...)")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable(model, batch) -> loss, got {loss_fn!r}")


def _check_model(model: Any, loss_fn: Any) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _check_loss_fn(loss_fn)


# ------------------------------------------------------------------------------- eigenvalues
def _start_vector(n: int, seed: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(int(seed))
    v = torch.randn(n, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    return v / v.norm()


#: Lanczos steps before the convergence test may stop it (fewer only when the parameters are
#: fewer; a run with fewer ``iters`` is not converged). The a-posteriori bound certifies that
#: the top Ritz value is close to *an* eigenvalue, not to the largest, which a start vector
#: nearly orthogonal to the top eigenvector hides from a small Krylov space (a 5-parameter
#: regression stopped at its second eigenvalue after 3 steps, its start vector's top component
#: 0.006). Each further step amplifies that component by a Chebyshev factor; ARPACK (scipy's
#: ``eigsh``) searches a Krylov space of at least 20 for one eigenvalue by default, lrkit's
#: cheaper floor is 10.
_MIN_LANCZOS_STEPS = 10


def _lanczos(op: Callable[[torch.Tensor], torch.Tensor], v: torch.Tensor, iters: int, tol: float
             ) -> tuple[float, float, float, bool, int]:
    """Lanczos with full reorthogonalisation (Golub & Van Loan 2013, §10.1).

    Returns (largest Ritz value, largest-|.| Ritz value, smallest Ritz value, converged, steps).
    Convergence of the top Ritz value θ with Ritz vector y uses the a-posteriori bound
    ``|λ − θ| ≤ min(r, r²/gap)``, ``r = β_k |s_k|`` (Parlett 1998, Thm 11.7.1 and §11.5), tested
    from step ``min(_MIN_LANCZOS_STEPS, n)`` on; an invariant Krylov space (``β_k ≈ 0``) stops it
    at any step.
    """
    least = min(_MIN_LANCZOS_STEPS, v.numel())
    Q = torch.zeros(iters, v.numel(), dtype=v.dtype, device=v.device)  # the Lanczos basis
    Q[0] = v
    alphas: list[float] = []
    betas: list[float] = []
    prev, beta = None, 0.0
    q = v
    top = big = low = float("nan")
    for k in range(iters):
        w = op(q)
        alpha = float(torch.dot(w, q))
        w = w - alpha * q - (beta * prev if prev is not None else 0.0)
        B = Q[:k + 1]
        for _ in range(2):  # twice is enough (Kahan's "twice is enough", Parlett §6.9)
            w = w - B.T @ (B @ w)
        alphas.append(alpha)
        beta = float(w.norm())
        T = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
        theta, S = np.linalg.eigh(T)
        top, low = float(theta[-1]), float(theta[0])
        big = top if abs(top) >= abs(low) else low
        r = beta * abs(S[-1, -1])
        gap = float(theta[-1] - theta[-2]) if len(theta) > 1 else 0.0
        bound = min(r, r * r / gap) if gap > 0 else r  # no gap known yet: the residual alone
        scale = max(abs(top), abs(low), 1e-30)
        if beta <= 1e-12 * scale or (k + 1 >= least and bound <= tol * max(abs(top), 1e-30)):
            return top, big, low, True, k + 1
        if k + 1 == iters:
            break
        betas.append(beta)
        prev, q = q, w / beta
        Q[k + 1] = q
    return top, big, low, False, iters


def _power(op: Callable[[torch.Tensor], torch.Tensor], v: torch.Tensor, iters: int, tol: float,
           shift: float = 0.0) -> tuple[float, bool, int, torch.Tensor]:
    """Power iteration on ``op − shift·I``; the Rayleigh quotient's relative change ≤ ``tol``
    stops it. Returns (eigenvalue of ``op − shift``, converged, steps, vector)."""
    lam = float("nan")
    for k in range(iters):
        w = op(v) - shift * v
        new = float(torch.dot(w, v))
        norm = float(w.norm())
        if norm == 0.0:
            return 0.0, True, k + 1, v
        v = w / norm
        if k > 0 and abs(new - lam) <= tol * abs(new):
            return new, True, k + 1, v
        lam = new
    return lam, False, iters, v


def top_eigenvalue(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Iterable,
    *,
    iters: int = 30,
    tol: float = 1e-3,
    method: str = "lanczos",
    num_batches: int | None = None,
    mode: str = "train",
    hvp: str = "auto",
    precondition: Sequence[torch.Tensor] | None = None,
    weight_decay: float | Sequence[float] | None = None,
    seed: int = 0,
) -> EigenResult:
    """The largest Hessian eigenvalue (the sharpness) of the loss averaged over ``batches``.

    ``H = ∇²_θ (1/K) Σ_k loss_fn(model, batch_k)`` over ``K = num_batches`` fixed batches (a
    subset of the data, reported in the result). Lanczos builds a tridiagonal ``T_k = Q_k^T H Q_k``
    from ``k`` HVPs and reads both ends of the spectrum from it; power iteration ``v ← Hv/|Hv|``
    finds the largest-``|λ|`` eigenvalue and, when that one is negative, reruns on
    ``H − λ_neg I`` to reach ``λ_max``.

    Traps, handled and said in ``notes``:

    - **negative curvature**: the largest-``|λ|`` eigenvalue can be negative (a saddle); the result's
      ``eigenvalue`` is always the largest *algebraic* one, the one step-size stability depends on;
      ``largest_magnitude`` keeps the other.
    - **train vs eval mode**: BatchNorm and dropout change the Hessian. ``mode="train"`` (default)
      measures the loss the optimizer descends: BatchNorm with batch statistics, dropout modules
      switched *off* so that the operator is a fixed matrix. ``mode="eval"`` puts every module in
      eval mode.
    - **state and randomness in the forward**: every forward pass starts from the model's
      buffers as they were (BatchNorm statistics, spectral norm's ``u``/``v``) and from a fixed
      seed per batch (functional dropout draws the same mask on every product), inside a forked
      RNG: the operator is one matrix, and afterwards the model's ``state_dict`` and the caller's
      random stream are bitwise as before.
    - **a start vector blind to the top eigenvector**: Lanczos tests convergence only from step
      ``min(10, n_params)`` on (a small Krylov space can converge to the second eigenvalue).
    - **no double backward** (fused attention kernels): ``hvp="auto"`` falls back to central
      finite differences, two gradient evaluations per product.

    Args:
        model, loss_fn, batches, num_batches: as in :func:`hvp`.
        iters: the most HVPs to spend (Lanczos steps or power iterations; Lanczos reports
            convergence only after ``min(10, n_params)`` steps).
        tol: relative accuracy at which to stop (Lanczos: the a-posteriori error bound; power:
            the Rayleigh quotient's relative change).
        method: ``"lanczos"`` or ``"power"``.
        mode: ``"train"`` or ``"eval"``.
        hvp: ``"auto"``, ``"double-backward"`` or ``"finite-difference"``.
        precondition: one tensor ``d >= 0`` per trainable parameter: the eigenvalue of ``D H
            D``, ``D = diag(d)`` (Adam: ``d = (sqrt(v̂) + ε)^-1/2``, so ``D H D = P^-1/2 H
            P^-1/2``; 0 where the optimizer does not move a coordinate).
        weight_decay: coupled L2 weight decay ``wd`` added to the Hessian (``H + wd I``): a float, or
            one value per trainable parameter.
        seed: the start vector's seed.

    Returns:
        :class:`EigenResult`.

    >>> m = nn.Linear(2, 1, bias=False)
    >>> x = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    >>> r = top_eigenvalue(m, lambda m, b: (m(b[0]) ** 2).mean(), [(x,)])
    >>> round(r.eigenvalue, 6), r.n_hvp <= 2, r.converged
    (4.0, True, True)
    """
    _check_model(model, loss_fn)
    iters = check_int("iters", iters, minimum=1)
    tol = check_range("tol", tol, 0.0, 1.0, low_open=True, high_open=True)
    method = check_choice("method", method, ("lanczos", "power"))
    mode = check_choice("mode", mode, ("train", "eval"))
    hvp = check_choice("hvp", hvp, ("auto", "double-backward", "finite-difference"))
    seed = check_int("seed", seed, minimum=0)
    data = _check_batches(batches, num_batches)
    params = [p for p in model.parameters() if p.requires_grad]
    wd = _check_weight_decay(weight_decay, params)
    scale = _check_precondition(precondition, params)
    notes: list[str] = []
    with _mode(model, mode, notes):
        op = _Operator(model, loss_fn, data, hvp=hvp, weight_decay=wd, scale=scale, notes=notes)
        v0 = _start_vector(op.n, seed, op.device, op.dtype)
        low: float | None
        if method == "lanczos":
            top, big, low, converged, _ = _lanczos(op, v0, iters, tol)
            if big < 0:
                notes.append(f"the largest-|λ| eigenvalue is negative ({big:.4g}): negative "
                             f"curvature dominates; the bound uses the largest positive one")
        else:
            big, converged, _, _ = _power(op, v0, iters, tol)
            top, low = big, None
            if big < 0:
                left = iters - op.count
                notes.append(f"the largest-|λ| eigenvalue is negative ({big:.4g}): power iteration "
                             f"re-run on H − λ_neg·I to reach the largest positive eigenvalue")
                if left < 1:
                    converged = False
                    top = big
                else:
                    shifted, conv2, _, _ = _power(op, _start_vector(op.n, seed + 1, op.device,
                                                                     op.dtype), left, tol, big)
                    top, low = shifted + big, big
                    converged = converged and conv2
        n_hvp, n_params = op.count, op.n
        used = op.method
    if not converged:
        notes.append(f"not converged to tol={tol:g} within iters={iters} HVPs")
        if method == "lanczos" and iters < min(_MIN_LANCZOS_STEPS, n_params):
            notes.append(f"Lanczos claims convergence only after {_MIN_LANCZOS_STEPS} steps (or "
                         f"one per parameter): fewer cannot rule out a larger eigenvalue that "
                         f"the start vector barely touches")
    if top <= 0:
        notes.append("no positive curvature found: the loss is locally concave or flat here, "
                     "so curvature gives no step-size bound")
    return EigenResult(eigenvalue=float(top), largest_magnitude=float(big),
                       min_eigenvalue=None if low is None else float(low), n_hvp=n_hvp,
                       converged=bool(converged), method=method,
                       hvp=used if used != "auto" else "double-backward", mode=mode,
                       batches=len(data), examples=sum(_examples(b) for b in data),
                       preconditioned=scale is not None, notes=tuple(notes))


def _check_weight_decay(weight_decay: Any, params: list) -> list[float] | None:
    if weight_decay is None:
        return None
    if isinstance(weight_decay, (int, float)) and not isinstance(weight_decay, bool):
        wd = check_positive("weight_decay", weight_decay, allow_zero=True)
        return None if wd == 0 else [wd] * len(params)
    if isinstance(weight_decay, (bool, str)) or not hasattr(weight_decay, "__iter__"):
        raise TypeError(f"weight_decay must be a float or one value per trainable parameter, "
                        f"got {weight_decay!r}")
    values = [check_positive("weight_decay[]", w, allow_zero=True) for w in weight_decay]
    if len(values) != len(params):
        raise ValueError(f"weight_decay must be a float or one value per trainable parameter "
                         f"({len(params)}), got {len(values)}")
    return values if any(values) else None


def _check_precondition(precondition: Any, params: list) -> list[torch.Tensor] | None:
    if precondition is None:
        return None
    ds = list(precondition)
    if len(ds) != len(params) or any(getattr(d, "shape", None) != p.shape
                                     for d, p in zip(ds, params)):
        raise ValueError("precondition must hold one tensor per trainable parameter, shaped like "
                         "it")
    if any(not bool(torch.isfinite(d).all()) or bool((d < 0).any()) for d in ds):
        raise ValueError("precondition must be finite and >= 0 everywhere")
    if not any(bool((d > 0).any()) for d in ds):
        raise ValueError("precondition is 0 everywhere: no coordinate moves")
    return [d.detach().to(p.device) for d, p in zip(ds, params)]


# ------------------------------------------------------------------------------------ safe LR
@dataclass(frozen=True)
class _Rule:
    """An optimizer's linear stability rule: stable while ``λ(D H D) < constant / lr``."""

    name: str
    constant: float
    formula: str
    reference: str
    beta: float = 0.0
    precondition: list[torch.Tensor] | None = None
    weight_decay: list[float] | None = None
    notes: tuple[str, ...] = ()
    lr_ratios: tuple[float, ...] = ()
    reference_group: int = 0


_GD_REF = "Nesterov 2004, Thm 2.1.14 (descent lemma); Cohen et al. 2021"
_HB_REF = "Polyak 1964; Cohen et al. 2021, 'Gradient Descent on Neural Networks Typically Occurs " \
          "at the Edge of Stability', Appendix"
_ADAM_REF = "Cohen et al. 2022, 'Adaptive Gradient Methods at the Edge of Stability'"


def _sgd_rule(beta: float, *, dampening: float = 0.0, nesterov: bool = False) -> tuple[float, str, str, str]:
    """(constant, name, formula, reference) of SGD with (heavy-ball or Nesterov) momentum β.

    On ``f = λθ²/2`` torch's SGD is the linear map ``b ← βb + (1−d)λθ``, ``θ ← θ − ηb`` (heavy
    ball) whose eigenvalues stay in the unit disc iff ``η(1−d)λ < 2 + 2β``; Nesterov
    (``θ ← θ − η(λθ + βb)``) is stable iff ``ηλ < (2 + 2β)/(1 + 2β)``.
    """
    if beta == 0.0:
        c = 2.0 / (1.0 - dampening) if dampening else 2.0
        return c, "sgd", "2/λ" if not dampening else f"2/((1-{dampening:g})λ)", _GD_REF
    if nesterov:
        c = (2 + 2 * beta) / (1 + 2 * beta)
        return c, "nesterov", f"(2+2β)/((1+2β)λ), β={beta:g}", _HB_REF
    c = (2 + 2 * beta) / (1 - dampening)
    damp = f"(1-{dampening:g})" if dampening else ""
    return c, "momentum", f"(2+2β)/({damp}λ), β={beta:g}".replace("(λ)", "λ"), _HB_REF


def _adam_constant(beta1: float) -> tuple[float, str]:
    return (2 + 2 * beta1) / (1 - beta1), f"(2+2β1)/((1-β1)λ), β1={beta1:g}, λ of P^-1/2 H P^-1/2"


def _nesterov_adam_constant(a: float, b: float, beta1: float) -> float:
    """``c`` with ``η λ < c`` for the update ``θ ← θ − η(a·g + b·m)``, ``m ← β1 m + (1−β1) g``.

    On ``f = λθ²/2`` the state ``(θ_t, m_{t−1})`` maps linearly with trace ``1 + β1 − ηλ(a +
    b(1−β1))`` and determinant ``β1(1 − ηλa)``: an eigenvalue leaves the unit disc through −1
    at ``ηλ = (2+2β1)/(a(1+β1) + b(1−β1))``, or as a complex pair once the determinant reaches
    −1, at ``ηλ = (1+1/β1)/a``. Adam is ``a=0, b=1``: ``(2+2β1)/(1−β1)``; torch's Nesterov SGD
    (``b = β/(1−β)`` for ``m`` in EMA units) ``a=1``: ``(2+2β)/(1+2β)``."""
    c = (2 + 2 * beta1) / (a * (1 + beta1) + b * (1 - beta1))
    if a > 0 and beta1 > 0:
        c = min(c, (1 + 1 / beta1) / a)
    return c


def _second_moments(opt: torch.optim.Optimizer, params: list, key: str,
                    scale: Callable[[dict], float]) -> list | None:
    """Each parameter's ``opt.state[p][key] * scale(state)``, or ``None`` when any lacks it (a
    fresh optimizer)."""
    out = []
    for p in params:
        st = opt.state.get(p, {})
        if key not in st:
            return None
        out.append(st[key].detach() * scale(st))
    return out


def _debias(beta2: float) -> Callable[[dict], float]:
    """The bias correction ``1/(1 − β2^t)`` of a parameter's second moments at its step ``t``."""
    return lambda st: 1.0 / (1.0 - beta2 ** max(float(st.get("step", 1)), 1.0))


_NO_MOMENTS = ("the optimizer has no second moments yet: P estimated from the mean squared "
               "mini-batch gradient over the batches used (its v after a first step)")


def _rule_from_optimizer(opt: torch.optim.Optimizer, model: nn.Module, estimate: Callable[[], list]
                         ) -> _Rule:
    """Read the rule, the preconditioner and coupled weight decay from a torch optimizer."""
    params = [p for p in model.parameters() if p.requires_grad]
    group_of = {id(p): g for g in opt.param_groups for p in g["params"]}
    missing = [i for i, p in enumerate(params) if id(p) not in group_of]
    if missing:
        raise ValueError("optimizer must hold every trainable parameter of model "
                         f"(parameters {missing[:5]} are missing)")
    groups = [group_of[id(p)] for p in params]
    g0 = opt.param_groups[0]
    for key in ("momentum", "betas", "nesterov", "dampening", "alpha", "centered", "eps",
                "lr_decay"):
        vals = {repr(g.get(key)) for g in opt.param_groups}
        if len(vals) > 1:
            raise ValueError(f"optimizer's param groups disagree on {key!r} ({sorted(vals)}): "
                             f"one stability rule needs one value")
    notes: list[str] = []
    wds = [float(g.get("weight_decay", 0.0) or 0.0) for g in groups]
    name = type(opt).__name__
    from .optim.hd import SGDHD, AdamHD

    if isinstance(opt, (SGDHD, AdamHD)):
        notes.append(f"{name} adapts its LR: this is the bound of its base rule's update, against "
                     "which the adapted LR can be read at any step")
    if isinstance(opt, (torch.optim.SGD, SGDHD)):
        beta = float(g0.get("momentum", 0.0) or 0.0)
        c, kind, formula, ref = _sgd_rule(beta, dampening=float(g0.get("dampening", 0.0) or 0.0),
                                          nesterov=bool(g0.get("nesterov", False)))
        return _Rule(kind, c, formula, ref, beta, None, wds if any(wds) else None, tuple(notes))
    if isinstance(opt, (torch.optim.Adam, torch.optim.AdamW, AdamHD, torch.optim.NAdam,
                        torch.optim.RAdam, torch.optim.Adamax)):
        return _adam_family_rule(opt, params, wds, estimate, notes)
    if isinstance(opt, torch.optim.RMSprop):
        beta = float(g0.get("momentum", 0.0) or 0.0)
        eps = float(g0["eps"])
        vs = []
        for p in params:
            st = opt.state.get(p, {})
            if "square_avg" not in st:
                vs = None
                break
            v = st["square_avg"].detach()
            if g0.get("centered") and "grad_avg" in st:
                v = v - st["grad_avg"].detach() ** 2
            vs.append(v.clamp_min(0.0))
        if vs is None:
            vs = estimate()
            notes.append("the optimizer has no second moments yet: P estimated from the mean "
                         "squared mini-batch gradient over the batches used")
        pre = [(v.sqrt() + eps).rsqrt() for v in vs]
        c = 2 + 2 * beta
        formula = f"(2+2β)/λ, β={beta:g}, λ of P^-1/2 H P^-1/2" if beta else \
            "2/λ, λ of P^-1/2 H P^-1/2"
        return _Rule("rmsprop", c, formula, _ADAM_REF, beta, pre, wds if any(wds) else None,
                     tuple(notes))
    if isinstance(opt, torch.optim.Adagrad):
        # θ ← θ − η_t g / (sqrt(G) + ε), G the running sum of squared gradients (Duchi et al.
        # 2011): gradient descent preconditioned by D = (sqrt(G) + ε)^-1, stable while
        # η_t λ(D^1/2 H D^1/2) < 2 at the current G (no momentum)
        eps = float(g0["eps"])
        step = float(opt.state.get(params[0], {}).get("step", 0)) if params else 0.0
        if step < 1:
            # G is the initial accumulator alone until the first step adds g²
            vs = [v + float(g.get("initial_accumulator_value", 0.0))
                  for v, g in zip(estimate(), groups)]
            notes.append("the optimizer has taken no step yet: G estimated as its initial "
                         "accumulator plus the mean squared mini-batch gradient over the "
                         "batches used (Adagrad's G after a first step)")
        else:
            vs = [opt.state[p]["sum"].detach() for p in params]
            notes.append(f"P = sqrt(G) + ε from the optimizer's running sum of squared "
                         f"gradients (step {int(step)}); it only grows, so the bound rises "
                         "as training goes on")
        decay = float(g0.get("lr_decay", 0.0) or 0.0)
        if decay:
            notes.append(f"lr_decay={decay:g}: the bound is on the decayed LR η/(1 + (t-1)"
                         f"·lr_decay) that the optimizer steps with at step t")
        pre = [(v.sqrt() + eps).rsqrt() for v in vs]
        return _Rule("adagrad", 2.0, "2/λ, λ of P^-1/2 H P^-1/2",
                     "Duchi et al. 2011 (Adagrad) as preconditioned gradient descent; "
                     + _GD_REF, 0.0, pre, wds if any(wds) else None, tuple(notes))
    if isinstance(opt, torch.optim.ASGD):
        # θ ← θ(1 − λ_d η_t) − η_t (g + wd θ): gradient descent on H + (wd + λ_d) I at the
        # step size η_t = lr / (1 + λ_d lr t)^α, which starts at lr and only falls
        lambds = [float(g.get("lambd", 0.0) or 0.0) for g in groups]
        wds = [w + d for w, d in zip(wds, lambds)]
        notes.append("the bound is on ASGD's step size η_t = lr/(1 + λ·lr·t)^α, which starts at "
                     "lr and only falls; its decay term λ is added to the Hessian like weight "
                     "decay")
        return _Rule("asgd", 2.0, "2/λ", "Polyak & Juditsky 1992 (ASGD) as gradient descent; "
                     + _GD_REF, 0.0, None, wds if any(wds) else None, tuple(notes))
    raise TypeError(f"optimizer {name} has no stability rule here: pass a torch SGD (with or "
                    f"without momentum), Adam, AdamW, NAdam, RAdam, Adamax, RMSprop, Adagrad or "
                    f"ASGD (or lrkit's SGDHD / AdamHD), or optimizer='sgd' | 'momentum' | 'adam'")


def _lr_ratios(opt: torch.optim.Optimizer) -> tuple[int, list[float], str]:
    """(reference group, each param group's LR over the reference group's, the key read).

    The reference is the first group with an LR > 0 (group 0 unless it is frozen at 0). Where
    every LR is 0 (a warmup from 0), an LR scheduler's base LRs (``initial_lr``) give the ratios;
    without them the groups count as equal."""
    groups = opt.param_groups
    for key in ("lr", "initial_lr"):
        if any(key not in g for g in groups):
            continue
        lrs = [float(g[key]) for g in groups]
        ref = next((i for i, lr in enumerate(lrs) if lr > 0), None)
        if ref is not None:
            return ref, [lr / lrs[ref] for lr in lrs], key
    return 0, [1.0] * len(groups), "lr"


def _with_lr_ratios(rule: _Rule, opt: torch.optim.Optimizer, params: list) -> _Rule:
    """``rule`` for param groups at different LRs.

    Group ``g`` steps at ``r_g·lr`` (``lr`` the reference group's), so the update is ``lr·R·u``
    with ``R = diag(r_g)`` over the coordinates: gradient descent's linear map ``I − lr·R·H`` has
    the eigenvalues of ``I − lr·R^1/2 H R^1/2``, and with a preconditioner ``D = P^-1/2`` those
    of ``I − lr·(R^1/2 D) H (D R^1/2)``. The momentum rules keep their constant (the same change
    of variables ``θ = R^1/2 φ`` maps their state), so the bound is on ``lr`` with ``λ`` of the
    rescaled operator ``v → R^1/2 D (H + wd) D R^1/2 v``."""
    ref, ratios, key = _lr_ratios(opt)
    rule = dataclasses.replace(rule, lr_ratios=tuple(ratios), reference_group=ref)
    if all(r == 1.0 for r in ratios):
        return rule
    group_of = {id(p): i for i, g in enumerate(opt.param_groups) for p in g["params"]}
    base = rule.precondition or [torch.ones_like(p) for p in params]
    pre = [d * math.sqrt(ratios[group_of[id(p)]]) for d, p in zip(base, params)]
    formula = rule.formula.replace("λ of P^-1/2 H P^-1/2", "λ of R^1/2 P^-1/2 H P^-1/2 R^1/2")
    if formula == rule.formula:  # no preconditioner
        formula += ", λ of R^1/2 H R^1/2"
    listed = ", ".join(f"{r:.4g}" for r in ratios)
    source = "" if key == "lr" else " (the LR scheduler's base LRs: every LR is 0 now)"
    note = (f"param groups step at different LRs, ({listed}) × group {ref}'s{source}: the bound "
            f"is on group {ref}'s LR with λ of R^1/2 H R^1/2 (R = diag of each parameter's group "
            f"ratio); group g's safe LR is its ratio × this one (SafeLR.group_lrs)")
    return dataclasses.replace(rule, precondition=pre, formula=formula,
                               notes=rule.notes + (note,))


def _adam_family_rule(opt: torch.optim.Optimizer, params: list, wds: list[float],
                      estimate: Callable[[], list], notes: list[str]) -> _Rule:
    """The rules of Adam (torch's Adam and AdamW, lrkit's AdamHD) and of torch's NAdam, RAdam
    and Adamax: Adam's update with another momentum term (NAdam), a rectification factor
    (RAdam) or an infinity-norm preconditioner (Adamax)."""
    g0 = opt.param_groups[0]
    beta1, beta2 = (float(b) for b in g0["betas"])
    eps = float(g0["eps"])
    if isinstance(opt, torch.optim.AdamW) or g0.get("decoupled_weight_decay"):
        if any(wds):
            notes.append("decoupled weight decay (AdamW, decoupled_weight_decay=True) is left "
                         "out of the Hessian: it adds only lr·wd to the update's linear map")
        wds = [0.0] * len(wds)
    step = float(opt.state.get(params[0], {}).get("step", 0)) if params else 0.0
    if isinstance(opt, torch.optim.Adamax):
        # θ ← θ − lr/(1−β1^t) · m / u, u = max(β2 u, |g| + ε): Adam with P = u (ε inside)
        us = _second_moments(opt, params, "exp_inf", lambda st: 1.0)
        if us is None:
            us = [v.sqrt() + eps for v in estimate()]
            notes.append("the optimizer has no infinity norm yet: P estimated as the root mean "
                         "squared mini-batch gradient over the batches used, plus ε")
        else:
            notes.append(f"P = u, the optimizer's exponentially weighted infinity norm (step "
                         f"{int(step)})")
        c, formula = _adam_constant(beta1)
        return _Rule("adamax", c, formula.replace("P^-1/2 H P^-1/2", "P^-1/2 H P^-1/2, P = u"),
                     "Kingma & Ba 2015 (Adamax); " + _ADAM_REF, beta1, [u.rsqrt() for u in us],
                     wds if any(wds) else None, tuple(notes))

    key = "max_exp_avg_sq" if g0.get("amsgrad") else "exp_avg_sq"
    vs = _second_moments(opt, params, key, _debias(beta2))
    if vs is None:
        vs = estimate()
        notes.append(_NO_MOMENTS)
    else:
        notes.append(f"P = sqrt(v̂) + ε from the optimizer's second moments (step {int(step)})")
    pre = [(v.sqrt() + eps).rsqrt() for v in vs]
    if not isinstance(opt, (torch.optim.RAdam, torch.optim.NAdam)):  # Adam, AdamW, AdamHD
        c, formula = _adam_constant(beta1)
        return _Rule("adam", c, formula, _ADAM_REF, beta1, pre, wds if any(wds) else None,
                     tuple(notes))
    if isinstance(opt, torch.optim.RAdam):
        # once rectified, θ ← θ − lr·r_t·m̂/(sqrt(v̂) + ε) with r_t <= 1 rising to 1: Adam's
        # bound divided by r_t, so Adam's own (r_t = 1) is the tightest it reaches
        c, formula = _adam_constant(beta1)
        notes.append("RAdam's rectification r_t <= 1 only loosens Adam's bound, by 1/r_t; this "
                     "is the bound once r_t reaches 1 (its first steps, before rectification, "
                     "are momentum SGD on the raw Hessian)")
        return _Rule("radam", c, formula, "Liu et al. 2020 (RAdam); " + _ADAM_REF, beta1, pre,
                     wds if any(wds) else None, tuple(notes))
    # NAdam (Dozat 2016) as torch steps it at t = step + 1: θ ← θ − lr(a·g + b·m)/P with
    # a = (1−μ_t)/(1−Π_t), b = μ_{t+1}/(1−Π_t μ_{t+1}), μ_t = β1(1 − 0.5·0.96^(tψ)), Π_t the
    # product of μ_1..μ_t, and m the β1-EMA of g (:func:`_nesterov_adam_constant`)
    psi = float(g0.get("momentum_decay", 0.004))
    t = step + 1.0

    def mu(k: float) -> float:
        return beta1 * (1.0 - 0.5 * 0.96 ** (k * psi))

    prod = float(opt.state.get(params[0], {}).get("mu_product", 1.0)) if params else 1.0
    prod *= mu(t)
    a = (1.0 - mu(t)) / (1.0 - prod)
    b = mu(t + 1) / (1.0 - prod * mu(t + 1))
    c = _nesterov_adam_constant(a, b, beta1)
    notes.append(f"NAdam's momentum μ_t grows slowly with the step (μ = {mu(t):.3g} at step "
                 f"{int(t)}, β1 = {beta1:g} in the limit), and the bound with it: this is the "
                 "bound at the optimizer's next step")
    return _Rule("nadam", c, f"c/λ, c = (2+2β1)/(a(1+β1) + b(1-β1)) = {c:.4g} (a = {a:.3g}, "
                 f"b = {b:.3g} at step {int(t)}), λ of P^-1/2 H P^-1/2",
                 "Dozat 2016 (NAdam); " + _ADAM_REF, beta1, pre, wds if any(wds) else None,
                 tuple(notes))


def _squared_gradients(model: nn.Module, loss_fn: LossFn, batches: list, mode: str) -> list:
    """Mean over batches of the squared mini-batch gradient, per parameter."""
    notes: list[str] = []
    with _mode(model, mode, notes):
        op = _Operator(model, loss_fn, batches, hvp="auto", weight_decay=None, scale=None,
                       notes=notes)
        acc = [torch.zeros_like(p) for p in op.params]
        for k in range(len(op.batches)):
            g = torch.autograd.grad(op.loss(k), op.params, allow_unused=True)
            for a, gi in zip(acc, g):
                if gi is not None:
                    a += gi.detach() ** 2
    return [a / len(batches) for a in acc]


def _default_batches(task: "Task") -> int:
    """Batches for a task's Hessian: enough for >= 256 examples (one when full-batch)."""
    return max(1, math.ceil(256 / task.recipe.batch_size))


def safe_lr(
    model: "nn.Module | Task",
    loss_fn: LossFn | None = None,
    batches: Iterable | None = None,
    *,
    optimizer: "str | torch.optim.Optimizer | None" = None,
    momentum: float = 0.9,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    num_batches: int | None = None,
    iters: int = 30,
    tol: float = 1e-3,
    method: str = "lanczos",
    mode: str = "train",
    hvp: str = "auto",
    seed: int = 0,
) -> SafeLR:
    """The largest learning rate at which the optimizer is linearly stable at the current point.

    Rules (``λ`` = the top eigenvalue of the Hessian ``H``; for adaptive methods of the
    preconditioned Hessian ``P^-1/2 H P^-1/2``, ``P = diag(sqrt(v̂) + ε)`` from the second moments):

    ============================  ======================================  ==========================
    optimizer                     safe lr                                 source
    ============================  ======================================  ==========================
    ``"sgd"`` (gradient descent)  ``2/λ``                                 Nesterov 2004, Thm 2.1.14
    ``"momentum"`` (heavy ball β)  ``(2+2β)/λ``                            Polyak 1964; Cohen et al. 2021
    torch SGD, nesterov=True      ``(2+2β)/((1+2β)λ)``                    Cohen et al. 2021, App.
    ``"adam"`` (β1)               ``(2+2β1)/((1−β1)λ)`` = 38/λ at β1=0.9   Cohen et al. 2022
    torch RMSprop (momentum β)    ``(2+2β)/λ`` on the preconditioned H    Cohen et al. 2022
    torch Adagrad                 ``2/λ``, ``P = sqrt(G) + ε`` (G: Σ g²)   Duchi et al. 2011
    torch RAdam                   Adam's (rectification ``r_t ≤ 1`` only   Liu et al. 2020
                                  loosens it, by ``1/r_t``)
    torch NAdam                   ``(2+2β1)/((a(1+β1) + b(1−β1))λ)``,     Dozat 2016; the
                                  ``a``, ``b`` its gradient and momentum   update's 2x2 linear
                                  weights at the next step                 map (derived here)
    torch Adamax                  Adam's, ``P = u`` (its infinity norm)    Kingma & Ba 2015
    torch ASGD                    ``2/λ`` on ``H + λ_d`` (its decay)       Polyak & Juditsky 1992
    ============================  ======================================  ==========================

    **Param groups at different LRs** (a backbone at ``lr``, a head at ``10·lr``): group ``g``
    steps at ``r_g·lr``, so the update is ``lr·R·u`` with ``R = diag(r_g)``, stable while ``lr·λ <
    c`` with ``λ`` the top eigenvalue of ``R^1/2 H R^1/2`` (of ``R^1/2 P^-1/2 H P^-1/2 R^1/2`` for
    the adaptive rules). The result's ``lr`` is then the bound on the reference group's LR (the
    first group with an LR > 0), ``lr_ratios`` the groups' ratios to it and ``group_lrs`` each
    group's safe LR; the notes say so. Groups that disagree on momentum, betas or eps (the rule's
    constants) are refused.

    Torch SGD's dampening ``d`` divides by ``1−d``; coupled weight decay ``wd`` (SGD, Adam) adds
    ``wd`` to the Hessian; AdamW's decoupled decay is left out (said in the notes). Without
    second moments in the optimizer (a fresh one, or ``optimizer="adam"``), ``v`` is estimated by
    the mean squared mini-batch gradient over the batches used.

    The bound is **local**: a stability bound at the current weights, not the optimum. Where the
    curvature falls during training (logistic regression, or any network whose sharpness drops
    after a few steps) the best LR can lie above it; where sharpness rises toward ``constant/lr``
    (progressive sharpening) training settles at the edge of stability.

    Args:
        model: the model, or a :class:`~lrkit.tasks.Task` (then ``loss_fn`` and ``batches`` come
            from it: ``task.build_model(seed)``, ``task.loss``, ``task.batches(seed)``, enough
            batches for 256 examples; the optimizer from its recipe).
        loss_fn: ``loss_fn(model, batch) -> scalar`` (see :func:`hvp`).
        batches: the batches the Hessian averages over (see ``num_batches``).
        optimizer: ``"sgd"``, ``"momentum"``, ``"adam"``, or a torch optimizer over ``model``'s
            parameters whose settings (and state) are read (one with ``maximize=True`` is
            refused: the bound is of the loss it descends). Default: ``"sgd"``, or a task's
            recipe.
        momentum: β of ``optimizer="momentum"``.
        betas: Adam's (β1, β2) for ``optimizer="adam"``.
        eps: Adam's ε for ``optimizer="adam"``.
        num_batches, iters, tol, method, mode, hvp, seed: as in :func:`top_eigenvalue`.

    Returns:
        :class:`SafeLR` (``.lr``, the rule, the :class:`EigenResult`, ``group_lrs``).

    >>> m = nn.Linear(2, 1, bias=False)
    >>> x = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    >>> round(safe_lr(m, lambda m, b: (m(b[0]) ** 2).mean(), [(x,)]).lr, 6)   # 2 / 4
    0.5
    """
    from .tasks import Task

    if isinstance(optimizer, torch.optim.Optimizer):  # the Hessian read is the loss's
        check_minimises("optimizer", optimizer)
    if isinstance(model, Task):
        if loss_fn is not None or batches is not None:
            raise ValueError("with a Task, leave loss_fn and batches out: they come from the task")
        task = model
        seed = check_int("seed", seed, minimum=0)
        model = task.build_model(seed)
        loss_fn = task.loss
        n = _default_batches(task) if num_batches is None else num_batches
        batches = _take(task.batches(seed), check_int("num_batches", n, minimum=1))
        num_batches = None
        if optimizer is None:
            optimizer = task.recipe.make_optimizer(
                [p for p in model.parameters() if p.requires_grad], task.recipe.default_lr)
    _check_model(model, loss_fn)
    if batches is None:
        raise ValueError("batches must be given: the batches the Hessian averages over")
    data = _check_batches(batches, num_batches)
    if optimizer is None:
        optimizer = "sgd"
    mode = check_choice("mode", mode, ("train", "eval"))

    def estimate() -> list:
        return _squared_gradients(model, loss_fn, data, mode)

    if isinstance(optimizer, torch.optim.Optimizer):
        rule = _rule_from_optimizer(optimizer, model, estimate)
        rule = _with_lr_ratios(rule, optimizer, [p for p in model.parameters() if p.requires_grad])
    elif isinstance(optimizer, str):
        kind = check_choice("optimizer", optimizer, ("sgd", "momentum", "adam"))
        if kind == "sgd":
            c, name, formula, ref = _sgd_rule(0.0)
            rule = _Rule(name, c, formula, ref)
        elif kind == "momentum":
            beta = check_range("momentum", momentum, 0.0, 1.0, high_open=True)
            c, name, formula, ref = _sgd_rule(beta)
            rule = _Rule(name, c, formula, ref, beta)
        else:
            if not isinstance(betas, (tuple, list)) or len(betas) != 2:
                raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
            b1 = check_range("betas[0]", betas[0], 0.0, 1.0, high_open=True)
            check_range("betas[1]", betas[1], 0.0, 1.0, high_open=True)
            e = check_positive("eps", eps)
            pre = [(v.sqrt() + e).rsqrt() for v in estimate()]
            c, formula = _adam_constant(b1)
            rule = _Rule("adam", c, formula, _ADAM_REF, b1, pre, None,
                         ("P estimated from the mean squared mini-batch gradient over the batches "
                          "used (Adam's v after a first step)",))
    else:
        raise TypeError(f"optimizer must be 'sgd', 'momentum', 'adam' or a torch.optim.Optimizer, "
                        f"got {type(optimizer).__name__}")
    eig = top_eigenvalue(model, loss_fn, data, iters=iters, tol=tol, method=method, mode=mode,
                         hvp=hvp, precondition=rule.precondition, weight_decay=rule.weight_decay,
                         seed=seed)
    if rule.notes:
        eig = dataclasses.replace(eig, notes=tuple(rule.notes) + eig.notes)
    lr = rule.constant / eig.eigenvalue if eig.eigenvalue > 0 else math.inf
    return SafeLR(lr=float(lr), constant=float(rule.constant), optimizer=rule.name,
                  formula=rule.formula, reference=rule.reference, eigen=eig, beta=rule.beta,
                  lr_ratios=rule.lr_ratios, reference_group=rule.reference_group)


def _take(it: Iterator, n: int) -> list:
    out = []
    for b in it:
        out.append(b)
        if len(out) == n:
            break
    return out


# --------------------------------------------------------------------------- stability test
@dataclass(frozen=True)
class StabilityRun:
    """One short constant-LR run of a stability test."""

    factor: float
    lr: float
    converged: bool
    diverged: bool
    stop_reason: str
    initial_loss: float
    final_loss: float
    metric: float
    losses: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class StabilityTest:
    """Short constant-LR runs at ``factor × safe.lr`` and which of them converged (see
    :func:`stability_test`)."""

    task: str
    steps: int
    seed: int
    safe: SafeLR
    runs: list[StabilityRun]

    @property
    def largest_stable_factor(self) -> float | None:
        """The largest factor whose run converged (``None`` if none did)."""
        ok = [r.factor for r in self.runs if r.converged]
        return max(ok) if ok else None

    def table(self) -> str:
        rows = ["| factor | lr | converged | first loss | final loss | metric | stop |",
                "|---:|---:|:---:|---:|---:|---:|---|"]
        for r in self.runs:
            rows.append(f"| {r.factor:g} | {r.lr:.4g} | {'yes' if r.converged else 'no'} | "
                        f"{r.initial_loss:.4g} | {r.final_loss:.4g} | {r.metric:.4g} | "
                        f"{r.stop_reason} |")
        return "\n".join(rows)

    def to_dict(self) -> dict:
        return {"task": self.task, "steps": self.steps, "seed": self.seed,
                "safe": self.safe.to_dict(), "runs": [asdict(r) for r in self.runs]}

    @classmethod
    def from_dict(cls, d: dict) -> "StabilityTest":
        return cls(task=d["task"], steps=d["steps"], seed=d["seed"],
                   safe=SafeLR.from_dict(d["safe"]), runs=[StabilityRun(**r) for r in d["runs"]])

    def plot(self, path: str, *, oracle: Any = None) -> None:
        """Loss curves of the runs (left) and final loss against LR with the bound (right)."""
        import matplotlib

        from ._figures import new_figure

        fig, (a, b) = new_figure((11, 4), 1, 2)
        cmap = matplotlib.colormaps["viridis"]
        for i, r in enumerate(self.runs):
            a.plot(np.arange(1, len(r.losses) + 1), r.losses, color=cmap(i / max(1, len(self.runs) - 1)),
                   label=f"{r.factor:g}× ({r.lr:.3g}){'' if r.converged else ' ✗'}")
        a.set_yscale("log")
        a.set_xlabel("step")
        a.set_ylabel("training loss")
        a.set_title(f"{self.task}: constant-LR runs at factor × safe lr")
        a.legend(fontsize=7)
        lrs = [r.lr for r in self.runs]
        finals = [r.final_loss if math.isfinite(r.final_loss) else np.nan for r in self.runs]
        b.plot(lrs, finals, "o-", color="C0", label=f"final loss after {self.steps} steps")
        for r in self.runs:
            if not r.converged:
                b.axvline(r.lr, color="red", alpha=0.2)
        b.axvline(self.safe.lr, color="k", ls="--",
                  label=f"safe lr {self.safe.formula.split(',')[0]} = {self.safe.lr:.3g}")
        if oracle is not None:
            lo, hi = oracle.band
            b.axvspan(lo, hi, color="green", alpha=0.15, label="oracle good band")
            b.axvline(oracle.best_lr, color="green", label=f"oracle best {oracle.best_lr:.3g}")
        b.set_xscale("log")
        b.set_yscale("log")
        b.set_xlabel("learning rate")
        b.set_ylabel("final training loss (red: not converged)")
        b.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=110)


def stability_test(
    task: "Task",
    *,
    safe: SafeLR | None = None,
    factors: Sequence[float] = (0.03, 0.1, 0.3, 0.9, 1.1, 3.0),
    steps: int | None = None,
    seed: int = 0,
    diverge_factor: float = 4.0,
    min_progress: float = 0.1,
    progress: bool = False,
    **safe_kwargs: Any,
) -> StabilityTest:
    """Check the bound: short constant-LR runs of ``task`` at ``factor × safe.lr``.

    Each run is :func:`lrkit.train.run` with a constant schedule at ``factor × lr`` (the
    recipe's optimizer, seed and data), ``steps`` long (default: ``min(recipe.steps, 200)``). A
    run *converged* when it did not diverge (smoothed loss below ``diverge_factor`` × its first
    loss, finite) and its final loss (mean of the last 10% of steps) is at most
    ``first − min_progress × |first|`` (``(1 − min_progress)`` × a positive first loss; a run
    that stalls near its first loss, as a network whose units died at a too-large LR, did not
    converge).

    On a quadratic the bound is exact: 0.9× converges, 1.1× diverges. On a network, or on
    logistic regression, the bound holds at the starting point only: runs above it can still
    converge when the curvature drops along the way (catapult dynamics, Lewkowycz et al. 2020;
    logistic regression's curvature falling as the logits grow).

    Args:
        task: a :class:`~lrkit.tasks.Task` (for your own model: :func:`lrkit.tasks.from_torch`).
        safe: a precomputed :class:`SafeLR`; default: ``safe_lr(task, seed=seed, **safe_kwargs)``.
        factors: multiples of the safe LR to run (> 0).
        steps: length of each run.
        seed: the runs' seed.
        diverge_factor: divergence threshold of the runs (see :func:`lrkit.train.run`).
        min_progress: the fraction of its first loss a run must shed to count as converged.
        progress: a progress bar over the runs.

    Returns:
        :class:`StabilityTest`.
    """
    from . import schedules
    from .tasks import Task
    from .train import run

    if not isinstance(task, Task):
        raise TypeError(f"task must be a lrkit.tasks.Task (for a plain model build one with "
                        f"lrkit.tasks.from_torch), got {type(task).__name__}")
    fs = [check_positive(f"factors[{i}]", f) for i, f in enumerate(factors)]
    if not fs:
        raise ValueError("factors must hold at least one factor")
    n = min(task.recipe.steps, 200) if steps is None else check_int("steps", steps, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    check_positive("diverge_factor", diverge_factor)
    min_progress = check_range("min_progress", min_progress, 0.0, 1.0, high_open=True)
    if safe is None:
        safe = safe_lr(task, seed=seed, **safe_kwargs)
    elif not isinstance(safe, SafeLR):
        raise TypeError(f"safe must be a SafeLR, got {type(safe).__name__}")
    elif safe_kwargs:
        raise ValueError(f"pass either safe or options for safe_lr, not both: {sorted(safe_kwargs)}")
    if not math.isfinite(safe.lr):
        raise ValueError("the safe LR is infinite (no positive curvature): nothing to test")
    from tqdm.auto import tqdm

    runs = []
    for f in tqdm(sorted(fs), desc=f"stability test {task.name}", disable=not progress):
        lr = f * safe.lr
        r = run(task, schedules.constant(lr), steps=n, seed=seed, eval_split="val",
                diverge_factor=diverge_factor)
        losses = [float(x) for x in r.losses]
        tail = losses[-max(1, len(losses) // 10):]
        final = float(np.mean(tail)) if losses else math.nan
        first = losses[0] if losses else math.nan
        converged = (not r.diverged and r.stop_reason == "completed" and math.isfinite(final)
                     and final <= first - min_progress * abs(first))  # a negative loss too
        runs.append(StabilityRun(factor=float(f), lr=float(lr), converged=bool(converged),
                                 diverged=bool(r.diverged), stop_reason=r.stop_reason,
                                 initial_loss=float(first), final_loss=float(final),
                                 metric=float(r.metric), losses=losses))
    return StabilityTest(task=task.name, steps=n, seed=seed, safe=safe, runs=runs)


# ------------------------------------------------------------------------- sharpness tracking
class SharpnessTracker(Callback):
    """Track sharpness against the optimizer's threshold during :func:`lrkit.train.fit`.

    Every ``every`` steps (and before the first step) it measures the top eigenvalue ``λ`` on the
    fixed ``batches`` (preconditioned by the optimizer's current second moments for Adam/RMSprop)
    and records it next to ``constant / lr`` (``2/lr`` for GD, ``(2+2β)/lr`` heavy ball,
    ``38/lr`` Adam β1 = 0.9). Training whose ``λ`` rises to and hovers at that threshold is at the
    **edge of stability** (Cohen et al. 2021; 2022 for Adam). With param groups at different LRs,
    ``lr`` is the reference group's (the first with an LR > 0) and ``λ`` that of ``R^1/2 H
    R^1/2`` (``R``: each group's LR over it), as in :func:`safe_lr`. HVPs use
    ``torch.autograd.grad`` (no ``.grad`` is touched); module modes, every buffer and the RNG
    are restored, so the training trajectory is bitwise the same as without the tracker.

    Attributes (after training): ``steps``, ``sharpness``, ``lrs`` (the reference group's),
    ``thresholds``, ``reference_groups``, ``n_hvp``.

    Args:
        loss_fn: ``loss_fn(model, batch) -> scalar``.
        batches: the fixed batches (a list, or an iterable with ``num_batches``).
        every: measure every this many optimizer steps (> 0).
        iters, tol, method, mode, hvp: as in :func:`top_eigenvalue` (default 20 Lanczos steps).
        num_batches: how many of ``batches`` to use.
    """

    def __init__(self, loss_fn: LossFn, batches: Iterable, *, every: int = 50, iters: int = 20,
                 tol: float = 1e-3, method: str = "lanczos", mode: str = "train",
                 hvp: str = "auto", num_batches: int | None = None) -> None:
        _check_loss_fn(loss_fn)
        self.loss_fn = loss_fn
        self.batches = _check_batches(batches, num_batches)
        self.every = check_int("every", every, minimum=1)
        self.iters = check_int("iters", iters, minimum=1)
        self.tol = check_range("tol", tol, 0.0, 1.0, low_open=True, high_open=True)
        self.method = check_choice("method", method, ("lanczos", "power"))
        self.mode = check_choice("mode", mode, ("train", "eval"))
        self.hvp = check_choice("hvp", hvp, ("auto", "double-backward", "finite-difference"))
        self.steps: list[int] = []
        self.sharpness: list[float] = []
        self.lrs: list[float] = []
        self.thresholds: list[float] = []
        self.reference_groups: list[int] = []
        self.n_hvp = 0
        self.rule = ""
        self.constant = math.nan

    def _measure(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        s = safe_lr(model, self.loss_fn, self.batches, optimizer=optimizer, iters=self.iters,
                    tol=self.tol, method=self.method, mode=self.mode, hvp=self.hvp)
        lr = float(optimizer.param_groups[s.reference_group]["lr"])
        self.rule, self.constant = s.formula, s.constant
        self.reference_groups.append(s.reference_group)
        self.steps.append(step)
        self.sharpness.append(s.eigen.eigenvalue)
        self.lrs.append(lr)
        self.thresholds.append(s.constant / lr if lr > 0 else math.inf)
        self.n_hvp += s.eigen.n_hvp

    def on_train_start(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.steps, self.sharpness, self.lrs, self.thresholds, self.n_hvp = [], [], [], [], 0
        self.reference_groups = []
        self._measure(0, model, optimizer)

    def on_step_end(self, info: StepInfo) -> bool | str | None:
        if (info.step + 1) % self.every == 0:
            self._measure(info.step + 1, info.model, info.optimizer)
        return None

    @property
    def ratio(self) -> list[float]:
        """Sharpness over threshold per measurement (1 = at the edge of stability)."""
        return [s / t if t > 0 else math.nan for s, t in zip(self.sharpness, self.thresholds)]

    def at_edge(self, *, within: float = 0.1) -> list[int]:
        """The measured steps where sharpness ≥ (1 − within) × threshold."""
        return [st for st, r in zip(self.steps, self.ratio) if r >= 1 - within]

    def to_dict(self) -> dict:
        return {"steps": self.steps, "sharpness": self.sharpness, "lrs": self.lrs,
                "thresholds": self.thresholds, "reference_groups": self.reference_groups,
                "n_hvp": self.n_hvp, "rule": self.rule, "constant": self.constant}

    def plot(self, path: str, *, title: str = "sharpness during training") -> None:
        """Sharpness and the threshold ``constant/lr`` against the step (log y)."""
        from ._figures import new_figure

        fig, ax = new_figure((6.5, 4))
        ax.plot(self.steps, self.sharpness, "o-", ms=3, label="sharpness λ")
        ax.plot(self.steps, self.thresholds, "--", color="k",
                label=f"edge of stability {self.constant:.3g}/lr ({self.rule.split(',')[0]})")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("top Hessian eigenvalue")
        ax.set_title(title)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=110)


# ---------------------------------------------------------------------------------- batch size
def scale_lr(lr: float, from_batch: int, to_batch: int, *, rule: str = "linear") -> float:
    """The LR for batch size ``to_batch`` given a good ``lr`` at ``from_batch``.

    ``"linear"``: ``lr · k`` with ``k = to_batch / from_batch`` (Goyal et al. 2017, "Accurate,
    Large Minibatch SGD", for SGD with a warmup). ``"sqrt"``: ``lr · sqrt(k)`` (Adam; Malladi et
    al. 2022, "On the SDEs and Scaling Rules for Adaptive Gradient Algorithms"; Krizhevsky 2014).
    Both hold only up to about the gradient noise scale (:func:`noise_scale`); past it, larger
    batches buy little and the LR should stop growing.

    >>> scale_lr(0.1, 32, 128), scale_lr(1e-3, 32, 128, rule="sqrt")
    (0.4, 0.002)
    """
    lr = check_positive("lr", lr)
    from_batch = check_int("from_batch", from_batch, minimum=1)
    to_batch = check_int("to_batch", to_batch, minimum=1)
    rule = check_choice("rule", rule, ("linear", "sqrt"))
    k = to_batch / from_batch
    return lr * (k if rule == "linear" else math.sqrt(k))


@dataclass(frozen=True)
class NoiseScale:
    """The simple gradient noise scale ``B_simple = tr(Σ) / |G|²`` and its two estimates.

    ``resolved`` is False when the estimate of ``|G|²`` is not positive (near a minimum the true
    gradient drowns in the noise of ``K`` batches): then ``b_simple`` is ``inf``, read as "larger
    than ``batch_big``".
    """

    b_simple: float
    trace_cov: float
    grad_norm_sq: float
    batch_small: int
    batch_big: int
    n_batches: int
    resolved: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


def noise_scale(model: nn.Module, loss_fn: LossFn, batches: Iterable, *, num_batches: int = 16,
                mode: str = "train") -> NoiseScale:
    """``B_simple = tr(Σ) / |G|²`` from gradients at two batch sizes (McCandlish et al. 2018,
    "An Empirical Model of Large-Batch Training", Appendix A.1).

    With ``K = num_batches`` batches of ``B`` examples, ``|G_B|²`` is the mean squared norm of the
    ``K`` batch gradients and ``|G_KB|²`` the squared norm of their mean. Then

        |G|²  ≈ (KB |G_KB|² − B |G_B|²) / (KB − B),    tr Σ ≈ (|G_B|² − |G_KB|²) / (1/B − 1/(KB))

    are unbiased estimates of the true gradient's squared norm and of the per-example gradient
    covariance's trace. ``B_simple`` is the batch size up to which doubling the batch roughly
    halves the steps needed; linear LR scaling holds up to about there.

    Args:
        model, loss_fn, batches: as in :func:`hvp`; every batch must have the same size.
        num_batches: ``K`` (>= 2).
        mode: ``"train"`` or ``"eval"``.
    """
    _check_model(model, loss_fn)
    k = check_int("num_batches", num_batches, minimum=2)
    mode = check_choice("mode", mode, ("train", "eval"))
    data = _check_batches(batches, k)
    sizes = {_examples(b) for b in data}
    if len(sizes) != 1:
        raise ValueError(f"every batch must have the same size, got sizes {sorted(sizes)}")
    b = sizes.pop()
    notes: list[str] = []
    with _mode(model, mode, notes):
        op = _Operator(model, loss_fn, data, hvp="auto", weight_decay=None, scale=None,
                       notes=notes)
        grads = []
        for i in range(len(op.batches)):
            g = torch.autograd.grad(op.loss(i), op.params, allow_unused=True)
            grads.append(op.flat(g).double())
    g_all = torch.stack(grads)
    small = float((g_all ** 2).sum(1).mean())
    big = float(g_all.mean(0).pow(2).sum())
    B, KB = float(b), float(k * b)
    g2 = (KB * big - B * small) / (KB - B)
    tr = (small - big) / (1.0 / B - 1.0 / KB)
    bs = tr / g2 if g2 > 0 else math.inf
    return NoiseScale(b_simple=float(bs), trace_cov=float(tr), grad_norm_sq=float(g2),
                      batch_small=int(b), batch_big=int(k * b), n_batches=k, resolved=g2 > 0)


def batch_scaled(task: "Task", factor: int, *, keep: str = "epochs") -> "Task":
    """``task`` with ``factor`` × its batch size: each batch concatenates ``factor`` consecutive
    batches of ``task.batches(seed)`` (the same examples in the same order).

    ``keep="epochs"`` divides the steps by ``factor`` (the same data budget: the regime of the
    linear and square-root rules, Goyal et al. 2017); ``keep="steps"`` keeps the step count.
    The name gains ``-b<batch>`` (and ``-s<steps>`` with ``keep="steps"``), so oracle caches
    stay apart. Batches must be tuples (or lists) of tensors concatenated along dimension 0.
    """
    import dataclasses as dc

    from .tasks import Task

    if not isinstance(task, Task):
        raise TypeError(f"task must be a lrkit.tasks.Task, got {type(task).__name__}")
    k = check_int("factor", factor, minimum=1)
    keep = check_choice("keep", keep, ("epochs", "steps"))
    steps = task.recipe.steps if keep == "steps" else task.recipe.steps // k
    if steps < 1:
        raise ValueError(f"factor {k} leaves no step of the task's {task.recipe.steps}")
    inner = task.batches

    def batches(seed: int) -> Iterator[tuple]:
        it = inner(seed)
        while True:
            group = [next(it) for _ in range(k)]
            if not all(isinstance(b, (tuple, list)) for b in group):
                raise TypeError("batch_scaled needs batches that are tuples of tensors")
            yield tuple(torch.cat(parts, 0) for parts in zip(*group))

    warm = task.recipe.warmup_steps if keep == "steps" else task.recipe.warmup_steps // k
    recipe = dc.replace(task.recipe, batch_size=task.recipe.batch_size * k, steps=steps,
                        warmup_steps=warm)
    name = f"{task.name}-b{recipe.batch_size}" + (f"-s{steps}" if keep == "steps" else "")
    return dc.replace(task, name=name, recipe=recipe, batches=batches,
                      description=f"{task.description} [batch x{k}, {steps} steps]")


# ------------------------------------------------------------------------------------- CLI
def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``lrkit safe-lr``."""
    parser.add_argument("--task", required=True, help="built-in task name or module:function")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the model and the batches (and the stability runs)")
    parser.add_argument("--num-batches", type=int, default=None,
                        help="batches the Hessian averages over (default: >= 256 examples)")
    parser.add_argument("--iters", type=int, default=30, help="most HVPs")
    parser.add_argument("--method", choices=("lanczos", "power"), default="lanczos",
                        help="eigenvalue method (Lanczos: fewer Hessian-vector products)")
    parser.add_argument("--mode", choices=("train", "eval"), default="train",
                        help="the model's mode for the Hessian (dropout and batch norm)")
    parser.add_argument("--factors", type=float, nargs="+", default=[0.03, 0.1, 0.3, 0.9, 1.1, 3],
                        help="multiples of the safe LR for the stability test")
    parser.add_argument("--steps", type=int, default=None,
                        help="steps of each stability run (default: min(recipe steps, 200))")
    parser.add_argument("--no-test", action="store_true", help="only the bound, no short runs")
    parser.add_argument("--plot", default=None,
                        help="PNG of the stability test (default: safe-lr.png; none with "
                             "--no-test)")
    parser.add_argument("--json", default=None, help="write the result to this JSON file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def cli_main(args: argparse.Namespace) -> int:
    """``lrkit safe-lr --task NAME``: print the bound and the stability test, write a plot."""
    import json

    from . import tasks

    if args.no_test and args.plot:  # (it was silently ignored)
        raise ValueError("--plot draws the stability test, which --no-test skips: drop one "
                         "of them")
    task = tasks.get(args.task)
    for i, f in enumerate(args.factors or ()):  # before the bound's Hessian-vector products
        check_positive(f"factors[{i}]", f)
    if args.steps is not None and not args.no_test:  # likewise (it was refused after them)
        check_int("--steps", args.steps, minimum=1)
    s = safe_lr(task, seed=args.seed, num_batches=args.num_batches, iters=args.iters,
                method=args.method, mode=args.mode)
    print(f"{task.name}: {task.recipe.optimizer} recipe, batch {task.recipe.batch_size}")
    print(s.summary())
    print("(a stability bound at the starting weights, not the best LR: on networks the best LR "
          "lies well below it (sharpness rises, mini-batch noise), on a convex loss whose "
          "curvature falls it can lie above; see docs/curvature.md)")
    out: dict[str, Any] = {"safe": s.to_dict()}
    if not args.no_test:
        t = stability_test(task, safe=s, factors=args.factors, steps=args.steps, seed=args.seed,
                           progress=not args.no_progress)
        print(f"\nstability test: constant LR, {t.steps} steps, seed {t.seed}")
        print(t.table())
        best = t.largest_stable_factor
        print("largest converged factor: " + (f"{best:g}× ({best * s.lr:.4g})" if best else "none"))
        out["test"] = t.to_dict()
        plot = args.plot or "safe-lr.png"
        t.plot(plot)
        print(f"wrote {plot}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
        print(f"wrote {args.json}")
    return 0
