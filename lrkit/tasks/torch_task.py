"""``from_torch``: turn a plain PyTorch set-up (model, optimizer, loaders, loss) into a :class:`Task`.

Most users have a model and data loaders, not a Task. Everything in lrkit that needs to train
*short runs from the same starting point* (the range test's confirm mode, search, the autopilot)
takes a Task; this helper builds one around the user's own objects:

- the model's initial weights (parameters and buffers) are copied to CPU memory once; every
  ``build_model(seed)`` loads them back **into the same model object, in place**, so no second
  model ever sits on the GPU;
- the optimizer's class, per-group settings and group LR ratios are recorded; every run builds a
  fresh optimizer of that class over the same parameter groups at the run's LR (group ``i`` gets
  ``lr * lr_i / lr_0``);
- training batches come from ``train_loader`` (restarted each epoch, moved to the model's device);
  the loader's shuffling generator, if it has one, is seeded with the run's seed (and its state
  as given is put back with the model, below); a loader with ``persistent_workers=True`` gets
  new worker processes for every run (their RNGs, which draw random augmentations, start anew
  from the run's seed), and the user's own iterator is put back untouched; the task's
  ``train_size`` is the examples of one epoch (:func:`epoch_size`) and ``batches``'s
  ``epoch_batches`` the batches of one (``len(train_loader)``);
- ``evaluate(model, "val")`` is ``metric_fn(model, val_loader)`` (default: the mean loss under
  ``loss_fn`` over ``val_loader``); ``"test"`` uses ``test_loader`` when given, else the val loader.

A run (``lrkit.train.run``) leaves the user's model holding what it trained; ``find_lr``,
``lrkit.search`` and ``lrkit.tune`` load the starting point back at the end, with every
parameter's ``.grad``, the generators of the train, val and test loaders, the global RNGs
(Python's, NumPy's and torch's, which every run seeds) and a persistent-worker loader's iterator
as they were when ``from_torch`` was called (``lrkit.finder.put_back``; tune's trained weights
are in ``TuneResult.weights``), and ``find_lr`` on a model snapshots and restores it exactly.

>>> import torch
>>> from torch import nn
>>> model = nn.Linear(3, 1)
>>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
>>> data = [(torch.randn(8, 3), torch.randn(8, 1)) for _ in range(4)]
>>> task = from_torch(model, opt, data, nn.functional.mse_loss, val_loader=data, steps=20)
>>> task.recipe.default_lr, task.metric, task.higher_is_better
(0.1, 'loss', False)
"""

from __future__ import annotations

import collections.abc
import hashlib
import inspect
import math
import types
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn

from ..errors import (as_real, check_amp, check_int, check_positive,
                      check_warmup)
from .base import Recipe, Task

__all__ = ["from_torch"]

#: optimizer settings that describe the param group rather than the optimizer
_GROUP_ONLY = ("params", "lr", "initial_lr", "name")
#: what torch's cycling LR schedulers (OneCycleLR, CyclicLR) write into a param group: their state
_CYCLER_KEYS = ("max_lr", "min_lr", "base_momentum", "max_momentum")


def _group_settings(group: dict, defaults: dict) -> dict:
    """A param group's optimizer settings, the LR and a scheduler's state left out. A momentum
    that an attached OneCycleLR / CyclicLR cycles (its ``max_momentum`` in the group: it wrote
    ``momentum``, or ``betas[0]``, over yours at construction and every step) is the
    optimizer's constructor value from ``defaults``, not the cycle's current one (0.95 where
    you set 0.9)."""
    settings = {k: v for k, v in group.items() if k not in _GROUP_ONLY + _CYCLER_KEYS}
    if "max_momentum" in group:
        if "momentum" in settings and "momentum" in defaults:
            settings["momentum"] = defaults["momentum"]
        if "betas" in settings and "betas" in defaults:
            settings["betas"] = (defaults["betas"][0], *settings["betas"][1:])
    return settings


