"""``LightningMonitor``: feed an lrkit :class:`~lrkit.monitor.Monitor` from Lightning's ``Trainer``.

>>> trainer = lightning.pytorch.Trainer(callbacks=[LightningMonitor(val_key="val_loss")])  # doctest: +SKIP

Per optimizer step it records the training loss (the ``loss`` the ``training_step`` returned),
the LR of the first optimizer's group 0 and the global gradient norm (taken in
``on_before_optimizer_step``, i.e. after unscaling and before clipping and the step). After each
validation run it passes ``trainer.callback_metrics[val_key]`` to the monitor. ``total_steps``
defaults to ``trainer.estimated_stepping_batches``. Findings in ``stop_on`` set
``trainer.should_stop``; new findings are printed on rank zero (``verbose``).
"""

from __future__ import annotations

from typing import Any, Iterable

try:
    import lightning.pytorch as pl
except ImportError as e:  # pragma: no cover - exercised only without lightning
    raise ImportError("lrkit.integrations.lightning needs Lightning: pip install lightning "
                      "(or pip install 'lrkit[integrations]')") from e

from ..monitor import Monitor
from ._common import Record, as_float, grad_norm, make_monitor, planned_lr, stop_kinds

__all__ = ["LightningMonitor"]


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
        self._last_step = -1

    def _react(self, trainer: Any, new: list) -> None:
        for f in new:
            if self.verbose and trainer.is_global_zero:
                print(f"lrkit monitor: {f}")
            if f.kind in self.stop_on:
                trainer.should_stop = True

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.monitor.reset()
        self.record = Record()
        self._last_step = -1
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
        step = int(trainer.global_step) - 1  # optimizer steps done, 0-based index of the last
        if step <= self._last_step:
            return  # an accumulation micro-batch: no optimizer step yet
        self._last_step = step
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        value = as_float(loss)
        if value is None:
            return
        lr = self._lr if self._lr is not None else float(
            trainer.optimizers[0].param_groups[0]["lr"])
        new = self.monitor.update(step, value, lr=lr, grad_norm=self._gn)
        self.record.add(step, new)
        self._react(trainer, new)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if self.val_key is None or trainer.sanity_checking or self._last_step < 0:
            return
        value = as_float(trainer.callback_metrics.get(self.val_key))
        if value is None:
            return
        new = self.monitor.observe_val(self._last_step, value)
        self.record.raised.extend(new)
        self._react(trainer, new)
