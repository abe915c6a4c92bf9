"""``HFMonitor``: feed an lrkit :class:`~lrkit.monitor.Monitor` from Hugging Face's ``Trainer``.

>>> Trainer(model, args, callbacks=[HFMonitor(val_key="eval_loss")])  # doctest: +SKIP

The ``Trainer`` reports the training loss to callbacks only through ``on_log``, averaged over
``args.logging_steps`` optimizer steps; set ``logging_steps=1`` for a per-step monitor (the
adapter feeds one update per log, at step ``state.global_step - 1``, with the logged
``learning_rate`` and ``grad_norm``). Without a logged ``grad_norm`` it computes the global
gradient norm in ``on_pre_optimizer_step``. Evaluation metrics arrive through ``on_evaluate``
(``val_key``, e.g. ``"eval_loss"``). ``total_steps`` is ``state.max_steps``, and the
monitor's ``schedule`` the Trainer's own LR scheduler (:func:`._common.planned_lr`), so a
plateau before its decay is not advised a decay. Findings in ``stop_on`` set
``control.should_training_stop``.
"""

from __future__ import annotations

from typing import Any, Iterable

try:
    from transformers import TrainerCallback
except ImportError as e:  # pragma: no cover - exercised only without transformers
    raise ImportError("lrkit.integrations.hf needs Hugging Face transformers: pip install "
                      "transformers accelerate (or pip install 'lrkit[integrations]')") from e

from ..monitor import Monitor
from ._common import Record, as_float, grad_norm, make_monitor, planned_lr, stop_kinds

__all__ = ["HFMonitor"]


class HFMonitor(TrainerCallback):
    """A ``transformers.TrainerCallback`` that feeds a :class:`~lrkit.monitor.Monitor`.

    Args:
        monitor: the monitor (default: a new one with ``val_mode``); reset at train start.
        val_key: the ``on_evaluate`` metric to watch (e.g. ``"eval_loss"``); None: none.
        val_mode: ``"min"`` or ``"max"`` for the default monitor.
        stop_on: finding kinds that stop training.
        verbose: print each new finding.

    ``steps_seen`` counts ``on_step_end`` calls (every optimizer step); ``record.steps`` lists
    the steps fed to the monitor (every logged step).
    """

    def __init__(self, monitor: Monitor | None = None, *, val_key: str | None = None,
                 val_mode: str = "min", stop_on: Iterable[str] = (), verbose: bool = True) -> None:
        self.monitor = make_monitor(monitor, val_mode)
        self._read_schedule = self.monitor.schedule is None  # else the user's, kept
        self.val_key = val_key
        self.stop_on = stop_kinds(stop_on)
        self.verbose = bool(verbose)
        self.record = Record()
        self.steps_seen = 0
        self._gn: float | None = None
        self._last_step = -1

    def _react(self, control: Any, new: list) -> None:
        for f in new:
            if self.verbose:
                print(f"lrkit monitor: {f}")
            if f.kind in self.stop_on:
                control.should_training_stop = True

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.monitor.reset()
        self.monitor.total_steps = int(state.max_steps) if state.max_steps else None
        if self._read_schedule:  # the Trainer's own (linear decay by default), each train
            self.monitor.schedule = planned_lr(kwargs.get("lr_scheduler"))
        self.record = Record()
        self.steps_seen = 0
        self._last_step = -1

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        model = kwargs.get("model")
        self._gn = grad_norm(model) if model is not None else None

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.steps_seen += 1

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None,
               **kwargs: Any) -> None:
        logs = logs or {}
        loss = as_float(logs.get("loss"))
        step = int(state.global_step) - 1
        if loss is None or step <= self._last_step:
            return
        self._last_step = step
        gn = as_float(logs.get("grad_norm"))
        new = self.monitor.update(step, loss, lr=as_float(logs.get("learning_rate")),
                                  grad_norm=gn if gn is not None else self._gn)
        self.record.add(step, new)
        self._react(control, new)

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict | None = None,
                    **kwargs: Any) -> None:
        if self.val_key is None or not metrics or self._last_step < 0:
            return
        value = as_float(metrics.get(self.val_key))
        if value is None:
            return
        new = self.monitor.observe_val(self._last_step, value)
        self.record.raised.extend(new)
        self._react(control, new)