def _move(batch: Any, device: torch.device | None) -> Any:
    from ..train import _to_device

    if device is None or device.type == "cpu" and not _has_cuda_tensor(batch):
        return batch
    return _to_device(batch, device)


def _has_cuda_tensor(batch: Any) -> bool:
    """Whether ``batch`` may hold a tensor off the CPU (an object with a ``.to`` of its own,
    which lrkit cannot look into, may)."""
    if isinstance(batch, torch.Tensor):
        return batch.device.type != "cpu"
    if isinstance(batch, (list, tuple)):
        return any(_has_cuda_tensor(b) for b in batch)
    if isinstance(batch, collections.abc.Mapping):
        return any(_has_cuda_tensor(b) for b in batch.values())
    return callable(getattr(batch, "to", None))


def _schedule_family(schedule: Any, steps: int) -> tuple[str, int | None]:
    """``(family, warmup_steps)`` of ``schedule``: a family name (warmup ``None``: the caller's
    ``warmup_steps`` says it), or a :class:`~lrkit.schedules.Schedule` whose LR over ``steps``
    steps has one family's shape as :func:`lrkit.schedules.family` builds it (any peak), its
    warmup included. Confirm's and tune's runs are miniatures of that family, so a Schedule of
    another shape is refused rather than trained as something else (a ``warmup_cosine`` or
    ``wsd`` Schedule's warmup used to be dropped)."""
    from .. import schedules

    if not isinstance(schedule, schedules.Schedule):
        if not isinstance(schedule, str) or schedule not in schedules.FAMILIES:
            raise ValueError(f"schedule must be one of {list(schedules.FAMILIES)} (the family "
                             f"you will train with), got {schedule!r}")
        return schedule, None
    spec = schedule.spec
    warm = int(spec.get("steps", 0)) if spec.get("name") == "warmup" else int(
        spec.get("warmup_steps", 0) or 0)
    grid = sorted(set(np.linspace(0, steps - 1, min(steps, 512)).round().astype(int).tolist()))
    values = np.array([float(schedule(t)) for t in grid])
    peak = float(values.max()) if values.size else 0.0
    own = spec.get("name")  # its own family first (warmup_cosine and a warmed-up cosine agree)
    if peak > 0:
        for name in sorted(schedules.FAMILIES, key=lambda f: f != own):
            try:
                ref = schedules.family(name, 1.0, steps, warmup_steps=warm)
            except ValueError:  # a family whose shape cannot take this warmup: not that one
                continue
            shape = np.array([float(ref(t)) for t in grid])
            if np.allclose(values / peak, shape / shape.max(), rtol=1e-6, atol=1e-9):
                return name, warm
    raise ValueError(
        f"schedule must be a family name {list(schedules.FAMILIES)} or a Schedule of one over "
        f"the run's {steps} steps as lrkit.schedules.family(name, lr, {steps}, warmup_steps=w) "
        f"builds it (confirm and tune train miniatures of that family), got a "
        f"{spec.get('name')!r} schedule of another shape: pass the family's name and "
        "warmup_steps")


