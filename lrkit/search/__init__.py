"""Learning-rate search on Optuna: grid, random, coarse-to-fine, Bayesian, cross-validated.

:func:`search` runs one worker of a study (SQLite file by default, PostgreSQL for many
machines); :class:`SearchResult` is what it returns; :func:`show` reads a study back;
:func:`bench_choice` is the fixed-budget ``auto`` search used by ``lrkit bench methods``.
See ``docs/search.md``.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from ._bench import bench_choice
from ._cli import add_cli_arguments, cli_main
from ._core import METHODS, PRUNERS, Pruned, SearchOptions, search
from ._folds import fold_batches, fold_task
from ._result import SearchResult, TrialRecord
from ._show import show, studies
from ._storage import default_url, mask_url, open_storage

__all__ = [
    "search",
    "SearchResult",
    "TrialRecord",
    "SearchOptions",
    "Pruned",
    "METHODS",
    "PRUNERS",
    "show",
    "studies",
    "open_storage",
    "mask_url",
    "default_url",
    "fold_task",
    "fold_batches",
    "bench_choice",
    "add_cli_arguments",
    "cli_main",
]


class _CallableModule(types.ModuleType):
    """``lrkit.search`` is both this package and the function: importing the package sets the
    attribute ``lrkit.search`` to the module, so the module itself calls :func:`search`."""

    def __call__(self, *args: Any, **kwargs: Any) -> SearchResult:
        return search(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
