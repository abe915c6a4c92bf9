"""Lightning and lrkit: ``LightningMonitor`` feeds an lrkit :class:`~lrkit.monitor.Monitor` from
Lightning's ``Trainer``; ``from_lightning`` turns a ``LightningModule`` and its data into the
:class:`~lrkit.tasks.Task` that ``find_lr(confirm=True)``, ``lrkit.tune`` and ``lrkit.search``
train (in place of ``Tuner(trainer).lr_find(module)``).

>>> trainer = lightning.pytorch.Trainer(callbacks=[LightningMonitor(val_key="val_loss")])  # doctest: +SKIP
>>> res = lrkit.tune(from_lightning(module, datamodule, steps=trainer_steps))  # doctest: +SKIP

Per optimizer step it records the training loss (the ``loss`` the ``training_step`` returned;
with ``accumulate_grad_batches=k``, its mean over the step's micro-batches, the last window of an
epoch as short as Lightning steps it), the LR of the first optimizer's group 0 and the global
gradient norm (taken in ``on_before_optimizer_step``, i.e. after unscaling and before clipping
and the step). After each validation run it passes ``trainer.callback_metrics[val_key]`` to the
monitor. ``total_steps`` defaults to ``trainer.estimated_stepping_batches``. Findings in
``stop_on`` set ``trainer.should_stop``; new findings are printed on rank zero (``verbose``).
"""

from __future__ import annotations

import itertools
import warnings
from typing import Any, Callable, Iterable, Mapping

from ..errors import MissingDependency

try:
    import lightning.pytorch as pl
except ImportError as e:  # pragma: no cover - exercised only without lightning
    raise MissingDependency("lrkit.integrations.lightning needs Lightning: pip install lightning "
                      "(or pip install 'lrkit[integrations]')") from e

from ..monitor import Monitor
from ._common import (Record, as_float, grad_norm, keyed_by, make_monitor, planned_lr, refuse,
                      stop_kinds)

__all__ = ["LightningMonitor", "from_lightning"]


class LightningMonitor(pl.Callback):
    """A ``lightning.pytorch.Callback`` that feeds a :class:`~lrkit.monitor.Monitor`.

    Args:
        monitor: the monitor (default: a new one with ``val_mode``); reset at train start.
        val_key: the ``callback_metrics`` key of the validation metric (None: no val metric).
        val_mode: ``"min"`` or ``"max"`` for the default monitor.
        total_steps: planned optimizer steps (default: ``trainer.estimated_stepping_batches``).
        grad_norm: compute the global gradient norm before each optimizer step.
        stop_on: finding kinds that stop training (``trainer.should_stop = True``).
        verbose: print each new finding.
    """

    def __init__(self, monitor: Monitor | None = None, *, val_key: str | None = None,
                 val_mode: str = "min", total_steps: int | None = None, grad_norm: bool = True,
                 stop_on: Iterable[str] = (), verbose: bool = True) -> None:
        super().__init__()
        self.monitor = make_monitor(monitor, val_mode)
        self._read_schedule = self.monitor.schedule is None  # else the user's, kept
        self.val_key = val_key
        self.total_steps = total_steps
        self.grad_norm = bool(grad_norm)
        self.stop_on = stop_kinds(stop_on)
        self.verbose = bool(verbose)
        self.record = Record()
        self._gn: float | None = None
        self._lr: float | None = None
        self._last_step = -1  # 0-based index of the last optimizer step seen
        self._first_step = 0  # trainer.global_step when this fit started (resumed: > 0)
        self._losses: list[float] = []  # training_step losses of the update under way

    def _react(self, trainer: Any, new: list) -> None:
        for f in new:
            if self.verbose and trainer.is_global_zero:
                print(f"lrkit monitor: {f}")
            if f.kind in self.stop_on:
                trainer.should_stop = True

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.monitor.reset()
        self.record = Record()
        self._first_step = int(trainer.global_step)
        self._last_step = self._first_step - 1
        self._losses = []
        total = self.total_steps
        if total is None:
            est = getattr(trainer, "estimated_stepping_batches", None)
            total = int(est) if est is not None and est != float("inf") else None
        self.monitor.total_steps = total
        if self._read_schedule:  # a per-step scheduler the module configured, each fit
            configs = getattr(trainer, "lr_scheduler_configs", None) or []
            step_wise = [c for c in configs if getattr(c, "interval", None) == "step"]
            self.monitor.schedule = planned_lr(step_wise[0].scheduler) if step_wise else None

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        self._lr = float(optimizer.param_groups[0]["lr"])
        self._gn = grad_norm(pl_module) if self.grad_norm else None

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        value = _step_loss(outputs, trainer.accumulate_grad_batches)
        if value is not None:
            self._losses.append(value)
        step = int(trainer.global_step) - 1  # optimizer steps done, 0-based index of the last
        if step <= self._last_step:
            return  # an accumulation micro-batch: no optimizer step yet
        self._last_step = step
        losses, self._losses = self._losses, []
        if not losses:
            return
        lr = self._lr if self._lr is not None else float(
            trainer.optimizers[0].param_groups[0]["lr"])
        new = self.monitor.update(step, sum(losses) / len(losses), lr=lr, grad_norm=self._gn)
        self.record.add(step, new)
        self._react(trainer, new)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if (self.val_key is None or trainer.sanity_checking
                or self._last_step < self._first_step):  # no step in this fit yet
            return
        value = as_float(trainer.callback_metrics.get(self.val_key))
        if value is None:
            return
        new = self.monitor.observe_val(self._last_step, value)
        self.record.raised.extend(new)
        self._react(trainer, new)


