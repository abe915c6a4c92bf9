"""The one training loop of lrkit, its callback protocol, and exact state snapshots.

Everything in lrkit that trains for its own purposes (range test, confirm runs, benchmarks, later
search and autopilot) goes through :func:`fit`; features plug in as :class:`Callback` objects.

- :func:`fit` trains any model/optimizer on any iterable of batches for ``num_steps`` optimizer
  updates, with an optional schedule, gradient clipping, gradient accumulation and AMP.
- :func:`run` trains a :class:`~lrkit.tasks.Task` at one learning rate (or schedule) under its fixed
  recipe and scores it on held-out data.
- :func:`snapshot` copies model, optimizer, scheduler, GradScaler, data-loader generators and the
  global RNGs to CPU memory; ``Snapshot.restore()`` puts them back bitwise.
"""

from __future__ import annotations

import collections.abc
import contextlib
import copy
import inspect
import math
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from ._json import brief_repr
from .errors import as_real, check_amp, check_choice, check_int, check_positive
from .monitor import NOISE_STEPS, FirstSpread, offset_rise_limit
from .schedules import Schedule

if TYPE_CHECKING:  # pragma: no cover
    from .tasks import Task

__all__ = [
    "Callback",
    "StepInfo",
    "DivergenceStop",
    "FitResult",
    "RunResult",
    "Snapshot",
    "fit",
    "run",
    "snapshot",
    "loader_generators",
    "evaluating",
    "training_modes",
    "check_device",
    "module_modes",
    "set_module_modes",
    "global_grad_norm",
    "clip_grad_norm",
    "module_state",
    "model_device",
    "check_loader",
    "check_optimizer",
    "check_minimises",
]


# ----------------------------------------------------------------------------------- callbacks
@dataclass
class StepInfo:
    """What a callback sees after each optimizer update.

    ``step`` is the 0-based index of the update just done; ``loss`` the mean training loss over its
    accumulation micro-batches (unscaled); ``lr`` the LR of param group 0 used for it; ``grad_norm``
    the global L2 norm of the gradients before clipping (``None`` when not computed).
    """

    step: int
    loss: float
    lr: float
    grad_norm: float | None
    model: nn.Module
    optimizer: torch.optim.Optimizer