class _StartingPoint:
    """A from_torch task's ``build_model``: loads the model's weights and buffers as given
    (copied to CPU once) back into the same model object, in place, with its train/eval
    modes. :meth:`put_back` also hands back what the runs change besides, as it was when
    :func:`from_torch` was called: every parameter's ``.grad`` (``None`` stays ``None``), the
    state of the loaders' generators (train, val and test: every run re-seeds the training
    loader's and evaluating draws from a shuffling val loader's) and a persistent-worker
    training loader's own iterator (``workers``: the runs start their own,
    :class:`lrkit.train._OwnWorkers`). :func:`lrkit.finder.put_back` calls it after
    ``find_lr``, ``lrkit.tune`` and ``lrkit.search``, and puts the global RNGs back as they
    were when those were called."""

    def __init__(self, model: nn.Module, train_loader: Iterable,
                 other_loaders: Iterable[Iterable | None] = ()) -> None:
        from ..train import (_cpu_copy, _cpu_grad, _OwnWorkers, loader_generators, module_modes,
                             module_state)

        self.model = model
        self.weights = _cpu_copy(module_state(model))  # get_extra_state()'s objects deep-copied
        self.modes = module_modes(model)
        self.grads = [_cpu_grad(p) for p in model.parameters()]
        self.generators = loader_generators(train_loader)
        for loader in other_loaders:
            self.generators += [g for g in loader_generators(loader)
                                if all(g is not h for h in self.generators)]
        self.generator_states = [g.get_state() for g in self.generators]
        self.workers = _OwnWorkers(train_loader)

    def __call__(self, seed: int) -> nn.Module:
        from ..train import _copy_into_module, set_module_modes

        _copy_into_module(self.model, self.weights)
        set_module_modes(self.model, self.modes)
        return self.model

    def put_back(self) -> None:
        """The model (weights, buffers, modes, gradients), the loaders' generators and the
        training loader's workers as given to :func:`from_torch`."""
        from ..train import _restore_grad

        self(0)
        for p, saved in zip(self.model.parameters(), self.grads):
            _restore_grad(p, saved)
        for g, state in zip(self.generators, self.generator_states):
            g.set_state(state)
        self.workers.give_back()


class _TrainBatches:
    """A from_torch task's ``batches(seed)``: ``train_loader``'s batches, epoch after epoch,
    moved to ``device``; a call seeds the loader's shuffling generators with ``seed`` and
    (persistent workers) starts new worker processes when its first batch is drawn.
    ``epoch_batches``, the batches in one epoch, is ``len(train_loader)`` (``None`` without a
    length: a stream, a DataLoader over an IterableDataset): ``lrkit.search`` deals exactly
    one epoch into its folds and subsets."""

    def __init__(self, loader: Iterable, device: torch.device | None,
                 start: _StartingPoint) -> None:
        self.loader, self.device, self.start = loader, device, start
        try:
            self.epoch_batches: int | None = len(loader)  # type: ignore[arg-type]
        except (TypeError, NotImplementedError):  # no length: an IterableDataset, a stream
            self.epoch_batches = None

    def __call__(self, seed: int) -> Iterator:
        from ..train import _cycle, loader_generators

        for gen in loader_generators(self.loader):
            gen.manual_seed(int(seed))
        self.start.workers.fresh()
        for b in _cycle(self.loader, name="train_loader"):
            yield _move(b, self.device)


def _batch_rows(batch: Any) -> int | None:
    """The examples in one batch: the leading dimension that all its tensors share (inside
    tuples, lists and mappings); ``None`` when they differ or it holds no tensor."""
    dims: set[int | None] = set()

    def walk(b: Any) -> None:
        if isinstance(b, torch.Tensor):
            dims.add(b.shape[0] if b.dim() else None)
        elif isinstance(b, (list, tuple)):
            for x in b:
                walk(x)
        elif isinstance(b, collections.abc.Mapping):
            for x in b.values():
                walk(x)

    walk(batch)
    return next(iter(dims)) if len(dims) == 1 and None not in dims else None


def epoch_size(loader: Any) -> int:
    """Examples in one epoch of a training loader, read without drawing a batch; 0 when it
    does not say. A list or tuple of batches: the sum of their leading dimensions (when all
    of a batch's tensors share one). A loader with a sampler (a ``DataLoader``): the examples
    its sampler draws in an epoch, ``len(sampler)`` (a ``SubsetRandomSampler`` or a
    ``DistributedSampler`` draws fewer than the dataset holds), or ``len(loader) x
    batch_size`` with ``drop_last``; else its dataset's length (an ``IterableDataset`` that
    has one). :func:`from_torch` keeps it as the task's ``train_size``."""
    if isinstance(loader, (list, tuple)):
        rows = [_batch_rows(b) for b in loader]
        return sum(r for r in rows if r is not None) if all(r is not None for r in rows) else 0
    batcher = getattr(loader, "batch_sampler", None)
    sampler = getattr(batcher, "sampler", None)
    if sampler is None:
        sampler = getattr(loader, "sampler", None)
    size = getattr(batcher, "batch_size", None)
    try:
        if getattr(batcher, "drop_last", False) and isinstance(size, int):
            return len(batcher) * size
        return len(sampler)  # type: ignore[arg-type]
    except (TypeError, NotImplementedError):  # no sampler, or one without a length
        pass
    dataset = getattr(loader, "dataset", None)
    try:
        return len(dataset)  # type: ignore[arg-type]
    except (TypeError, NotImplementedError):
        return 0


