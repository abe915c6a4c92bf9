"""Optimizers: lrkit's own (hypergradient descent) and every optimizer by name.

- :class:`SGDHD` and :class:`AdamHD`: the LR adapts itself by hypergradient descent
  (Baydin et al., ICLR 2018); see :mod:`lrkit.optim.hd` and ``docs/adaptive.md``.
- :func:`make_optimizer` builds any registered optimizer by name: PyTorch's (``sgd``, ``adam``,
  ``adamw``, ``rmsprop``, ``adagrad``, ``adadelta``), lrkit's (``sgdhd``, ``adamhd``) and the
  LR-free peers (``prodigy``, ``dadapt``/``dadapt_adam``/``dadapt_sgd``,
  ``schedulefree``/``schedulefree_adamw``/``schedulefree_sgd``; the ``peers`` extra).

>>> from lrkit.optim import names, default_lr
>>> "adam" in names(), default_lr("sgdhd")
(True, 0.1)
"""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import MissingDependency, check_choice, check_positive
from ._registry import DEFAULT_LR, LR_FREE, NAMES, SCHEDULE_FREE, names

__all__ = ["names", "make_optimizer", "optimizer_class", "default_lr", "is_lr_free",
           "is_schedule_free", "SGDHD", "AdamHD"]


def optimizer_class(name: str) -> type:
    """The optimizer class registered under ``name`` (imported on first use)."""
    check_choice("optimizer", name, names())
    path, extra = NAMES[name]
    module, _, attr = path.partition(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        hint = f": pip install 'lrkit[{extra}]'" if extra else ""
        raise MissingDependency(f"optimizer {name!r} needs the {module!r} package{hint}") from e
    return getattr(mod, attr)


def make_optimizer(name: str, params: Any, lr: float, **kwargs: Any) -> Any:
    """``optimizer_class(name)(params, lr=lr, **kwargs)``: an optimizer by name.

    Raises:
        ValueError: unknown ``name`` (the message lists the known ones) or ``lr <= 0``.
    """
    cls = optimizer_class(name)
    return cls(params, lr=check_positive("lr", lr), **kwargs)


def default_lr(name: str) -> float:
    """The textbook default LR of optimizer ``name`` (the multiplier 1.0 for LR-free ones)."""
    check_choice("optimizer", name, names())
    return DEFAULT_LR[name]


def is_lr_free(name: str) -> bool:
    """Whether ``name``'s ``lr`` multiplies a step size it estimates (Prodigy, D-Adaptation)."""
    return check_choice("optimizer", name, names()) in LR_FREE


def is_schedule_free(name: str) -> bool:
    """Whether ``name`` is a schedule-free optimizer (run it at a constant LR)."""
    return check_choice("optimizer", name, names()) in SCHEDULE_FREE


def __getattr__(attr: str) -> Any:  # SGDHD / AdamHD import torch: load them on first use
    if attr in ("SGDHD", "AdamHD"):
        from . import hd

        return getattr(hd, attr)
    raise AttributeError(f"module 'lrkit.optim' has no attribute {attr!r}")
