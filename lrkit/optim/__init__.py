"""Optimizers: lrkit's own (hypergradient descent) and every optimizer by name.

>>> from lrkit.optim import names
>>> "adam" in names()
True
"""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import check_choice, check_positive
from ._registry import NAMES, names

__all__ = ["names", "make_optimizer", "optimizer_class"]


def optimizer_class(name: str) -> type:
    """The optimizer class registered under ``name`` (imported on first use)."""
    check_choice("optimizer", name, names())
    path, extra = NAMES[name]
    module, _, attr = path.partition(":")
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        hint = f": pip install 'lrkit[{extra}]'" if extra else ""
        raise ImportError(f"optimizer {name!r} needs the {module!r} package{hint}") from e
    return getattr(mod, attr)


def make_optimizer(name: str, params: Any, lr: float, **kwargs: Any) -> Any:
    """``optimizer_class(name)(params, lr=lr, **kwargs)``: an optimizer by name.

    Raises:
        ValueError: unknown ``name`` (the message lists the known ones) or ``lr <= 0``.
    """
    cls = optimizer_class(name)
    return cls(params, lr=check_positive("lr", lr), **kwargs)