def _step_loss(outputs: Any, accumulate: int) -> float | None:
    """The loss ``training_step`` returned, from ``on_train_batch_end``'s ``outputs``: Lightning
    hands on ``loss / accumulate_grad_batches`` (its gradient is the mean over the window), so
    the division is undone. None where the step returned no loss (a skipped batch)."""
    loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
    value = as_float(loss)
    return None if value is None else value * int(accumulate)


def _one_optimizer(config: Any) -> Any:
    """The optimizer of ``configure_optimizers()``'s answer, in any of the forms Lightning
    accepts: an optimizer, a list or tuple of them, ``([optimizers], [schedulers])``, or a dict
    (or list of dicts) with ``"optimizer"``. Its LR scheduler is not used: lrkit's runs follow
    ``schedule=``."""
    import torch

    if isinstance(config, Mapping):
        config = config.get("optimizer")
    elif (isinstance(config, (list, tuple)) and len(config) == 2
          and isinstance(config[0], (list, tuple))):
        config = config[0]  # ([optimizers], [schedulers])
    found = list(config) if isinstance(config, (list, tuple)) else [config]
    found = [c.get("optimizer") if isinstance(c, Mapping) else c for c in found]
    if len(found) != 1 or not isinstance(found[0], torch.optim.Optimizer):
        what = ("nothing" if not found or found == [None]
                else ", ".join(type(c).__name__ for c in found))
        raise ValueError("module.configure_optimizers() must return one torch.optim optimizer "
                         "(alone, in a list, in ([optimizers], [schedulers]) or a dict with "
                         f"'optimizer'), got {what}: lrkit tunes the LR of one optimizer")
    return found[0]


def _only_loader(name: str, loaders: Any) -> Any:
    """A dataloader, or the single one of a list or tuple (Lightning accepts several)."""
    if isinstance(loaders, (list, tuple)):
        if len(loaders) != 1:
            raise ValueError(f"{name}: one dataloader, got {len(loaders)} (lrkit scores a run "
                             "on one validation set and trains on one stream)")
        return loaders[0]
    return loaders


def _overrides(dm: Any, hook: str) -> bool:
    return getattr(type(dm), hook, None) is not getattr(pl.LightningDataModule, hook, None)


def lightning_step_fn(module: Any) -> Callable[[Any, Any], Any]:
    """``step_fn(model, batch) -> loss`` calling ``model.training_step(batch, batch_idx)``, as
    Lightning's automatic optimisation does (``batch_idx`` counts the calls): a returned tensor,
    or the ``"loss"`` of a returned dict. ``self.log`` without a ``Trainer`` is a no-op and its
    warning is silenced; a ``training_step`` that reads ``self.trainer`` gets an error that says
    why there is none."""
    count = itertools.count()

    def step_fn(model: Any, batch: Any) -> Any:
        import torch

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*`self\.trainer` reference is not "
                                    r"registered")
            try:
                out = model.training_step(batch, next(count))
            except RuntimeError as e:
                if "not attached to a `Trainer`" not in str(e):
                    raise
                raise RuntimeError(
                    f"{type(module).__name__}.training_step reads self.trainer, but lrkit's runs "
                    "call training_step without a Trainer (as a plain PyTorch loop): compute "
                    "the loss without it, or pass from_torch(step_fn=...) your own") from e
        loss = out.get("loss") if isinstance(out, Mapping) else out
        if not isinstance(loss, torch.Tensor):
            raise TypeError(f"{type(module).__name__}.training_step must return the loss (a "
                            f"tensor, or a dict with 'loss'), got {type(out).__name__}")
        return loss

    return keyed_by(step_fn, module, "training_step")


