"""Hugging Face and lrkit: ``HFMonitor`` feeds an lrkit :class:`~lrkit.monitor.Monitor` from
Hugging Face's ``Trainer``; ``from_hf`` turns a ``Trainer`` (model, arguments, datasets, loss)
into the :class:`~lrkit.tasks.Task` that ``find_lr(confirm=True)``, ``lrkit.tune`` and
``lrkit.search`` train.

>>> Trainer(model, args, callbacks=[HFMonitor(val_key="eval_loss")])  # doctest: +SKIP
>>> res = lrkit.tune(from_hf(trainer), schedules=("linear",))  # doctest: +SKIP
>>> trainer.args.learning_rate = res.lr  # doctest: +SKIP

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

import math
from typing import Any, Callable, Iterable

from ..errors import MissingDependency

try:
    from transformers import TrainerCallback
except ImportError as e:  # pragma: no cover - exercised only without transformers
    raise MissingDependency("lrkit.integrations.hf needs Hugging Face transformers: pip install "
                      "transformers accelerate (or pip install 'lrkit[integrations]')") from e

from ..errors import check_int
from ..monitor import Monitor
from ._common import (Record, as_float, grad_norm, keyed_by, make_monitor, planned_lr, refuse,
                      stop_kinds)

__all__ = ["HFMonitor", "from_hf", "hf_schedule"]


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


#: ``TrainingArguments.lr_scheduler_type`` -> lrkit's family (its warmup from the arguments;
#: ``constant`` has none: ``get_scheduler`` ignores the warmup for it)
HF_FAMILIES = {"linear": "linear", "cosine": "cosine", "constant": "constant",
               "constant_with_warmup": "constant", "warmup_stable_decay": "wsd"}

#: what of each type lrkit's family reproduces, for the refusal's message
_HF_REPRODUCED = {
    "linear": "no lr_scheduler_kwargs",
    "cosine": "num_cycles=0.5 (the default) and no other lr_scheduler_kwargs",
    "warmup_stable_decay": ("num_decay_steps=max(1, steps // 5) = {decay}, decay_type='1-sqrt', "
                            "min_lr_ratio=0, warmup_type='linear' and no num_stable_steps other "
                            "than steps - warmup - decay (lrkit's wsd family, Hägele et al.)"),
}


def hf_lr_factors(kind: str, steps: int, warmup: int, kwargs: Any) -> list[float]:
    """The Trainer's LR at steps ``0 .. steps - 1`` as a multiple of ``args.learning_rate``:
    transformers' own ``get_scheduler(kind, ...)`` (what ``Trainer.create_scheduler`` calls),
    on a one-parameter SGD at LR 1.

    Raises:
        ValueError: ``kwargs`` do not build a scheduler of ``kind`` (the Trainer would fail
            too), or it is not a ``LambdaLR`` (its LR is not a function of the step).
    """
    import warnings

    import torch
    from transformers import get_scheduler

    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. wsd's "num_stable_steps will be used"
            sched = get_scheduler(kind, optimizer=opt, num_warmup_steps=warmup,
                                  num_training_steps=steps, scheduler_specific_kwargs=kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"trainer.args.lr_scheduler_kwargs {kwargs!r} do not build a {kind!r} "
                         f"scheduler (the Trainer would fail too): {e}") from e
    lr_at = planned_lr(sched)
    if lr_at is None:  # pragma: no cover - every type in HF_FAMILIES builds a LambdaLR
        raise ValueError(f"lr_scheduler_type {kind!r} is not a function of the step")
    return [lr_at(t) for t in range(steps)]


def _first_mismatch(hf: list[float], family: str, steps: int, warmup: int) -> int | None:
    """The first step at which lrkit's ``family`` (peak 1) differs from ``hf``, else None."""
    from .. import schedules

    ours = schedules.family(family, 1.0, steps, warmup_steps=warmup)
    for t, want in enumerate(hf):
        if not math.isclose(float(ours(t)), want, rel_tol=1e-9, abs_tol=1e-12):
            return t
    return None


