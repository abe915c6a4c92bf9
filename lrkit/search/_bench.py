"""``search-auto`` for ``lrkit bench methods``: lrkit's search at a fixed budget."""

from __future__ import annotations

from typing import Any

__all__ = ["bench_choice", "BENCH_RUNS"]

#: full training runs the fixed budget allows after the range test
BENCH_RUNS = 3


def bench_choice(task: Any, seed: int) -> tuple[float, int]:
    """The ``auto`` search's best LR on ``task`` (a Task or name) and the optimizer steps it
    spent: a range test plus :data:`BENCH_RUNS` full runs scored on the task's ``"val"`` split,
    in memory (nothing written to disk).

    Returns:
        ``(lr, cost_steps)``; ``lr`` is the recipe's default when no trial completed.
    """
    from .. import tasks
    from ._core import search

    t = tasks.get(task) if isinstance(task, str) else task
    from ._core import _range_test

    rt = _range_test(t, seed=seed)
    cost = int(rt.cost_steps or len(rt.lrs))
    res = search(t, method="auto", budget=cost + BENCH_RUNS * t.recipe.steps, storage="memory",
                 seed=seed, progress=False, range_test=rt, study_name=f"bench-{t.name}-{seed}")
    lr = res.best_lr if res.best_lr is not None else t.recipe.default_lr
    return float(lr), int(res.cost_steps)