class Callback:
    """Base class of the callback protocol; override what you need.

    ``on_step_end`` and ``on_eval`` may request a stop by returning something truthy; a string is
    recorded as the run's ``stop_reason``. Each callback whose ``on_train_start`` ran gets
    either ``on_train_end`` (the run completed or stopped) or ``on_train_error`` (it raised).
    A callback with an ``evaluate`` of its own uses only that metric and ignores ``on_eval``
    from ``fit(evaluate=...)`` (two metrics at one step would count twice).
    """

    def on_train_start(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        pass

    def on_before_step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Called after backward (and AMP unscaling), before ``fit``'s own clipping and
        ``optimizer.step()``: the gradients may be read or changed in place (e.g. clipped)."""

    def on_step_end(self, info: StepInfo) -> bool | str | None:
        return None

    def on_eval(self, step: int, metric: float) -> bool | str | None:
        return None

    def on_train_end(self, result: "FitResult") -> None:
        pass

    def on_train_error(self, exc: BaseException) -> None:
        """Called instead of ``on_train_end`` when the run raises (a callback, the loss, the
        data, Ctrl-C), then ``fit`` re-raises ``exc``: release what ``on_train_start`` opened
        (a log file). Nothing is finished as after a run: ``SWA`` does not swap the average
        in and ``EarlyStopping`` does not restore its best weights."""

    def needs_eval(self) -> bool:
        """Whether this callback acts on validation metrics that only ``fit(evaluate=...,
        eval_every=...)`` would supply (``fit`` refuses to start without them)."""
        return False


class DivergenceStop(Callback):
    """Stop when the loss explodes: causal debiased EMA of the loss > ``factor`` × reference.

    ``relative_to="best"`` compares with the best (lowest) EMA value so far (the range test's rule,
    as in fastai and Smith 2017); ``"initial"`` with the first loss (for full training runs, where a
    late, tiny best loss would make a relative rule fire on noise). The EMA is
    ``m_t = beta m_{t-1} + (1 - beta) loss_t``, debiased by ``1 - beta^t`` after ``t`` losses
    (Adam-style, fastai's form), so the rule only uses past losses. Non-finite losses are
    handled by :func:`fit` itself.

    The ratio assumes a loss bounded below by 0 (cross-entropy, MSE). A loss that can be
    negative (a Gaussian negative log-likelihood, a loss with a constant offset) would make it
    fire at once: ``4 x (-2)`` is below any loss near ``-2`` (fastai/fastai#962). When the
    reference is not positive the rule is shift-invariant instead: the EMA rises above the
    reference by more than ``(factor - 1) x D``, ``D = max(initial - best, s0)`` (the descent so
    far, or ``s0``, the standard deviation of the first :data:`NOISE_STEPS` losses: the loss's
    own scale, whatever its offset), and not before that many steps. For losses that stay
    positive nothing changes.
    """

    #: the first losses whose spread sets the scale of a loss that is not positive
    NOISE_STEPS = NOISE_STEPS

    def __init__(self, factor: float = 4.0, *, relative_to: str = "best", beta: float = 0.98,
                 min_steps: int = 1) -> None:
        self.factor = check_positive("factor", factor)
        if self.factor <= 1.0:
            raise ValueError(f"factor must be > 1, got {factor!r}")
        self.relative_to = check_choice("relative_to", relative_to, ("best", "initial"))
        if not (0.0 <= beta < 1.0) or beta != beta:
            raise ValueError(f"beta must be in [0, 1), got {beta!r}")
        self.beta = float(beta)
        self.min_steps = check_int("min_steps", min_steps, minimum=0)
        self.reset()

    def reset(self) -> None:
        self._avg = 0.0
        self._n = 0
        self._best = math.inf
        self._initial: float | None = None
        self._spread = FirstSpread()

    def on_train_start(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.reset()

    def on_step_end(self, info: StepInfo) -> bool | str | None:
        self._n += 1
        self._avg = self.beta * self._avg + (1.0 - self.beta) * info.loss
        smoothed = self._avg / (1.0 - self.beta**self._n)
        if self._initial is None:
            self._initial = info.loss
        self._spread.add(info.loss)
        ref = self._best if self.relative_to == "best" else self._initial
        best = min(self._best, smoothed)
        if ref > 0:
            limit = self.factor * ref
        else:  # a loss not bounded below by 0: rise above ref by (factor - 1) x its scale
            limit = offset_rise_limit(ref, self._initial, best, self._spread.value, self.factor)
        self._best = best
        if self._n > self.min_steps and smoothed > limit:
            return "diverged"
        return None


# ------------------------------------------------------------------------------------- results
@dataclass
class FitResult:
    """What :func:`fit` returns: per-step loss and LR, how it stopped, and evaluations."""

    losses: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    steps_done: int = 0
    stop_reason: str = "completed"
    wall_time: float = 0.0
    evals: list[tuple[int, float]] = field(default_factory=list)

    @property
    def diverged(self) -> bool:
        return self.stop_reason in ("diverged", "nan")

    def __repr__(self) -> str:  # how it ended, not every step's loss
        return brief_repr("FitResult", steps_done=self.steps_done, stop_reason=self.stop_reason,
                          last_loss=self.losses[-1] if self.losses else None,
                          evals=len(self.evals), wall_time=self.wall_time)


@dataclass
class RunResult:
    """One full training run of a task: the held-out metric and the run's trace."""

    task: str
    seed: int
    steps: int
    metric: float
    diverged: bool
    stop_reason: str
    steps_done: int
    wall_time: float
    losses: list[float]
    lrs: list[float]
    schedule: dict | None
    #: False when the run trained without diverging but ``task.evaluate`` returned NaN or inf
    #: (``metric`` is then ``task.worst``): a broken metric rather than a bad LR
    scored: bool = True

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def __repr__(self) -> str:  # the score and how it ended, not every step's loss
        return brief_repr("RunResult", task=self.task, seed=self.seed, metric=self.metric,
                          diverged=self.diverged, stop_reason=self.stop_reason,
                          steps_done=self.steps_done, wall_time=self.wall_time)

    @classmethod
    def from_dict(cls, d: dict) -> "RunResult":
        return cls(**d)


# ------------------------------------------------------------------------------------ the loop
def global_grad_norm(params: Iterable[torch.Tensor]) -> float:
    """Global L2 norm of the gradients of ``params`` (params without grad are skipped), as
    ``clip_grad_norm_`` computes it: one norm per tensor (``torch._foreach_norm`` per device and
    dtype), their norm on the first gradient's device, and one host sync for the result (a sync
    per tensor idled a GPU for most of a small model's step). A sparse gradient
    (``nn.Embedding(sparse=True)``) counts by its coalesced values: PyTorch's own norm (and so
    ``clip_grad_norm_``) raises ``NotImplementedError`` on one."""
    grads = [p.grad.detach() for p in params if p.grad is not None]
    if not grads:
        return 0.0
    home = grads[0].device
    groups: dict[tuple, list[torch.Tensor]] = {}
    norms = []
    for g in grads:
        if g.is_sparse:
            norms.append(torch.linalg.vector_norm(g.coalesce().values(), 2,
                                                  dtype=torch.float32))
        else:
            groups.setdefault((g.device, g.dtype), []).append(g)
    for (_, dtype), gs in groups.items():
        if dtype in (torch.float16, torch.bfloat16):  # in float32: a half norm overflows at 65504
            norms += [torch.linalg.vector_norm(g, 2, dtype=torch.float32) for g in gs]
        else:
            norms += torch._foreach_norm(gs, 2)
    return float(torch.linalg.vector_norm(torch.stack([n.float().to(home) for n in norms]), 2))


def clip_grad_norm(params: Sequence[torch.Tensor], max_norm: float, *,
                   norm: float | None = None) -> float:
    """``torch.nn.utils.clip_grad_norm_(params, max_norm)`` (its return value: the norm before
    clipping), also where a gradient is sparse, which PyTorch's refuses: then every gradient is
    scaled by ``min(1, max_norm / (norm + 1e-6))``, PyTorch's factor, in place. ``norm``, the
    gradients' global norm when already computed (:func:`global_grad_norm`), is not computed
    again; the factor is then computed in float32 as PyTorch does (bitwise the same clip for
    float32 gradients). Float16 / bfloat16 gradients are clipped by :func:`global_grad_norm`
    too (their norm in float32): PyTorch's own norm overflows to inf past 65504 although every
    gradient is finite, and its factor 0 zeroes the step."""
    params = list(params)
    sparse = any(p.grad is not None and p.grad.is_sparse for p in params)
    half = any(p.grad is not None and p.grad.dtype in (torch.float16, torch.bfloat16)
               for p in params)
    if norm is None and not (sparse or half):
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    if norm is None:  # PyTorch's norm of float16 gradients overflows at 65504: inf, a zero step
        norm = global_grad_norm(params)
    if sparse:
        coef: Any = max_norm / (norm + 1e-6)
    else:
        coef = torch.clamp(max_norm / (torch.tensor(norm, dtype=torch.float32) + 1e-6), max=1.0)
    if not float(coef) >= 1.0:  # (PyTorch multiplies by 1.0 otherwise: no change; by NaN too)
        for p in params:
            if p.grad is not None:
                p.grad.mul_(coef if sparse else coef.to(p.grad.device))
    return norm


def _cycle(batches: Iterable, need: int | None = None, name: str = "batches") -> Iterator:
    """Iterate ``batches`` forever, restarting it (a new epoch) each time it is exhausted.
    Data that gives no batch, or none in a later epoch (a stream read once), and a one-shot
    iterator that runs out are refused by ``name``, the caller's argument, with how many
    batches it gave and ``need``. Whether ``batches`` is one-shot is read from its type (an
    ``Iterator``), not by calling ``iter()`` on it: that would start a DataLoader's worker
    processes, or reset its persistent ones, for nothing."""
    seen, epochs = 0, 0
    wanted = f"{need} batches" if need is not None else "enough batches"
    while True:
        before = seen
        for b in batches:
            seen += 1
            yield b
        if seen == 0:
            raise ValueError(f"{name} is empty: it yielded no batch")
        epochs += 1
        if seen == before:  # a re-iterable that reads its source once
            first = "its first epoch" if epochs == 2 else f"its first {epochs - 1} epochs"
            raise ValueError(
                f"{name} yielded {seen} batches in {first}, then none in the next: it cannot be "
                f"restarted for a new epoch, and this run needs {wanted} (num_steps x "
                "accumulation_steps; for find_lr, num_iter x accumulation_steps). Pass a "
                "re-iterable that yields every epoch anew (a DataLoader, a list) or one that "
                "yields at least that many")
        if isinstance(batches, collections.abc.Iterator):  # one-shot: cannot be restarted
            raise ValueError(
                f"{name} ran out after {seen}: a one-shot iterator (a generator) cannot be "
                f"restarted for a new epoch, and this run needs {wanted} (num_steps x "
                "accumulation_steps; for find_lr, num_iter x accumulation_steps). Pass a "
                "re-iterable (a DataLoader, a list) or an iterator that yields at least that many")


def module_modes(model: nn.Module) -> dict[str, bool]:
    """Every submodule's ``training`` flag, by name."""
    return {name: m.training for name, m in model.named_modules()}


def set_module_modes(model: nn.Module, modes: dict[str, bool]) -> None:
    """Put back flags taken by :func:`module_modes` (``model.train(was)`` would not: it sets
    every submodule alike, which unfreezes a BatchNorm layer the user keeps in eval mode)."""
    for name, m in model.named_modules():
        if name in modes:
            m.training = modes[name]


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """``model.eval()`` and ``torch.no_grad()`` for the block, then every submodule's own mode
    back."""
    modes = module_modes(model)
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        set_module_modes(model, modes)


def training_modes(model: nn.Module) -> dict[str, bool]:
    """Put ``model`` in the modes it trains in and return them: a model handed over in eval mode
    (just evaluated) is switched to ``train()``, as every training loop does; a model whose root
    is in train mode keeps its submodules' own flags (a BatchNorm layer frozen in eval mode for
    fine-tuning stays frozen; fastai's ``train_bn=False`` and detection models do this)."""
    if not model.training:
        model.train()
    return module_modes(model)


def check_device(name: str, device: Any) -> torch.device | None:
    """``torch.device(device)`` (``None`` stays ``None``), refused by name when it cannot be
    used here: an unknown device string, or CUDA / MPS on a machine without it (PyTorch's own
    "Torch not compiled with CUDA enabled" comes from deep inside the first ``.to()``)."""
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"{name} must be a torch device such as 'cpu' or 'cuda:0', got "
                         f"{device!r} ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{name}={device!r}, but CUDA is not available here "
                         f"(torch {torch.__version__}, torch.cuda.is_available() is False)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"{name}={device!r}, but this machine has "
                         f"{torch.cuda.device_count()} CUDA device(s)")
    mps = getattr(torch.backends, "mps", None)
    if dev.type == "mps" and not (mps is not None and mps.is_available()):
        raise ValueError(f"{name}={device!r}, but MPS is not available here")
    return dev


def model_device(model: nn.Module) -> torch.device | None:
    """The device of the model's first parameter (or, without parameters, its first buffer);
    ``None`` for a model with neither."""
    for t in list(model.parameters())[:1] or list(model.buffers())[:1]:
        return t.device
    return None


def _to_device(batch: Any, device: torch.device | None) -> Any:
    """``batch`` on ``device`` (``None``: as it is): tensors moved (``non_blocking``); lists,
    tuples, namedtuples and mappings rebuilt around their moved items (a ``dict`` subclass or
    a ``UserDict`` such as Hugging Face's ``BatchEncoding`` as a copy of its own type, the
    user's object left untouched); any other object with a ``.to`` method (a custom batch
    class, a ``PackedSequence``) by ``batch.to(device)``; anything else as it is."""
    if device is None:
        return batch
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, nn.utils.rnn.PackedSequence):  # its batch_sizes stay on the CPU
        return batch.to(device)
    if isinstance(batch, tuple) and hasattr(batch, "_make"):  # a namedtuple
        return batch._make(_to_device(b, device) for b in batch)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, collections.abc.Mapping):
        return _same_mapping(batch, {k: _to_device(v, device) for k, v in batch.items()})
    to = getattr(batch, "to", None)
    return to(device) if callable(to) else batch