def hf_schedule(args: Any, steps: int) -> tuple[str, int]:
    """``(family, warmup_steps)`` of lrkit's schedule that *is* the Trainer's over ``steps``
    steps: the family of ``args.lr_scheduler_type`` with ``args.get_warmup_steps(steps)`` (none
    for ``constant``, as ``get_scheduler`` builds it), checked step by step against
    transformers' own scheduler (:func:`hf_lr_factors`) built with ``lr_scheduler_kwargs``.

    Raises:
        ValueError: a type lrkit has no family for, or kwargs (``num_cycles=1.0`` for cosine,
            a WSD decay other than lrkit's) that give another schedule: the message names the
            first step that differs and what lrkit reproduces.
    """
    kind = getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)
    if kind not in HF_FAMILIES:
        raise ValueError(f"trainer.args.lr_scheduler_type {kind!r} has no lrkit family "
                         f"(lrkit knows {sorted(HF_FAMILIES)}): pass schedule= the family "
                         "nearest to it")
    kwargs = args.lr_scheduler_kwargs or {}  # a JSON string is a dict after __post_init__
    warmup = 0 if kind == "constant" else int(args.get_warmup_steps(steps))
    family = HF_FAMILIES[kind]
    if family == "cosine" and warmup > 0:
        family = "warmup_cosine"
    hf = hf_lr_factors(kind, steps, warmup, kwargs)
    t = _first_mismatch(hf, family, steps, warmup)
    if t is None:
        return family, warmup
    from .. import schedules

    ours = float(schedules.family(family, 1.0, steps, warmup_steps=warmup)(t))
    what = _HF_REPRODUCED.get(kind, "its defaults").format(decay=max(1, steps // 5))
    raise ValueError(
        f"trainer.args.lr_scheduler_type {kind!r} with lr_scheduler_kwargs={kwargs!r} "
        f"({warmup} warmup steps of {steps}) is a schedule lrkit does not reproduce: at step "
        f"{t} the Trainer's LR is {hf[t]:.6g} x learning_rate, lrkit's {family!r} family's "
        f"{ours:.6g} x. lrkit reproduces {kind!r} with {what}; change the arguments, or pass "
        "schedule= the lrkit family to choose the LR for (the Trainer still trains its own)")


def hf_step_fn(trainer: Any) -> Callable[[Any, Any], Any]:
    """``step_fn(model, batch) -> loss``: the Trainer's own ``compute_loss`` on the batch as
    its ``_prepare_inputs`` readies it (a custom ``compute_loss`` of a Trainer subclass is
    used as it is)."""

    def step_fn(model: Any, batch: Any) -> Any:
        return trainer.compute_loss(model, trainer._prepare_inputs(batch))

    return keyed_by(step_fn, trainer, "compute_loss")


def from_hf(trainer: Any, *, steps: int | None = None, test_dataset: Any = None,
            schedule: Any = None, name: str = "hf", **kwargs: Any) -> Any:
    """A :class:`~lrkit.tasks.Task` from a Hugging Face ``Trainer`` (built on
    :func:`lrkit.tasks.from_torch`), so that ``lrkit.tune(from_hf(trainer))`` picks the LR
    (then ``trainer.args.learning_rate = res.lr`` and ``trainer.train()``). Every run starts from
    ``trainer.model``'s current weights and trains as the Trainer would: its optimizer
    (``create_optimizer()``: the class, settings and weight-decay groups; ``trainer.optimizer``
    is left as it was, so a later ``train()`` builds its own at the new LR), its loss
    (``compute_loss``), its train and eval dataloaders, and from ``trainer.args`` the gradient
    accumulation, the gradient clipping (``max_grad_norm``), fp16/bf16, the run's length and
    the schedule (:func:`hf_schedule`): ``lr_scheduler_type`` linear, cosine, constant (no
    warmup, as the Trainer ignores it there), constant_with_warmup or warmup_stable_decay,
    with its warmup and ``lr_scheduler_kwargs``, only where lrkit's family gives the Trainer's
    LR at every step (checked against transformers' own scheduler; cosine with
    ``num_cycles=0.5``, WSD with lrkit's decay: ``num_decay_steps=max(1, steps // 5)``,
    ``decay_type="1-sqrt"``); any other is refused, never trained as something else.
    Runs are scored by the mean
    ``compute_loss`` over the eval dataloader (eval mode, no grad), or by ``metric_fn(model,
    loader)`` with ``higher_is_better``.

    Args:
        trainer: a ``transformers.Trainer`` with an ``eval_dataset``.
        steps: the full run's optimizer steps (default: ``args.max_steps``, else the epochs'
            ``ceil(epochs x batches per epoch / accumulation)``, as the Trainer counts them).
        test_dataset: a dataset for the task's ``"test"`` split (default: the eval one).
        schedule: an lrkit family or Schedule to use instead of ``lr_scheduler_type``.
        name, **kwargs: as :func:`lrkit.tasks.from_torch` (``metric_fn``,
            ``higher_is_better``, ``device``).

    Raises:
        TypeError / ValueError: not a Trainer, no eval dataset, a scheduler type or
            ``lr_scheduler_kwargs`` lrkit does not reproduce (pass ``schedule=``), and every
            error of ``from_torch``.
    """
    from transformers import Trainer

    from ..tasks.torch_task import from_torch

    if not isinstance(trainer, Trainer):
        raise TypeError(f"trainer must be a transformers.Trainer, got {type(trainer).__name__}")
    refuse("from_hf", kwargs, ("loss_fn", "step_fn", "val_loader", "test_loader", "grad_clip",
                               "amp", "accumulation_steps", "warmup_steps"),
           "it is read from the Trainer and its TrainingArguments")
    if trainer.eval_dataset is None:
        raise ValueError("from_hf needs the Trainer's eval_dataset: lrkit scores its runs on it")
    if isinstance(trainer.eval_dataset, dict):
        raise ValueError(f"trainer.eval_dataset holds {len(trainer.eval_dataset)} datasets "
                         f"({sorted(trainer.eval_dataset)}): lrkit scores its runs on one; "
                         "set trainer.eval_dataset to the one to choose the LR by")
    args = trainer.args
    train_loader = trainer.get_train_dataloader()
    accumulation = int(args.gradient_accumulation_steps)
    if steps is not None:
        steps = check_int("steps", steps, minimum=1)
    elif args.max_steps and args.max_steps > 0:
        steps = int(args.max_steps)
    else:
        per_epoch = max(1, len(train_loader) // accumulation)
        steps = math.ceil(float(args.num_train_epochs) * per_epoch)
    warmup = 0
    if schedule is None:
        schedule, warmup = hf_schedule(args, steps)
    had = trainer.optimizer
    zero = [i for i, g in enumerate(had.param_groups) if g["lr"] == 0] if had is not None else []
    if zero:  # (from_torch's message told an HF user to call from_torch earlier)
        raise ValueError(
            f"from_hf: trainer.optimizer has lr 0 in param group {zero[0]}, as its LR scheduler "
            "left it (after trainer.train() a linear or cosine schedule ends at 0): call "
            "from_hf before trainer.train(), or set trainer.optimizer = None and "
            "trainer.lr_scheduler = None so that from_hf builds the Trainer's optimizer anew "
            "at args.learning_rate")
    optimizer = had if had is not None else trainer.create_optimizer()
    trainer.optimizer = had  # a later train() builds its own, at args.learning_rate
    amp: bool | str = "bf16" if args.bf16 else bool(args.fp16)
    return from_torch(trainer.model, optimizer, train_loader,
                      val_loader=trainer.get_eval_dataloader(),
                      test_loader=(None if test_dataset is None
                                   else trainer.get_test_dataloader(test_dataset)),
                      steps=steps, schedule=schedule, warmup_steps=warmup,
                      step_fn=hf_step_fn(trainer),
                      grad_clip=(float(args.max_grad_norm) if args.max_grad_norm
                                 and args.max_grad_norm > 0 else None),
                      amp=amp, accumulation_steps=accumulation, name=name, **kwargs)