def _code_bytes(code: types.CodeType) -> bytes:
    """Bytecode and constants, nested functions' code included (never a repr with an address)."""
    parts = [code.co_code]
    for c in code.co_consts:
        parts.append(_code_bytes(c) if isinstance(c, types.CodeType) else repr(c).encode())
    return b"\x00".join(parts)


def _callable_id(fn: Any) -> str:
    """A process-independent name for a callable: module, qualified name and, for Python
    functions, a digest of their bytecode and constants (two lambdas differ)."""
    if fn is None:
        return "-"
    code = getattr(fn, "__code__", None)
    body = hashlib.sha1(_code_bytes(code)).hexdigest()[:12] if code is not None else ""
    name = getattr(fn, "__qualname__", None) or repr(fn)  # a module instance: its repr
    return f"{getattr(fn, '__module__', '')}.{name}:{body}"


def loader_batch_size(loader: Any, train_size: int = 0) -> int:
    """Examples per batch of a training loader: its ``batch_size``; else its batch sampler's
    (``DataLoader(batch_sampler=...)`` sets ``loader.batch_size`` to ``None``); else the mean
    batch, ``train_size / len(loader)``, when both are known (a sampler of uneven batches);
    else 1 (a plain iterable says nothing). Read from attributes only: no batch is drawn.
    ``lrkit.search`` sizes its subsets and folds by it (a batch of 1 for a loader of 32 read
    32 times too many batches) and tune's safe-LR bound its examples."""
    for source in (loader, getattr(loader, "batch_sampler", None)):
        bs = getattr(source, "batch_size", None)
        if isinstance(bs, int) and not isinstance(bs, bool) and bs >= 1:
            return bs
    try:
        n = len(loader)
    except TypeError:  # an iterable without a length
        n = 0
    return max(1, round(train_size / n)) if train_size > 0 and n > 0 else 1


def _fingerprint(model: nn.Module, opt_cls: type, groups: list, defaults: dict,
                 ratios: list[float], steps: int, family: str, warmup_steps: int,
                 loss: Any, metric_fn: Any, higher_is_better: bool, train_size: int,
                 batch_size: int, grad_clip: float | None = None,
                 amp: bool | str = False, accumulation_steps: int = 1) -> str:
    """10 hex digits that tell one user set-up from another (architecture, parameter shapes,
    optimizer and its settings, horizon, schedule, loss, metric, data size), so that two
    ``from_torch`` tasks never share a tune folder, a search study or a cached oracle. The
    initial weights' values are left out: the same set-up from another seed is the same task;
    so are those of a module's ``get_extra_state()`` (a step count), whose type is kept."""
    parts = [repr(model),
             [(k, tuple(v.shape), str(v.dtype)) if isinstance(v, torch.Tensor)
              else (k, type(v).__qualname__) for k, v in model.state_dict().items()],
             f"{opt_cls.__module__}.{opt_cls.__qualname__}",
             sorted((k, repr(v)) for k, v in defaults.items()),
             [(idx, sorted((k, repr(v)) for k, v in st.items())) for idx, st in groups],
             ratios, steps, family, warmup_steps, _callable_id(loss), _callable_id(metric_fn),
             higher_is_better, train_size, batch_size]
    if grad_clip is not None:  # (absent otherwise: the keys of set-ups without it are unchanged)
        parts.append(("grad_clip", grad_clip))
    if amp is not False:  # (likewise)
        parts.append(("amp", amp))
    if accumulation_steps != 1:  # (likewise)
        parts.append(("accumulation_steps", accumulation_steps))
    return hashlib.sha1(repr(parts).encode()).hexdigest()[:10]


