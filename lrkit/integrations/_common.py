"""What both adapters share: the monitor they feed, the per-step bookkeeping, and how their
``from_*`` tasks name the loss they train on."""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

from ..errors import check_choice
from ..monitor import KINDS, Finding, Monitor


def keyed_by(step_fn: Callable, owner: Any, method: str) -> Callable:
    """Name ``step_fn`` after ``type(owner).method`` (its class and a digest of its code), so
    that the task ``from_torch`` builds around it is keyed by the loss it trains on (its
    fingerprint names the ``step_fn``): a ``training_step`` or ``compute_loss`` that changes
    gives another task key, the same one in another process the same key."""
    from ..tasks.torch_task import _callable_id

    cls = type(owner)
    step_fn.__qualname__ = (f"{method} of {cls.__qualname__} "
                            f"[{_callable_id(getattr(cls, method, None))}]")
    return step_fn


def refuse(caller: str, kwargs: dict, names: Iterable[str], source: str) -> None:
    """A ``from_torch`` keyword that ``caller`` reads from the client itself is a TypeError
    that says where it comes from (a ``loss_fn`` passed to ``from_hf`` would be ignored)."""
    for name in names:
        if name in kwargs:
            raise TypeError(f"{caller}() takes no {name}: {source}")


def make_monitor(monitor: Monitor | None, val_mode: str) -> Monitor:
    if monitor is None:
        return Monitor(val_mode=val_mode)
    if not isinstance(monitor, Monitor):
        raise TypeError(f"monitor must be a lrkit.monitor.Monitor, got {type(monitor).__name__}")
    return monitor


def planned_lr(scheduler: Any) -> Callable[[int], float] | None:
    """Group 0's LR at optimizer step ``s`` as the client's scheduler will set it, for the
    monitor's ``schedule`` (a plateau before a decay the schedule already holds is not advised a
    decay): a ``LambdaLR`` (what Hugging Face's ``get_scheduler`` builds: linear, cosine, ... with
    warmup) is ``base_lr x lr_lambda(s)``; an lrkit ``LRSchedule`` is its schedule. ``None`` for
    any other scheduler: a chainable one's future is not a function of the step."""
    import torch

    if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        base, factor = float(scheduler.base_lrs[0]), scheduler.lr_lambdas[0]
        return lambda s: base * float(factor(s))
    from ..torch import LRSchedule

    if isinstance(scheduler, LRSchedule):
        return scheduler.schedule
    return None


def stop_kinds(stop_on: Iterable[str]) -> frozenset[str]:
    return frozenset(check_choice("stop_on[]", k, KINDS) for k in stop_on)


def grad_norm(model: Any) -> float:
    """The model's global gradient norm (:func:`lrkit.train.global_grad_norm`; 0.0 if none)."""
    from ..train import global_grad_norm

    return global_grad_norm(model.parameters())


def as_float(x: Any) -> float | None:
    if x is None:
        return None
    try:
        v = float(x.detach().cpu()) if hasattr(x, "detach") else float(x)
    except (TypeError, ValueError):
        return None
    return v


class Record:
    """Findings the adapter saw raised (``new``) and the steps it fed (``steps``)."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.raised: list[Finding] = []

    def add(self, step: int, new: list[Finding]) -> None:
        self.steps.append(step)
        self.raised.extend(new)


def finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)
