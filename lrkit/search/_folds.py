"""k-fold cross-validation of a Task: the fold protocol and a generic fallback.

**The protocol** (a small extension of :class:`lrkit.tasks.Task`): a task that can be
cross-validated on its own terms has a method ``with_fold(k, i) -> Task`` returning the task
trained on every fold but ``i`` whose ``evaluate(model, "val")`` scores fold ``i`` with the
task's own metric (``"test"`` stays the untouched test split). Subclass the frozen ``Task``
dataclass and add the method; :func:`fold_task` calls it.

**The fallback** for any other task: the first epoch of ``task.batches(0)`` (exactly one epoch:
:func:`epoch_batches`, at least ``k`` batches) is dealt into ``k`` folds batch by batch (batch
``j`` goes to fold ``j mod k``); fold ``i``'s task trains on the other folds' batches
(reshuffled each epoch from the run's seed) and its ``evaluate(model, "val")`` is the task's
*training loss* averaged over fold ``i``'s batches, so the metric is a loss (lower is better)
whatever the task's metric is.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterator

from ..errors import check_int

__all__ = ["fold_task", "fold_batches"]


def epoch_batches(task: Any, arg: str) -> int:
    """The batches in one epoch of ``task.batches(seed)``: its own ``epoch_batches`` when it
    has one (a :func:`lrkit.tasks.from_torch` task: ``len(train_loader)``, ``drop_last``
    included), else ``ceil(train_size / batch_size)``. Folds and subsets that took more
    would hold batches of a second epoch: the held-out fold's examples trained on by the
    other folds. A task that says neither is refused, naming ``arg`` (what asked)."""
    n = getattr(task.batches, "epoch_batches", None)
    if isinstance(n, int) and not isinstance(n, bool) and n > 0:
        return n
    size = int(getattr(task, "train_size", 0) or 0)
    if size > 0:
        return max(1, math.ceil(size / max(1, task.recipe.batch_size)))
    raise ValueError(
        f"{arg} needs the number of batches in one epoch of the training data of task "
        f"{task.name!r}, which does not say it (its train_size is 0 and its batches have no "
        "length: a DataLoader over an IterableDataset, a stream): pass a train_loader with a "
        "length (a DataLoader over a map-style dataset, a list of batches), or a Task with its "
        "train_size")


def fold_batches(task: Any, k: int) -> list[list[Any]]:
    """The generic fallback's folds: the first epoch's batches dealt into ``k`` lists."""
    k = check_int("cv_folds", k, minimum=2)
    n = epoch_batches(task, f"cv_folds={k}")
    if n < k:
        raise ValueError(f"cv_folds={k} needs at least {k} batches in one epoch of the "
                         f"training data of task {task.name!r}, which has {n}: pass cv_folds "
                         f"<= {n} or a smaller batch")
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
