"""k-fold cross-validation of a Task: the fold protocol and a generic fallback.

**The protocol** (a small extension of :class:`lrkit.tasks.Task`): a task that can be
cross-validated on its own terms has a method ``with_fold(k, i) -> Task`` returning the task
trained on every fold but ``i`` whose ``evaluate(model, "val")`` scores fold ``i`` with the
task's own metric (``"test"`` stays the untouched test split). Subclass the frozen ``Task``
dataclass and add the method; :func:`fold_task` calls it.

**The fallback** for any other task: the first epoch of ``task.batches(0)`` (``train_size /
batch_size`` batches, at least ``k``) is dealt into ``k`` folds batch by batch (batch ``j`` goes
to fold ``j mod k``); fold ``i``'s task trains on the other folds' batches (reshuffled each epoch
from the run's seed) and its ``evaluate(model, "val")`` is the task's *training loss* averaged over
fold ``i``'s batches, so the metric is a loss (lower is better) whatever the task's metric is.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterator

from ..errors import check_int

__all__ = ["fold_task", "fold_batches"]


def fold_batches(task: Any, k: int) -> list[list[Any]]:
    """The generic fallback's folds: the first epoch's batches dealt into ``k`` lists."""
    k = check_int("cv_folds", k, minimum=2)
    bs = max(1, task.recipe.batch_size)
    n = max(k, math.ceil(task.train_size / bs)) if task.train_size else max(k, 50)
    it = task.batches(0)
    batches = [next(it) for _ in range(n)]
    return [batches[i::k] for i in range(k)]


def _shuffled_cycle(batches: list[Any], seed: int) -> Iterator[Any]:
    import torch

    g = torch.Generator().manual_seed(int(seed))
    while True:
        for j in torch.randperm(len(batches), generator=g).tolist():
            yield batches[j]


def fold_task(task: Any, k: int, i: int, *, folds: list[list[Any]] | None = None) -> Any:
    """Task ``task`` restricted to training on every fold but ``i`` and validated on fold ``i``.

    Uses ``task.with_fold(k, i)`` when the task has it (the fold protocol), else the generic
    fallback (see the module docstring; pass ``folds=fold_batches(task, k)`` to share the
    split between the ``k`` fold tasks).
    """
    k = check_int("cv_folds", k, minimum=2)
    i = check_int("fold", i, minimum=0)
    if i >= k:
        raise ValueError(f"fold must be in [0, {k - 1}], got {i}")
    own = getattr(task, "with_fold", None)
    if callable(own):
        out = own(k, i)
        from ..tasks import Task

        if not isinstance(out, Task):
            raise TypeError(f"{task.name}.with_fold({k}, {i}) must return a Task, got "
                            f"{type(out).__name__}")
        return out
    parts = folds if folds is not None else fold_batches(task, k)
    held = parts[i]
    train = [b for j, p in enumerate(parts) if j != i for b in p]
    loss = task.loss
    evaluate_test = task.evaluate

    def evaluate(model: Any, split: str) -> float:
        if split == "test":
            return evaluate_test(model, split)
        if split != "val":
            raise ValueError(f"split must be 'val' or 'test', got {split!r}")
        import torch

        with torch.no_grad():
            return float(sum(float(loss(model, b)) for b in held) / len(held))

    return dataclasses.replace(
        task, name=f"{task.name}-fold{i}of{k}", batches=lambda seed: _shuffled_cycle(train, seed),
        evaluate=evaluate, metric="loss", higher_is_better=False,
        worst=math.inf, train_size=len(train) * task.recipe.batch_size)