def from_lightning(module: Any, datamodule: Any = None, *, train_dataloaders: Any = None,
                   val_dataloaders: Any = None, test_dataloaders: Any = None, steps: int,
                   schedule: Any = "constant", name: str = "lightning", **kwargs: Any) -> Any:
    """A :class:`~lrkit.tasks.Task` from a ``LightningModule`` (built on
    :func:`lrkit.tasks.from_torch`): every run starts from the module's current weights, steps
    the optimizer ``module.configure_optimizers()`` returns (class, settings and group LR ratios
    kept; its LR scheduler is replaced by ``schedule``) on ``training_step``'s loss, and is
    scored on the validation batches: by default the mean of ``training_step``'s loss over
    them (eval mode, no grad); pass ``metric_fn(model, loader)`` and ``higher_is_better`` for
    another metric (accuracy, say).

    Args:
        module: a ``lightning.pytorch.LightningModule`` with automatic optimisation and one
            optimizer; moved to a device first if it should train there.
        datamodule: a ``LightningDataModule`` (``prepare_data()`` and ``setup("fit")`` are
            called, as ``Trainer.fit`` does, then its train and val dataloaders; its test
            dataloader, after ``setup("test")``, when it defines one); or pass
        train_dataloaders, val_dataloaders, test_dataloaders: the dataloaders themselves
            (``test_dataloaders`` defaults to the validation ones).
        steps: the length of the full run you will train, in optimizer steps (the Trainer's
            ``max_steps``, or epochs x batches per epoch / ``accumulate_grad_batches``).
        schedule, name, **kwargs: as :func:`lrkit.tasks.from_torch` (``metric_fn``,
            ``higher_is_better``, ``warmup_steps``, ``grad_clip`` (the Trainer's
            ``gradient_clip_val``), ``amp``, ``accumulation_steps``, ``device``).

    Raises:
        TypeError / ValueError: a module that is not a LightningModule, manual optimisation,
            several optimizers or dataloaders, data given twice or not at all, and every error
            of ``from_torch``.
    """
    from ..tasks.torch_task import from_torch

    if not isinstance(module, pl.LightningModule):
        raise TypeError(f"module must be a lightning.pytorch.LightningModule, got "
                        f"{type(module).__name__} (a plain nn.Module goes to "
                        "lrkit.tasks.from_torch)")
    if not module.automatic_optimization:
        raise ValueError("module uses manual optimisation (automatic_optimization = False): "
                         "lrkit steps the optimizer itself; wrap your step in "
                         "from_torch(step_fn=...) instead")
    refuse("from_lightning", kwargs, ("loss_fn", "step_fn", "val_loader", "test_loader"),
           "the loss is training_step's and the data is the datamodule's or the *_dataloaders")
    if datamodule is not None:
        if train_dataloaders is not None or val_dataloaders is not None:
            raise ValueError("pass datamodule or train_dataloaders / val_dataloaders, not both")
        if not isinstance(datamodule, pl.LightningDataModule):
            raise TypeError(f"datamodule must be a lightning.pytorch.LightningDataModule, got "
                            f"{type(datamodule).__name__}")
        datamodule.prepare_data()
        datamodule.setup("fit")
        train_dataloaders = datamodule.train_dataloader()
        if _overrides(datamodule, "val_dataloader"):
            val_dataloaders = datamodule.val_dataloader()
        if test_dataloaders is None and _overrides(datamodule, "test_dataloader"):
            datamodule.setup("test")
            test_dataloaders = datamodule.test_dataloader()
    if train_dataloaders is None:
        raise ValueError("from_lightning needs data: datamodule=, or train_dataloaders= and "
                         "val_dataloaders=")
    if val_dataloaders is None:
        raise ValueError("from_lightning needs validation data to score its runs: a datamodule "
                         "with val_dataloader(), or val_dataloaders=")
    optimizer = _one_optimizer(module.configure_optimizers())
    return from_torch(module, optimizer, _only_loader("train_dataloaders", train_dataloaders),
                      val_loader=_only_loader("val_dataloaders", val_dataloaders),
                      test_loader=(None if test_dataloaders is None
                                   else _only_loader("test_dataloaders", test_dataloaders)),
                      steps=steps, schedule=schedule, step_fn=lightning_step_fn(module),
                      name=name, **kwargs)