def _same_mapping(mapping: collections.abc.Mapping, items: dict) -> Any:
    """A shallow copy of ``mapping`` (its type and attributes) holding ``items``; ``items``
    itself for a plain dict or a mapping that cannot be copied and written to."""
    if type(mapping) is dict:
        return items
    try:
        out = copy.copy(mapping)
        for k, v in items.items():
            out[k] = v
    except (TypeError, AttributeError, copy.Error):  # a read-only mapping
        return items
    return out


def check_optimizer(name: str, optimizer: Any, model: nn.Module | None = None
                    ) -> torch.optim.Optimizer:
    """``optimizer`` if it is a ``torch.optim.Optimizer`` that steps without a closure (lrkit's
    loops call ``optimizer.step()`` after their own backward) and, when ``model`` is given, holds
    at least one of its parameters; else a TypeError / ValueError naming ``name``."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"{name} must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if model is not None:
        mine = {id(p) for p in model.parameters()}
        if mine and not any(id(p) in mine for g in optimizer.param_groups for p in g["params"]):
            raise ValueError(f"{name} holds none of the model's parameters: it steps another "
                             "model's (was it built before the model was re-created or "
                             "copied?); build it over this model's parameters()")
    try:
        closure = inspect.signature(optimizer.step).parameters.get("closure")
    except (TypeError, ValueError):  # a C-implemented or wrapped step: assume it is optional
        closure = None
    if closure is not None and closure.default is inspect.Parameter.empty:
        raise TypeError(f"{name} is a {type(optimizer).__name__}, whose step() needs a closure "
                        "(it re-evaluates the loss); lrkit steps once per batch after its own "
                        "backward: use an optimizer whose step() needs no arguments (SGD, Adam, "
                        "...)")
    return optimizer


def check_minimises(name: str, optimizer: torch.optim.Optimizer) -> None:
    """A ValueError naming ``name``'s first param group with ``maximize=True`` (torch's gradient
    ascent), before anything is touched: lrkit reads the loss as a quantity to minimise (the
    range test's descent, the divergence stops, the runs' scores, the safe-LR bound), and an
    objective that ascends is read upside down by all of them (find_lr found "no clear
    descent", runs were stopped as diverged, ``safe_lr`` bounded the objective's Hessian)."""
    for i, g in enumerate(optimizer.param_groups):
        if g.get("maximize", False):
            raise ValueError(
                f"{name}: param group {i} has maximize=True, but lrkit reads the loss as a "
                "quantity to minimise (the range test, the divergence stop, the runs' scores "
                "and the safe-LR bound all do): pass the negated objective as loss_fn "
                "(lambda out, y: -objective(out, y)), or step_fn, with maximize=False")


def check_loader(name: str, loader: Any, why: str | None = "every short run restarts it"
                 ) -> None:
    """A TypeError / ValueError naming ``name`` unless ``loader`` is an iterable of batches that
    is not empty (when it has a length) and, unless ``why`` is None, re-iterable (a
    ``DataLoader`` or a list): ``why`` says what reads it again."""
    if loader is None:
        raise ValueError(f"{name} must be given: an iterable of batches (a DataLoader or a list)")
    if not hasattr(loader, "__iter__"):
        raise TypeError(f"{name} must be an iterable of batches, got {type(loader).__name__}")
    try:
        empty = len(loader) == 0
    except TypeError:  # no length (a generator; a DataLoader over an IterableDataset)
        empty = False
    if empty:
        raise ValueError(f"{name} is empty: it holds no batch")
    # an iterator (its own __iter__, a __next__) is one-shot; asked without iter(), which
    # would draw from a shuffling DataLoader's generator and change the user's next epoch
    if why is not None and isinstance(loader, collections.abc.Iterator):
        raise TypeError(f"{name} must be re-iterable (a DataLoader or a list), not a one-shot "
                        f"iterator ({type(loader).__name__}): {why}")


def _describe(value: Any) -> str:
    """A tensor's shape and dtype (or the type's name), for an error message."""
    if isinstance(value, torch.Tensor):
        return f"a {str(value.dtype).replace('torch.', '')} tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


def _default_step_fn(loss_fn: Callable) -> Callable[[nn.Module, Any], torch.Tensor]:
    def step_fn(model: nn.Module, batch: Any) -> torch.Tensor:
        if not isinstance(batch, (list, tuple)) or len(batch) != 2:
            # a third element (sample weights, a mask, an index) would be dropped without a
            # word, and the loss would not be the one the user trains on
            got = (f"a {type(batch).__name__} of {len(batch)}"
                   if isinstance(batch, (list, tuple)) else f"a {type(batch).__name__}")
            raise ValueError(f"with loss_fn, each batch must be an (inputs, targets) pair, got "
                             f"{got}; pass step_fn(model, batch) -> loss for other batch "
                             "layouts (weights, masks, dicts)")
        out = model(batch[0])
        try:
            return loss_fn(out, batch[1])
        except Exception as e:
            if isinstance(out, torch.Tensor) or not isinstance(e, (TypeError, AttributeError)):
                if hasattr(e, "add_note"):  # Python 3.11+: said under PyTorch's own message
                    e.add_note(f"(raised inside loss_fn, which lrkit calls as loss_fn(model(x), "
                               f"y): the model's output first, then the batch's targets; here "
                               f"{_describe(out)} and {_describe(batch[1])})")
                raise
            # a model returning a tuple, a dict or a Hugging Face ModelOutput: PyTorch's own
            # message ("argument 'input' must be Tensor, not tuple") names neither lrkit's
            # convention nor the way out
            raise TypeError(f"loss_fn(model(x), y) failed: model(x) returned a "
                            f"{type(out).__name__}, not a tensor ({e}); pass a loss_fn that "
                            "takes that output, or step_fn(model, batch) -> loss") from e

    return step_fn


def _ddp_mean(value: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= dist.get_world_size()
    return value



def _check_fit_options(loss_fn: Callable | None, step_fn: Callable | None,
                       grad_clip: float | None, evaluate: Callable | None,
                       eval_every: int | None, callbacks: Sequence[Callback]) -> None:
    """:func:`fit`'s checks of how the loss is computed and what the callbacks need."""
    if (loss_fn is None) == (step_fn is None):
        raise ValueError("pass exactly one of loss_fn (loss_fn(model(x), y)) or step_fn(model, batch)")
    if grad_clip is not None:
        check_positive("grad_clip", grad_clip)
    if eval_every is not None:
        check_int("eval_every", eval_every, minimum=1)
        if evaluate is None:
            raise ValueError("eval_every needs evaluate=callable(model) -> metric")
    elif evaluate is not None:  # it was never called: a silent no-op
        raise ValueError("evaluate needs eval_every=N (evaluate every N updates)")
    # an EarlyStopping that never sees a metric never stops, silently (a callback need not
    # subclass Callback: one without needs_eval needs nothing)
    blind = [type(cb).__name__ for cb in callbacks
             if evaluate is None and hasattr(cb, "needs_eval") and cb.needs_eval()]
    if blind:
        raise ValueError(f"{blind[0]} acts on a validation metric, and nothing supplies one: "
                         f"pass evaluate=callable(model) -> metric and eval_every=N to it or "
                         f"to fit")


def _mixed_precision(amp: bool | str, home: torch.device | None,
                     scaler: Any) -> tuple[Callable[[], Any], Any]:
    """``(autocast, scaler)`` for :func:`fit`: ``autocast()`` is the forward pass's context
    (float16 with a ``GradScaler`` on CUDA for ``amp=True``/``"fp16"``, else bfloat16), a
    ``nullcontext`` without ``amp``; the scaler is the caller's, or a new one where float16
    needs it."""
    check_amp("amp", amp)
    use_cuda_amp = bool(amp) and home is not None and home.type == "cuda"
    half = use_cuda_amp and amp in (True, "fp16")  # float16 needs loss scaling
    if half and scaler is None:
        scaler = torch.amp.GradScaler("cuda")
    autocast_device = "cuda" if use_cuda_amp else "cpu"
    autocast_dtype = torch.float16 if half else torch.bfloat16

    def autocast() -> Any:
        if not amp:  # entering a disabled autocast context still costs a few us per step
            return contextlib.nullcontext()
        return torch.autocast(autocast_device, dtype=autocast_dtype)

    return autocast, scaler


def _lr_driver(optimizer: torch.optim.Optimizer, schedule: Any,
               group_scales: Sequence[float] | None
               ) -> tuple[Any, Callable[[int], None] | None]:
    """What sets :func:`fit`'s LRs: ``(scheduler, None)`` for a lrkit Schedule (an
    :class:`lrkit.torch.LRSchedule`, stepped after each update), ``(None, set_lr)`` for a plain
    callable ``step -> lr`` (``set_lr(t)`` before update ``t``), ``(None, None)`` for none."""
    if schedule is None:
        return None, None
    if isinstance(schedule, Schedule):
        from .torch import LRSchedule

        return LRSchedule(optimizer, schedule, group_scales=group_scales), None
    if not callable(schedule):
        raise TypeError(f"schedule must be a lrkit Schedule or a callable step -> lr, "
                        f"got {type(schedule).__name__}")
    scales = list(group_scales) if group_scales is not None else [1.0] * len(
        optimizer.param_groups)
    if len(scales) != len(optimizer.param_groups):
        raise ValueError(f"group_scales must have one entry per param group "
                         f"({len(optimizer.param_groups)}), got {len(scales)}")

    def set_group_lrs(t: int) -> None:
        value = float(schedule(t))
        for g, s in zip(optimizer.param_groups, scales):
            g["lr"] = s * value

    return None, set_group_lrs


def _backward(model: nn.Module, compute: Callable, data: Iterator, pending: Any,
              batch_dev: torch.device | None, autocast: Callable[[], Any], scaler: Any,
              accumulation_steps: int, prefetch: bool) -> tuple[torch.Tensor, Any]:
    """One update's forward and backward passes over ``accumulation_steps`` micro-batches
    (each loss divided by their number, scaled by ``scaler`` when there is one). Returns the
    sum of their losses (float64, on the loss's device: one sync per update when the caller
    reads it) and, with ``prefetch``, the next update's first batch, drawn and queued to the
    device while this backward runs."""
    total: torch.Tensor | None = None
    for k in range(accumulation_steps):
        batch = pending if pending is not None else _to_device(next(data), batch_dev)
        pending = None
        with autocast():
            loss = compute(model, batch)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise TypeError(f"the loss must be a scalar tensor, got "
                            f"{type(loss).__name__}{_loss_hint(loss)}")
        if loss.dim() != 0:  # one element (shape (1,), (1, 1)): backward takes it as it is
            loss = loss.reshape(())
        if not loss.requires_grad:
            # PyTorch's "element 0 of tensors does not require grad" names neither the loss
            # function nor the usual causes
            raise ValueError("the loss does not require grad: it is cut off from the model's "
                             "parameters (a .detach() or .item() in loss_fn / step_fn, a "
                             "forward under torch.no_grad(), or a tensor rebuilt with "
                             "torch.tensor(...))")
        scaled = loss if loss.dtype == torch.float32 else loss.float()
        if accumulation_steps > 1:
            scaled = scaled / accumulation_steps
        (scaler.scale(scaled) if scaler is not None else scaled).backward()
        part = loss.detach().double()
        total = part if total is None else total + part
        if prefetch and k + 1 == accumulation_steps:
            # draw the next batch (and queue its copy to the device) while the device still
            # works through this backward: the caller's sync would idle it meanwhile
            pending = _to_device(next(data), batch_dev)
    assert total is not None  # accumulation_steps >= 1
    return total, pending


def _grad_versions(params: list) -> list[tuple[Any, int]]:
    """Each parameter's gradient and its version counter (bumped by every in-place change):
    with :func:`_grads_unchanged`, whether the hooks in between read or changed them."""
    return [(None, 0) if p.grad is None else (p.grad, p.grad._version) for p in params]


def _grads_unchanged(params: list, versions: list[tuple[Any, int]]) -> bool:
    return all(p.grad is g and (g is None or g._version == v)
               for p, (g, v) in zip(params, versions))


def _update(model: nn.Module, optimizer: torch.optim.Optimizer, params: list,
            scaler: Any, before_step: list[Callable], grad_clip: float | None,
            track_grad_norm: bool, lr: float) -> tuple[float | None, float]:
    """One optimizer update from the gradients in place: unscale (AMP), the callbacks'
    ``on_before_step`` hooks, the global-norm clip, then the step (through ``scaler`` when
    there is one). Returns the global gradient norm before any clipping (``fit``'s or a hook's,
    such as ``ClipGradNorm``) when clipped or tracked (else ``None``), and the LR the step
    used: ``lr``, or group 0's after the hooks when there are any (one may scale it:
    ``DecayOnPlateau``, ``DecayOnFinding``, ``SWA`` under a callable schedule).

    The norm is computed once: before the hooks when there are any, and ``fit``'s clip reuses
    it unless a hook changed a gradient (then the clip needs the norm it left)."""
    if scaler is not None:
        scaler.unscale_(optimizer)
    grad_norm = None
    if before_step:
        if grad_clip is not None or track_grad_norm:
            versions = _grad_versions(params) if grad_clip is not None else []
            grad_norm = global_grad_norm(params)
        for hook in before_step:
            hook(model, optimizer)
        lr = float(optimizer.param_groups[0]["lr"])
    if grad_clip is not None:
        if grad_norm is None:
            grad_norm = clip_grad_norm(params, grad_clip)
        elif _grads_unchanged(params, versions):  # the hooks only read them
            clip_grad_norm(params, grad_clip, norm=grad_norm)
        else:
            clip_grad_norm(params, grad_clip)
    elif track_grad_norm and grad_norm is None:
        grad_norm = global_grad_norm(params)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return grad_norm, lr


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable,
    *,
    num_steps: int,
    loss_fn: Callable | None = None,
    step_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None,
    schedule: Schedule | Callable[[int], float] | None = None,
    group_scales: Sequence[float] | None = None,
    callbacks: Sequence[Callback] = (),
    grad_clip: float | None = None,
    accumulation_steps: int = 1,
    amp: bool | str = False,
    scaler: Any = None,
    device: str | torch.device | None = None,
    evaluate: Callable[[nn.Module], float] | None = None,
    eval_every: int | None = None,
    progress: bool | str = False,
    ddp_average_loss: bool = False,
    track_grad_norm: bool = False,
) -> FitResult:
    """Train ``model`` for ``num_steps`` optimizer updates and return the trace.

    Each update draws ``accumulation_steps`` micro-batches from ``batches`` (restarted when
    exhausted), computes ``loss = loss_fn(model(x), y)`` for a batch ``(x, y)`` or
    ``step_fn(model, batch)``, back-propagates ``loss / accumulation_steps``, optionally clips the
    global gradient norm to ``grad_clip`` and steps the optimizer. With ``schedule`` the LR of group
    ``i`` at update ``t`` is ``group_scales[i] * schedule(t)`` (through :class:`lrkit.torch.LRSchedule`
    for a :class:`~lrkit.schedules.Schedule`, so momentum cycling applies too).

    ``amp=True`` (or ``"fp16"``) runs the forward pass under ``torch.autocast`` (float16 with a
    ``GradScaler`` on CUDA, bfloat16 without scaling on CPU); ``amp="bf16"`` uses bfloat16
    without scaling everywhere. ``device`` moves the model there first; every batch goes to the
    model's device (a CUDA model fed by a CPU ``DataLoader`` just works); on an accelerator the
    next one is drawn and its copy queued while the device runs the backward (so two batches'
    inputs are on the device for a moment, and a run stopped early has drawn one batch it did
    not use). A non-finite loss stops the run at once with ``stop_reason="nan"``.
    ``ddp_average_loss`` all-reduces the recorded loss across ranks when ``torch.distributed``
    is initialised (every rank then sees the same trace).
    ``track_grad_norm`` computes the global gradient norm every step for callbacks (it is
    computed anyway when clipping); off by default because it costs a pass over the gradients.
    The norm recorded (``StepInfo.grad_norm``, ``FitResult.grad_norms``) is the one before any
    clipping, ``grad_clip``'s or a callback's (``ClipGradNorm``).
    An optimizer with ``train()``/``eval()`` modes (schedule-free) is switched to ``train()``
    first. ``evaluate(model)`` is called every ``eval_every`` updates, in ``eval()`` mode under
    ``torch.no_grad()`` (every submodule's mode put back after: :func:`evaluating`, as the
    callbacks' own ``evaluate``), and its value handed to every callback's ``on_eval``; the two
    go together, and a callback that acts on validation metrics (``EarlyStopping``,
    ``DecayOnPlateau(source="val")``) without an ``evaluate`` of its own is refused before any
    step when ``fit`` has none. When the run raises (a callback, the loss, the data, Ctrl-C),
    each started callback that has not ended gets ``on_train_error(exc)`` (a logger closes its
    file) before the exception propagates.
    """
    num_steps = check_int("num_steps", num_steps, minimum=1)
    accumulation_steps = check_int("accumulation_steps", accumulation_steps, minimum=1)
    _check_fit_options(loss_fn, step_fn, grad_clip, evaluate, eval_every, callbacks)
    check_optimizer("optimizer", optimizer, model)
    compute = step_fn if step_fn is not None else _default_step_fn(loss_fn)
    dev = check_device("device", device)
    if dev is not None:
        model.to(dev)
    # batches follow the model (a CUDA model fed by a CPU DataLoader, as find_lr does); a CPU
    # model's batches are left as they come unless ``device`` was given
    home = model_device(model)
    batch_dev = home if dev is not None or (home is not None and home.type != "cpu") else None
    autocast, scaler = _mixed_precision(amp, home, scaler)
    scheduler, set_lr = _lr_driver(optimizer, schedule, group_scales)

    params = [p for g in optimizer.param_groups for p in g["params"]]
    # only the callbacks that override the hook cost a call per step (duck-typed ones may lack it)
    before_step = [cb.on_before_step for cb in callbacks
                   if getattr(type(cb), "on_before_step", Callback.on_before_step)
                   is not Callback.on_before_step]
    result = FitResult()
    running = _start_callbacks(callbacks, model, optimizer)
    bar = None
    entry_modes = module_modes(model)
    try:
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=num_steps, leave=False,
                       desc=progress if isinstance(progress, str) else "training")
        if callable(getattr(optimizer, "train", None)):
            optimizer.train()  # schedule-free optimizers step on their "y" sequence
        data = _cycle(batches, num_steps * accumulation_steps)
        # on an accelerator the next step's first batch is drawn during this step's backward; on
        # the CPU nothing would overlap, and batches are drawn as they are used (a run that stops
        # early leaves its data stream exactly there: find_lr's sweeps share one stream)
        prefetch = batch_dev is not None and batch_dev.type != "cpu"
        pending = None
        training_modes(model)
        start = time.perf_counter()
        for t in range(num_steps):
            if set_lr is not None:
                set_lr(t)
            lr = float(optimizer.param_groups[0]["lr"])
            optimizer.zero_grad(set_to_none=True)
            total, pending = _backward(model, compute, data, pending, batch_dev, autocast, scaler,
                                       accumulation_steps, prefetch and t + 1 < num_steps)
            mean_loss = total.cpu() / accumulation_steps if accumulation_steps > 1 else total.cpu()
            if ddp_average_loss:
                mean_loss = _ddp_mean(mean_loss)
            loss_value = float(mean_loss)
            if not math.isfinite(loss_value):
                result.losses.append(loss_value)
                result.lrs.append(lr)
                result.steps_done = t + 1
                result.stop_reason = "nan"
                break
            grad_norm, lr = _update(model, optimizer, params, scaler, before_step, grad_clip,
                                    track_grad_norm, lr)
            if scheduler is not None:
                scheduler.step()
            result.losses.append(loss_value)
            result.lrs.append(lr)
            if grad_norm is not None:
                result.grad_norms.append(grad_norm)
            result.steps_done = t + 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.4g}", lr=f"{lr:.3g}", refresh=False)
            info = StepInfo(t, loss_value, lr, grad_norm, model, optimizer)
            reason = None
            for cb in callbacks:
                reason = cb.on_step_end(info) or reason
            if evaluate is not None and eval_every is not None and (t + 1) % eval_every == 0:
                reason = _evaluate_step(model, evaluate, t + 1, callbacks, result) or reason
            if reason:
                result.stop_reason = reason if isinstance(reason, str) else "callback"
                break
    except BaseException as exc:
        _train_error(running, exc)
        raise
    finally:
        if bar is not None:
            bar.close()
        set_module_modes(model, entry_modes)
    result.wall_time = time.perf_counter() - start
    _end_callbacks(running, result)
    return result


