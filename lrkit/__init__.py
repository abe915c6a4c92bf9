"""lrkit: which learning rate, and which schedule?

Let the autopilot pick the LR and the schedule (:func:`tune`), find a good learning rate fast
(:func:`find_lr`), search for it on Optuna (:func:`search`), schedule it (:mod:`lrkit.schedules`,
applied to PyTorch by :class:`lrkit.torch.LRSchedule`), adapt it online (:mod:`lrkit.optim`),
bound it by the curvature (:mod:`lrkit.curvature`), watch training (:class:`Monitor`), and
measure every choice against an exhaustive grid (:mod:`lrkit.bench`). Heavy parts (torch, matplotlib, task data) are imported lazily, so
``import lrkit.schedules`` needs no torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "find_lr": ("lrkit.finder", "find_lr"),
    "RangeTestResult": ("lrkit.finder", "RangeTestResult"),
    "Suggestion": ("lrkit.suggest", "Suggestion"),
    "LRSchedule": ("lrkit.torch", "LRSchedule"),
    "Plateau": ("lrkit.torch", "Plateau"),
    "HorizonWarning": ("lrkit.torch", "HorizonWarning"),
    "run": ("lrkit.train", "run"),
    "fit": ("lrkit.train", "fit"),
    "Callback": ("lrkit.train", "Callback"),
    "Task": ("lrkit.tasks.base", "Task"),
    "Recipe": ("lrkit.tasks.base", "Recipe"),
    "from_torch": ("lrkit.tasks.torch_task", "from_torch"),
    "SearchResult": ("lrkit.search", "SearchResult"),
    "TuneResult": ("lrkit.tune", "TuneResult"),
    "Monitor": ("lrkit.monitor", "Monitor"),
    "Finding": ("lrkit.monitor", "Finding"),
    "MonitorCallback": ("lrkit.callbacks", "MonitorCallback"),
    "safe_lr": ("lrkit.curvature", "safe_lr"),
    "top_eigenvalue": ("lrkit.curvature", "top_eigenvalue"),
    "scale_lr": ("lrkit.curvature", "scale_lr"),
    "stability_test": ("lrkit.curvature", "stability_test"),
    "SharpnessTracker": ("lrkit.curvature", "SharpnessTracker"),
    "SGDHD": ("lrkit.optim", "SGDHD"),
    "AdamHD": ("lrkit.optim", "AdamHD"),
}
#: ``lrkit.search(...)`` and ``lrkit.tune(...)`` are callable modules (the module and its main
#: function share the name)
_SUBMODULES = ("schedules", "tasks", "train", "finder", "suggest", "bench", "errors", "torch",
               "search", "tune", "monitor", "callbacks", "curvature", "optim", "compare",
               "integrations")

__all__ = sorted(_LAZY) + list(_SUBMODULES) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"lrkit.{name}")
    raise AttributeError(f"module 'lrkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