def _check_two_arguments(arg: str, fn: Callable, call: str) -> None:
    """Refuse ``fn`` before any step when its signature cannot take the two positional
    arguments lrkit passes (a run would otherwise fail after the range test)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # no signature to read (some builtins): let the call say
        return
    try:
        sig.bind(None, None)
    except TypeError as e:
        raise TypeError(f"{arg} is called as {call}, but its signature {sig} cannot take "
                        f"that: {e}") from None


def from_torch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_loader: Iterable,
    loss_fn: Callable | None = None,
    *,
    val_loader: Iterable,
    steps: int,
    schedule: Any = "constant",
    warmup_steps: int = 0,
    metric_fn: Callable[[nn.Module, Iterable], float] | None = None,
    higher_is_better: bool = False,
    test_loader: Iterable | None = None,
    step_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None,
    device: str | torch.device | None = None,
    grad_clip: float | None = None,
    amp: bool | str = False,
    accumulation_steps: int = 1,
    name: str = "torch",
) -> Task:
    """A :class:`Task` that trains ``model`` with ``optimizer``'s settings on ``train_loader``.

    Args:
        model: the user's model; its current weights are the starting point of every run.
        optimizer: the user's optimizer over ``model``'s parameters; its class, settings and
            group LR ratios are kept (its group-0 LR becomes the recipe's ``default_lr``). With
            an LR scheduler attached these are the LRs as it has set them (OneCycleLR's
            ``max_lr / div_factor`` before its first step), and group 0's must be > 0 (a warmup
            from 0 is refused: call ``from_torch`` before attaching it); a momentum OneCycleLR
            or CyclicLR cycles is read from ``optimizer.defaults`` (the value you set), not
            the cycle's. ``maximize=True`` is refused: lrkit minimises the loss.
        train_loader: re-iterable training batches (``(x, y)`` pairs with ``loss_fn``).
        loss_fn: ``loss_fn(model(x), y)``; or pass ``step_fn(model, batch) -> loss``.
        val_loader: held-out batches that score a run (required).
        steps: the length of the user's full training run, in optimizer steps.
        schedule: the family the user will train with (:data:`lrkit.schedules.FAMILIES`), or a
            Schedule of one over ``steps`` steps as :func:`lrkit.schedules.family` builds it
            (any peak; its warmup is read from it); the run's LR is its peak. A Schedule of
            another shape is refused: every run is a miniature of the family.
        warmup_steps: warmup length for the families that have one (or read from a Schedule).
        metric_fn: ``metric_fn(model, loader) -> float`` scoring a run (model in eval mode, no
            grad); default: the mean of ``loss_fn`` (or ``step_fn``) over the loader's batches.
            The overfitting rules of confirm and tune compare changes with the metric's own
            value, so give one whose 0 is either perfect or nothing learned (a loss, an error
            rate, accuracy); not a loss plus a constant (measured: diabetes' MSE + 10 turned
            them off on 3 of 3 seeds, test MSE 0.497 -> 0.512). Its scale and a flip of
            direction (accuracy or error rate) change nothing.
        higher_is_better: whether a larger ``metric_fn`` is better (accuracy: True).
        test_loader: batches for the ``"test"`` split; default: ``val_loader`` (then
            ``Task.test_is_val`` is set, and tune and compare report the final score as
            "val": the data the LR was chosen on, not a held-out test).
        device: where batches go; default: the model's device.
        grad_clip: the global gradient-norm clip of your training loop, if any (every run of
            the task clips as you do; it moves the LR a run tolerates).
        amp: the mixed precision of your training loop: ``True``/``"fp16"`` (float16 with a
            ``GradScaler`` on CUDA), ``"bf16"``, or ``False`` (every run of the task trains under
            it: float16 overflows at LRs that float32 survives, and it is faster on a GPU).
        accumulation_steps: the micro-batches of ``train_loader`` your loop accumulates per
            optimizer step (``loss / k``, ``backward`` k times, then ``step``): every run of the
            task, the range test's included, does the same, so the LR is found for the batch
            an update really sees; ``steps`` counts optimizer steps.
        name: the task's name (in reports and run folders).

    Returns:
        The :class:`Task`. Its ``key`` is ``"<name>@user-<fingerprint>"``: the fingerprint tells
        this set-up from another (architecture, optimizer and settings, steps, schedule, loss and
        metric functions, data size), so a tune folder, a search study or a cached oracle is
        never shared between two set-ups, and every process that builds the same set-up gets
        the same key.

    Raises:
        ValueError / TypeError: a missing or wrong argument, named.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    from ..train import check_loader, check_minimises, check_optimizer

    check_optimizer("optimizer", optimizer)
    check_minimises("optimizer", optimizer)
    check_loader("train_loader", train_loader)
    check_loader("val_loader", val_loader)
    if test_loader is not None:
        check_loader("test_loader", test_loader)
    if steps is None:
        raise ValueError("steps must be given: the length of your full training run in "
                         "optimizer steps (confirm and search scale their short runs by it)")
    steps = check_int("steps", steps, minimum=1)
    warmup_steps = check_warmup(warmup_steps, steps)
    if grad_clip is not None:
        grad_clip = check_positive("grad_clip", grad_clip)
    check_amp("amp", amp)
    accumulation_steps = check_int("accumulation_steps", accumulation_steps, minimum=1)
    if (loss_fn is None) == (step_fn is None):
        raise ValueError("pass exactly one of loss_fn (loss_fn(model(x), y)) or "
                         "step_fn(model, batch) -> loss")
    for arg, fn, call in (("loss_fn", loss_fn, "loss_fn(output, targets)"),
                          ("step_fn", step_fn, "step_fn(model, batch)"),
                          ("metric_fn", metric_fn, "metric_fn(model, loader)")):
        if fn is not None and not callable(fn):
            raise TypeError(f"{arg} must be callable, got {fn!r}")
        if fn is not None:
            _check_two_arguments(arg, fn, call)
    if not isinstance(higher_is_better, bool):
        raise TypeError(f"higher_is_better must be a bool, got {higher_is_better!r}")
    if metric_fn is None and higher_is_better:
        raise ValueError("higher_is_better=True needs metric_fn: the default metric is the "
                         "validation loss, where lower is better")
    family, scheduled_warmup = _schedule_family(schedule, steps)
    if scheduled_warmup is not None:
        if warmup_steps not in (0, scheduled_warmup):
            raise ValueError(f"warmup_steps={warmup_steps} contradicts the schedule's own warmup "
                             f"of {scheduled_warmup} steps: give one of them")
        warmup_steps = scheduled_warmup
    from ..train import check_device, model_device

    dev = check_device("device", device) if device is not None else model_device(model)

    # --- the starting point: weights to CPU once, restored in place by build_model
    build_model = _StartingPoint(model, train_loader, (val_loader, test_loader))

    # --- the optimizer: class, settings and groups (by position in model.parameters())
    index = {id(p): i for i, p in enumerate(model.parameters())}
    groups = []
    for g in optimizer.param_groups:
        missing = [p for p in g["params"] if id(p) not in index]
        if missing:
            raise ValueError("optimizer has parameters that are not model.parameters() (a "
                             "learnable loss weight in its own param group?): every run "
                             "rebuilds the optimizer over the model's parameters and starts "
                             "from the model's weights; register such a parameter on the "
                             "model (model.log_temp = nn.Parameter(...)), or build the "
                             "optimizer over this model's parameters")
        groups.append(([index[id(p)] for p in g["params"]],
                       _group_settings(g, optimizer.defaults)))
    from ..finder import _group_scales

    ratios = _group_scales(optimizer, None, "from_torch")
    lr0 = float(optimizer.param_groups[0]["lr"])
    opt_cls = type(optimizer)
    accepted = inspect.signature(opt_cls.__init__).parameters
    defaults = {k: v for k, v in optimizer.defaults.items()
                if k not in _GROUP_ONLY and k in accepted}

    def make_optimizer(params: Any, lr: float) -> torch.optim.Optimizer:
        params = list(params)
        built = [{"params": [params[i] for i in idx], **settings, "lr": lr * r}
                 for (idx, settings), r in zip(groups, ratios)]
        return opt_cls(built, lr=lr, **defaults)

    try:  # every run rebuilds the optimizer: one that cannot be rebuilt fails here, not later
        make_optimizer(model.parameters(), lr0)
    except Exception as e:
        raise TypeError(
            f"optimizer: every run rebuilds it as {opt_cls.__name__}(param_groups, lr=..., "
            f"**its defaults) and that failed ({type(e).__name__}: {e}); pass an optimizer whose "
            "constructor settings are all in its defaults, or build a lrkit.tasks.Task whose "
            "Recipe(optimizer_factory=...) makes it") from e

    from ..train import _default_step_fn

    compute = step_fn if step_fn is not None else _default_step_fn(loss_fn)

    def loss(m: nn.Module, batch: Any) -> torch.Tensor:
        return compute(m, batch)

    batches = _TrainBatches(train_loader, dev, build_model)

    def mean_loss(m: nn.Module, loader: Iterable, name: str) -> float:
        total, count = 0.0, 0
        for b in loader:
            try:
                total += float(loss(m, _move(b, dev)))
            except ValueError as e:  # a batch layout loss_fn cannot take: say which loader
                raise ValueError(f"{name}: {e}") from e
            count += 1
        if count == 0:
            raise ValueError(f"{name} yielded no batch")
        return total / count

    def evaluate(m: nn.Module, split: str) -> float:
        from ._data import check_split

        name = ("val_loader" if check_split(split) == "val" or test_loader is None
                else "test_loader")
        loader = val_loader if name == "val_loader" else test_loader
        from ..train import evaluating

        with evaluating(m):
            value = (metric_fn(m, loader) if metric_fn is not None
                     else mean_loss(m, loader, name))
        try:  # a string ("0.9") is refused too: float() would have parsed it
            return as_real("value", value)
        except TypeError:
            what = "metric_fn" if metric_fn is not None else "the mean of loss_fn / step_fn"
            raise TypeError(f"{what} must give one real number for the {split!r} split, got "
                            f"{value!r:.80}") from None

    train_size = epoch_size(train_loader)
    batch_size = loader_batch_size(train_loader, train_size)
    recipe = Recipe(optimizer=opt_cls.__name__, batch_size=int(batch_size), steps=steps,
                    default_lr=lr0, schedule=family, warmup_steps=warmup_steps,
                    grad_clip=grad_clip, optimizer_factory=make_optimizer, amp=amp,
                    accumulation_steps=accumulation_steps)
    version = "user-" + _fingerprint(model, opt_cls, groups, defaults, ratios, steps, family,
                                     warmup_steps, loss_fn or step_fn, metric_fn,
                                     higher_is_better, train_size, batch_size, grad_clip,
                                     amp, accumulation_steps)
    return Task(name=name, version=version, description=f"{type(model).__name__} with "
                f"{opt_cls.__name__} ({steps} steps"
                + (f" of {accumulation_steps} micro-batches" if accumulation_steps > 1 else "")
                + f", {family})", recipe=recipe,
                metric="metric" if metric_fn is not None else "loss",
                higher_is_better=higher_is_better, build_model=build_model, batches=batches,
                loss=loss, evaluate=evaluate, train_size=train_size,
                worst=-math.inf if higher_is_better else math.inf,
                test_is_val=test_loader is None)