def _start_callbacks(callbacks: Sequence[Callback], model: nn.Module,
                     optimizer: torch.optim.Optimizer) -> list[Callback]:
    """``on_train_start`` for each callback in order; returns them (the callbacks to end).
    When one raises, those started before it get ``on_train_error``."""
    running: list[Callback] = []
    try:
        for cb in callbacks:
            cb.on_train_start(model, optimizer)
            running.append(cb)
    except BaseException as exc:
        _train_error(running, exc)
        raise
    return running


def _end_callbacks(running: list[Callback], result: FitResult) -> None:
    """``on_train_end(result)`` for each callback in order; when one raises, it and those after
    it get ``on_train_error`` (a logger after a failing ``SWA`` still closes its file)."""
    try:
        while running:
            running[0].on_train_end(result)
            running.pop(0)
    except BaseException as exc:
        _train_error(running, exc)
        raise


def _evaluate_step(model: nn.Module, evaluate: Callable[[nn.Module], float], step: int,
                   callbacks: Sequence[Callback], result: FitResult) -> bool | str | None:
    """``fit``'s evaluation after update ``step`` (1-based): ``evaluate(model)`` under
    :func:`evaluating`, recorded in ``result.evals`` and handed to every callback's
    ``on_eval``; returns the stop any of them requested."""
    with evaluating(model):
        metric = as_real("evaluate(model)'s value", evaluate(model))
    result.evals.append((step, metric))
    reason = None
    for cb in callbacks:
        reason = cb.on_eval(step, metric) or reason
    return reason


