"""lrkit's exceptions and argument checks (stdlib only).

Every public argument is checked where it enters ("check at the door"): a bad value raises
``ValueError`` (or ``TypeError`` for a wrong type) whose message names the argument, the value
and what was expected. No silent clamps.
"""

from __future__ import annotations

import difflib
import importlib
import math
import numbers
from typing import Any, Iterable

__all__ = [
    "LRKitError",
    "DivergedError",
    "MissingDependency",
    "check_choice",
    "check_finite",
    "check_group_lrs",
    "check_int",
    "check_positive",
    "check_probability",
    "check_range",
    "closest",
    "require",
]


class LRKitError(Exception):
    """Base class of lrkit's own runtime errors (not argument errors: those are ValueError)."""


class DivergedError(LRKitError):
    """Training diverged where the caller asked for it to be an error."""


class MissingDependency(LRKitError, ImportError):
    """An optional package a feature needs is not installed (the message says which extra of
    lrkit installs it). An ``ImportError`` too, so ``except ImportError`` still catches it."""


def require(module: str, *, package: str, extra: str, needed_by: str) -> Any:
    """``importlib.import_module(module)``, or :class:`MissingDependency` naming what needs it
    (``needed_by``), the pip ``package`` and the lrkit ``extra`` that installs it. Only a
    missing ``module`` (or a parent of it) is turned into that error: a package that is there
    but fails inside its own imports raises its own error."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        missing = e.name or ""
        if not (module == missing or module.startswith(missing + ".")):
            raise
        raise MissingDependency(f"{needed_by} needs {package!r}, which is not installed: "
                                f"pip install 'lrkit[{extra}]' (or pip install {package})"
                                ) from e


def _is_real(value: Any) -> bool:
    """A Python or NumPy real number (``np.float32(3e-4)`` as well: a schedule's LR from a
    config array was refused as "not a real number"), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def as_real(name: str, value: Any) -> float:
    """``float(value)`` for a number, a NumPy scalar or a one-element tensor or array (NaN and
    inf included); a bool, a string such as "0.5" (a log read without parsing) or anything else
    is a TypeError naming ``name``."""
    if not isinstance(value, (str, bytes, bool)):
        size = getattr(value, "size", None)  # NumPy: an attribute; PyTorch: a method
        one = (value.numel() if callable(getattr(value, "numel", None))
               else size if isinstance(size, int) else None) == 1
        try:
            # .item() for a one-element array of any shape (NumPy 2 refuses float() on [4.0])
            return float(value.item() if one and hasattr(value, "item") else value)
        except (TypeError, ValueError, RuntimeError):
            pass
    raise TypeError(f"{name} must be a real number (or a one-element tensor), got {value!r}")


def check_finite(name: str, value: Any) -> float:
    """Return ``float(value)`` if it is a finite real number, else raise naming ``name``."""
    if not _is_real(value):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def check_positive(name: str, value: Any, *, allow_zero: bool = False) -> float:
    """Return ``float(value)`` if finite and > 0 (or >= 0 with ``allow_zero``)."""
    v = check_finite(name, value)
    if v < 0 or (v == 0 and not allow_zero):
        expected = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return v


def check_range(
    name: str,
    value: Any,
    low: float,
    high: float,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Return ``float(value)`` if it lies in the interval; the message shows the interval."""
    v = check_finite(name, value)
    ok_low = v > low if low_open else v >= low
    ok_high = v < high if high_open else v <= high
    if not (ok_low and ok_high):
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
    return v


def check_probability(name: str, value: Any) -> float:
    """A value in the open interval (0, 1)."""
    return check_range(name, value, 0.0, 1.0, low_open=True, high_open=True)


def check_int(name: str, value: Any, *, minimum: int | None = None) -> int:
    """Return ``value`` if it is an ``int`` (not bool) and >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        # numpy integers are accepted through __index__
        try:
            if isinstance(value, bool) or isinstance(value, float):
                raise TypeError
            value = value.__index__()
        except (AttributeError, TypeError):
            raise TypeError(
                f"{name} must be an integer, got {value!r} ({type(value).__name__})"
            ) from None
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_warmup(warmup_steps: Any, steps: int) -> int:
    """Return ``warmup_steps`` if it is an int >= 0 and below ``steps`` (a warmup is part of
    the run: one as long as it leaves no step at the peak, and clamping it would hand back a
    schedule of another shape than the one asked for)."""
    w = check_int("warmup_steps", warmup_steps, minimum=0)
    if w and w >= steps:
        raise ValueError(f"warmup_steps must be < steps ({steps}), got {w}: a warmup as long as "
                         "the run leaves no step at the peak")
    return w


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The closest spelling among ``choices`` (for "did you mean" hints), or None. difflib's
    own cutoff, 0.6: at 0.4 an unrelated word got a hint ("nope" -> "logreg")."""
    hits = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return hits[0] if hits else None


def check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``choices``; else say which, with a close match."""
    options = list(choices)
    if value in options:
        return value
    hint = closest(str(value), options)
    did_you_mean = f"; did you mean {hint!r}?" if hint else ""
    raise ValueError(f"{name} must be one of {options}, got {value!r}{did_you_mean}")


def check_amp(name: str, value: Any) -> bool | str:
    """Return ``value`` if it is a mixed-precision setting (``False``, ``True``, ``"fp16"``,
    ``"bf16"``); else say what is expected."""
    if value is False or value is True or value in ("fp16", "bf16"):
        return value
    raise ValueError(f"{name} must be False, True (float16 on CUDA, bfloat16 on CPU), 'fp16' or "
                     f"'bf16', got {value!r}")


def check_group_lrs(optimizer: Any) -> list[float]:
    """The param groups' LR ratios ``lr_i / lr_0`` of a ``torch.optim`` optimizer (lrkit scales
    every group by its ratio and records group 0's LR), after checking that they can be kept:
    finite, non-negative, group 0's positive, and some parameter that trains."""
    lrs = []
    for g in optimizer.param_groups:
        try:  # a float, or a one-element tensor (PyTorch accepts a tensor LR)
            lrs.append(float(g.get("lr")))
        except (TypeError, ValueError, RuntimeError):
            lrs.append(math.nan)
    if not all(math.isfinite(v) and v >= 0 for v in lrs) or not lrs[0] > 0:
        hint = ("; a group held at LR 0 (frozen) may follow the first one: put a group that "
                "trains first" if lrs[0] == 0 and any(v > 0 for v in lrs) else "")
        raise ValueError("optimizer: its param-group LRs must be finite and >= 0, and group "
                         "0's > 0 (every group keeps its ratio lr_i / lr_0 to the LR lrkit "
                         f"sets, which is group 0's), got {lrs}{hint}")
    if not any(getattr(p, "requires_grad", False) for g in optimizer.param_groups
               for p in g["params"]):
        raise ValueError("optimizer: none of its parameters requires grad (every one is "
                         "frozen): there is nothing to train")
    return [v / lrs[0] for v in lrs]