def _train_error(running: Sequence[Callback], exc: BaseException) -> None:
    """``on_train_error(exc)`` for each callback in ``running`` that has the hook (duck-typed
    ones may not). One that raises in turn does not stop the others, and what it raised is
    added to ``exc`` as a note (``exc`` is the error the caller sees)."""
    for cb in running:
        hook = getattr(cb, "on_train_error", None)
        if hook is None:
            continue
        try:
            hook(exc)
        except Exception as e:  # noqa: BLE001 - the run's own error is the one to raise
            if hasattr(exc, "add_note"):  # Python 3.11+
                exc.add_note(f"(then {type(cb).__name__}.on_train_error raised "
                             f"{type(e).__name__}: {e})")


# --------------------------------------------------------------------------------- task runs
def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run(
    task: "Task",
    lr: float | Schedule,
    *,
    steps: int | None = None,
    seed: int = 0,
    callbacks: Sequence[Callback] = (),
    eval_split: str = "test",
    grad_clip: float | None = None,
    accumulation_steps: int | None = None,
    amp: bool | str | None = None,
    device: str | torch.device | None = None,
    diverge_factor: float | None = 4.0,
    optimizer_factory: Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer] | None = None,
    progress: bool | str = False,
) -> RunResult:
    """Train ``task`` under its recipe at ``lr`` and score it on ``eval_split``.

    ``lr`` is the peak learning rate of the recipe's schedule (a float), or a full
    :class:`~lrkit.schedules.Schedule`. ``steps`` overrides the recipe's horizon (the recipe's
    schedule is rebuilt for it); ``grad_clip`` defaults to the recipe's. A run whose causal
    smoothed loss exceeds ``diverge_factor`` × its first loss, or turns non-finite, stops early
    and is scored ``task.worst``. ``amp`` and ``accumulation_steps`` default to the recipe's
    (see :func:`fit`). ``optimizer_factory(params)`` replaces the recipe's optimizer (for
    LR-free optimizers, whose ``lr`` is a multiplier: pass ``lr=1.0`` to keep the recipe's
    schedule shape, or a constant schedule). When that optimizer has neither ``momentum`` nor ``betas`` (Adagrad, Adadelta,
    ...), a schedule that cycles momentum (``onecycle``, ``cyclic``) keeps its LR shape and drops
    the cycling: there is nothing to cycle. Optimizers with ``train()``/``eval()`` modes
    (schedule-free) are switched to ``eval()`` before scoring. Deterministic on CPU for a given
    ``seed``.
    """
    from .tasks import Task

    if not isinstance(task, Task):
        raise TypeError(f"task must be a lrkit.tasks.Task, got {type(task).__name__}")
    n = task.recipe.steps if steps is None else check_int("steps", steps, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    if eval_split not in ("val", "test"):
        raise ValueError(f"eval_split must be 'val' or 'test', got {eval_split!r}")
    if isinstance(lr, Schedule):
        schedule = lr
        peak = 1.0  # placeholder: the schedule adapter sets every group's LR before step 0
    else:
        peak = check_positive("lr", lr)
        schedule = task.recipe.make_schedule(peak, n)
    seed_everything(seed)
    model = task.build_model(seed)
    if device is not None:
        model.to(device)
    if optimizer_factory is not None:
        optimizer = optimizer_factory(model.parameters())
        check_optimizer("optimizer_factory's result", optimizer)
    else:
        optimizer = task.recipe.make_optimizer(model.parameters(), peak)
    schedule = _fit_momentum(schedule, optimizer)
    cbs = list(callbacks)
    if diverge_factor is not None:
        cbs.insert(0, DivergenceStop(diverge_factor, relative_to="initial", beta=0.9))
    if grad_clip is None:
        grad_clip = task.recipe.grad_clip
    if amp is None:
        amp = task.recipe.amp
    if accumulation_steps is None:
        accumulation_steps = task.recipe.accumulation_steps
    out = fit(model, optimizer, task.batches(seed), num_steps=n, step_fn=task.loss,
              schedule=schedule, callbacks=cbs, grad_clip=grad_clip,
              accumulation_steps=accumulation_steps, amp=amp, device=device, progress=progress)
    scored = True
    if out.diverged:
        metric = task.worst
    else:
        if callable(getattr(optimizer, "eval", None)):
            optimizer.eval()  # schedule-free: evaluate the averaged "x" sequence
        model.eval()
        with torch.no_grad():
            metric = task.score(model, eval_split)
        if not math.isfinite(metric):
            metric, scored = task.worst, False
    return RunResult(task=task.name, seed=seed, steps=n, metric=metric, diverged=out.diverged,
                     stop_reason=out.stop_reason, steps_done=out.steps_done,
                     wall_time=out.wall_time, losses=out.losses, lrs=out.lrs,
                     schedule=schedule.spec if schedule is not None else None, scored=scored)


def _fit_momentum(schedule: Schedule, optimizer: torch.optim.Optimizer) -> Schedule:
    """``schedule`` without its momentum cycling when no param group of ``optimizer`` has a
    momentum to cycle (``momentum`` or ``betas``); else ``schedule`` itself."""
    from .schedules import from_spec
    from .torch import _momentum_key

    spec = schedule.spec
    if (spec.get("cycle_momentum") and schedule.momentum(0) is not None
            and all(_momentum_key(g) is None for g in optimizer.param_groups)):
        return from_spec({**spec, "cycle_momentum": False})
    return schedule


def check_scored(runs: Iterable[Any], what: str) -> None:
    """ValueError when no run of ``runs`` (dicts with ``diverged`` and ``scored``, as
    :class:`RunResult` gives) got a finite metric although some trained without diverging:
    every LR would tie at ``task.worst`` and the choice among them would be arbitrary."""
    runs = list(runs)
    trained = [r for r in runs if not r["diverged"]]
    if trained and not any(r.get("scored", True) for r in trained):
        raise ValueError(f"{what}: none of {len(runs)} runs scored a finite validation metric "
                         f"({len(trained)} trained without diverging, and evaluating them gave "
                         "NaN or inf): check metric_fn (it must return a finite float for a "
                         "trained model) and the validation data")


# --------------------------------------------------------------------------------- snapshots
def _cpu_copy(obj: Any) -> Any:
    """Deep copy of a state dict with every tensor cloned to CPU memory."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_make"):  # a namedtuple
        return obj._make(_cpu_copy(v) for v in obj)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu_copy(v) for v in obj)
    return copy.deepcopy(obj)


def loader_generators(loader: Any) -> list[torch.Generator]:
    """The ``torch.Generator`` objects that drive a DataLoader's shuffling, if it has any."""
    found: list[torch.Generator] = []
    for owner in (loader, getattr(loader, "sampler", None),
                  getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
        gen = getattr(owner, "generator", None)
        if isinstance(gen, torch.Generator) and all(gen is not g for g in found):
            found.append(gen)
    return found


def _rng_state() -> tuple:
    """The global RNGs' states: Python's ``random``, NumPy's, torch's CPU generator and, where
    CUDA is available, every CUDA device's (:func:`_set_rng_state` puts them back)."""
    return (random.getstate(), np.random.get_state(), torch.get_rng_state(),
            torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)


def _set_rng_state(state: tuple) -> None:
    """Put back the global RNGs' states taken by :func:`_rng_state`."""
    python, numpy, cpu, cuda = state
    random.setstate(python)
    np.random.set_state(numpy)
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


class _OwnWorkers:
    """lrkit's own worker processes for a ``DataLoader`` with ``persistent_workers=True``.

    Such a loader keeps one iterator (``loader._iterator``) whose workers live, their RNGs
    running on, from epoch to epoch: runs that shared it saw other random augmentations
    each time, and the user's next epoch after them differed from an untouched loader's.
    :meth:`fresh` sets the user's iterator aside (the first time) and shuts down the one
    lrkit started before, so that the next ``iter(loader)`` starts new workers seeded from
    the loader's generator (or the global RNG), as a run seeds them; :meth:`give_back` shuts
    down lrkit's and puts the user's own iterator object back, never used by lrkit. Any
    other loader (no ``_iterator``, workers that do not persist) is left alone."""

    _UNSET = object()

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self.user: Any = self._UNSET

    def _persistent(self) -> bool:
        return (hasattr(self.loader, "_iterator")
                and bool(getattr(self.loader, "persistent_workers", False))
                and (getattr(self.loader, "num_workers", 0) or 0) > 0)

    def _shut_lrkits(self) -> None:
        current = self.loader._iterator
        if current is not None and current is not self.user:
            shutdown = getattr(current, "_shutdown_workers", None)
            if callable(shutdown):
                shutdown()

    def fresh(self) -> None:
        """Let the next ``iter(loader)`` start new workers (for a run of lrkit's own)."""
        if not self._persistent():
            return
        if self.user is self._UNSET:
            self.user = self.loader._iterator
        else:
            self._shut_lrkits()
        self.loader._iterator = None

    def give_back(self) -> None:
        """Shut lrkit's workers down and put the user's iterator back."""
        if self.user is self._UNSET:
            return
        self._shut_lrkits()
        self.loader._iterator = self.user
        self.user = self._UNSET


class Snapshot:
    """Model, optimizer, scheduler, scaler, gradients, generator and global RNG state, held in
    CPU memory. The parameters the optimizer steps outside the model (a learnable loss
    temperature in its own param group) are captured too, with their ``.grad`` when ``grads``.

    ``restore()`` puts everything back bitwise: training after restore equals training from the
    moment of the snapshot. Tensors are copied to CPU, never kept as a second GPU copy and never
    written to disk; the restore writes **in place** (``copy_`` into the existing parameter,
    buffer, gradient and optimizer-state tensors), frees optimizer state that did not exist at the
    snapshot before anything new is allocated, and so never holds a transient model-sized copy on
    the accelerator (peak memory stays that of the training it undoes).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
                 scheduler: Any = None, scaler: Any = None,
                 generators: Sequence[torch.Generator] = (), grads: bool = False) -> None:
        self.model, self.optimizer, self.scheduler, self.scaler = model, optimizer, scheduler, scaler
        self.generators = list(generators)
        self._model = _cpu_copy(module_state(model))
        self._training = module_modes(model)
        self._optimizer = _OptimizerCopy(optimizer) if optimizer is not None else None
        self._grads = None
        if grads:
            self._grads = [_cpu_grad(p) for p in model.parameters()]
        self._extra = _params_outside(model, optimizer)
        self._extra_values = [p.detach().to("cpu", copy=True) for p in self._extra]
        self._extra_grads = [_cpu_grad(p) for p in self._extra] if grads else None
        self._scheduler = _cpu_copy(scheduler.state_dict()) if scheduler is not None else None
        self._scaler = _cpu_copy(scaler.state_dict()) if scaler is not None else None
        self._generators = [g.get_state() for g in self.generators]
        self._rng = _rng_state()

    def restore(self, *, rng: bool = True) -> None:
        """Put every captured state back (in place); ``rng=False`` leaves the data-loader
        generators and the global RNGs as they are (model, optimizer, gradients, scheduler and
        scaler only)."""
        _copy_into_module(self.model, self._model)
        set_module_modes(self.model, self._training)
        if self._grads is not None:
            for p, saved in zip(self.model.parameters(), self._grads):
                _restore_grad(p, saved)
        for i, (p, saved) in enumerate(zip(self._extra, self._extra_values)):
            _restore_tensor(p, saved)
            if self._extra_grads is not None:
                _restore_grad(p, self._extra_grads[i])
        if self._optimizer is not None:
            self._optimizer.restore()
        if self.scheduler is not None:
            self.scheduler.load_state_dict(_cpu_copy(self._scheduler))
        if self.scaler is not None:
            self.scaler.load_state_dict(_cpu_copy(self._scaler))
        if not rng:
            return
        for g, state in zip(self.generators, self._generators):
            g.set_state(state)
        _set_rng_state(self._rng)


def _same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype


def _loss_hint(loss: Any) -> str:
    """What to do about a loss that is not a scalar tensor, by what it is."""
    if isinstance(loss, (tuple, list)) and loss and isinstance(loss[0], torch.Tensor):
        return ("; a loss function that returns (loss, extras) can be passed as "
                "lambda out, y: fn(out, y)[0] (or a step_fn returning the loss alone)")
    if isinstance(loss, dict):
        return "; pass a step_fn that picks the loss out of the dict (step_fn(model, batch))"
    if isinstance(loss, torch.Tensor):
        return (f" of shape {tuple(loss.shape)}; a per-example loss (reduction='none') needs "
                "its mean: lambda out, y: fn(out, y).mean()")
    return ""


def module_state(model: nn.Module) -> dict[str, Any]:
    """``model.state_dict()`` plus the non-persistent buffers (``register_buffer(...,
    persistent=False)``), which ``state_dict`` leaves out but training can change (a counter,
    a running statistic): what a snapshot must put back for the model to be as it was."""
    state = dict(model.state_dict())
    for name, b in model.named_buffers():
        if b is not None and name not in state:
            state[name] = b
    return state


#: the state-dict key of a module's ``get_extra_state()`` (``torch.nn.Module``'s own suffix)
_EXTRA_STATE = "_extra_state"


def _is_extra_state(key: str) -> bool:
    """Whether a state-dict ``key`` holds a module's ``get_extra_state()`` (any object: a
    vocabulary, a step count), not a parameter or buffer."""
    return key.rpartition(".")[2] == _EXTRA_STATE


def _copy_into_module(model: nn.Module, saved: dict) -> None:
    """``model.load_state_dict(saved)`` (``saved`` from :func:`module_state`), done as
    ``copy_`` into the existing tensors; a module's extra state goes back through its
    ``set_extra_state`` as a deep copy (``saved`` may be loaded again)."""
    current = module_state(model)
    tensors = {k: v for k, v in current.items() if not _is_extra_state(k)}
    if set(current) != set(saved) or not all(
            isinstance(v, torch.Tensor) and isinstance(saved[k], torch.Tensor)
            and _same_layout(v, saved[k]) for k, v in tensors.items()):
        persistent = set(model.state_dict())
        model.load_state_dict({k: _cpu_copy(v) if _is_extra_state(k) else v
                               for k, v in saved.items() if k in persistent})
        for name, value in saved.items():
            if name not in persistent:  # a non-persistent buffer, re-registered as it was
                owner, _, leaf = name.rpartition(".")
                mod = model.get_submodule(owner) if owner else model
                mod.register_buffer(leaf, value.to(getattr(current.get(name), "device", "cpu")),
                                    persistent=False)
        return
    with torch.no_grad():
        for k, v in tensors.items():
            v.copy_(saved[k])
    for k in current.keys() - tensors.keys():
        owner = k[: -len(_EXTRA_STATE)].rstrip(".")
        (model.get_submodule(owner) if owner else model).set_extra_state(_cpu_copy(saved[k]))


def _cpu_grad(p: torch.Tensor) -> torch.Tensor | None:
    """A CPU copy of ``p.grad`` (``None`` when it has none)."""
    return None if p.grad is None else p.grad.detach().to("cpu", copy=True)


def _params_outside(model: nn.Module, optimizer: torch.optim.Optimizer | None
                    ) -> list[torch.Tensor]:
    """The tensors ``optimizer`` steps that are neither parameters nor buffers of ``model``
    (each once, in the optimizer's order): a snapshot of the model alone would miss them."""
    if optimizer is None:
        return []
    seen = {id(t) for t in model.parameters()} | {id(t) for t in model.buffers()}
    out = []
    for g in optimizer.param_groups:
        for p in g["params"]:
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def _restore_tensor(p: torch.Tensor, saved: torch.Tensor) -> None:
    """Write ``saved`` back into ``p`` in place (its storage kept), or rebind its data when its
    shape or dtype changed."""
    with torch.no_grad():
        if _same_layout(p, saved):
            p.copy_(saved)
        else:
            p.data = saved.to(p.device)


def _restore_grad(p: torch.Tensor, saved: torch.Tensor | None) -> None:
    if saved is None:
        p.grad = None
    elif p.grad is not None and _same_layout(p.grad, saved):
        p.grad.copy_(saved)
    else:
        p.grad = None  # free the old one before allocating the new one
        p.grad = saved.to(p.device)


class _OptimizerCopy:
    """An optimizer's param-group settings and per-parameter state, copied to CPU memory, with
    the device of every state tensor; ``restore()`` writes it back in place."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.groups = [copy.deepcopy({k: v for k, v in g.items() if k != "params"})
                       for g in optimizer.param_groups]
        # a tensor setting (lr=torch.tensor(0.01)) is the user's object: restored into it
        self.group_tensors = [{k: v for k, v in g.items() if isinstance(v, torch.Tensor)}
                              for g in optimizer.param_groups]
        # torch's private flags on the optimizer (an attached LR scheduler's step wrapper sets
        # _opt_called on the first step; its warning about step order reads it)
        self.flags = _private_flags(optimizer)
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self.state: dict[int, dict[str, Any]] = {}
        for i, p in enumerate(self.params):
            entry = optimizer.state.get(p)
            if entry:
                self.state[i] = {k: (_cpu_copy(v), v.device if isinstance(v, torch.Tensor)
                                     else None) for k, v in entry.items()}
        self.extra = _cpu_copy({k: v for k, v in optimizer.state.items()
                                if not isinstance(k, torch.Tensor)})

    def restore(self) -> None:
        opt = self.optimizer
        params = [p for g in opt.param_groups for p in g["params"]]
        if len(params) != len(self.params) or any(a is not b for a, b in zip(params, self.params)):
            raise RuntimeError("the optimizer's parameters changed since the snapshot; cannot "
                               "restore it")
        for g, saved, mine in zip(opt.param_groups, self.groups, self.group_tensors):
            for k, v in saved.items():
                if k in mine:  # the same tensor object, with its value as it was
                    _restore_tensor(mine[k], v)
                    g[k] = mine[k]
                else:
                    g[k] = copy.deepcopy(v)
        for k in _private_flags(opt).keys() - self.flags.keys():
            delattr(opt, k)
        for k, v in self.flags.items():
            setattr(opt, k, v)
        # 1) free state that did not exist (or changed layout), 2) copy in place, 3) allocate.
        # State that shares memory with a gradient (SGD-HD keeps g_{t-1} by reference) is
        # re-allocated, never written through: that would change the parameter's .grad too.
        grad_ptrs = {p.grad.data_ptr() for p in params if p.grad is not None and p.grad.numel()}
        later: list[tuple[torch.Tensor, str, torch.Tensor, torch.device | None]] = []
        for i, p in enumerate(params):
            saved = self.state.get(i)
            if saved is None:
                opt.state.pop(p, None)
                continue
            entry = opt.state[p]
            for k in [k for k in entry if k not in saved]:
                del entry[k]
            for k, (v, dev) in saved.items():
                cur = entry.get(k)
                if isinstance(v, torch.Tensor):
                    if isinstance(cur, torch.Tensor) and _same_layout(cur, v) and \
                            cur.device == dev and cur.data_ptr() not in grad_ptrs:
                        with torch.no_grad():
                            cur.copy_(v)
                    else:
                        entry.pop(k, None)
                        later.append((p, k, v, dev))
                else:
                    entry[k] = copy.deepcopy(v)
        for p, k, v, dev in later:
            opt.state[p][k] = v.to(dev, copy=True) if dev is not None else v.clone()
        for k in [k for k in opt.state if not isinstance(k, torch.Tensor)]:
            del opt.state[k]
        for k, v in self.extra.items():
            opt.state[k] = _cpu_copy(v)


def _private_flags(optimizer: torch.optim.Optimizer) -> dict[str, bool]:
    """The optimizer object's private boolean attributes (``_opt_called``, ...)."""
    return {k: v for k, v in vars(optimizer).items()
            if k.startswith("_") and isinstance(v, bool)}


def snapshot(model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
             scheduler: Any = None, scaler: Any = None,
             generators: Sequence[torch.Generator] = (), grads: bool = False) -> Snapshot:
    """Capture everything needed to undo some training exactly (see :class:`Snapshot`);
    ``grads=True`` captures the parameters' ``.grad`` too."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return Snapshot(model, optimizer, scheduler=scheduler, scaler=scaler, generators=generators,
                    grads=grads)
