"""The Task protocol: a model, its data, its metric and a fixed recipe in which only the LR varies.

A ``Task`` is the unit of work for everything in lrkit that trains for its own purposes (range
test on a task, search, benchmarks, autopilot). It is a frozen record of plain callables so a user
can build one from a function (``lrkit.tasks.load("mypkg.mymod:make_task")``).

Contract (checked by ``tests/test_tasks.py`` for every built-in task):

- ``build_model(seed)`` returns a fresh ``nn.Module`` whose initial weights depend only on ``seed``.
- ``batches(seed)`` returns an *infinite* iterator of training batches (tuples of tensors), the same
  sequence for the same seed.
- ``loss(model, batch)`` returns the scalar training loss of one batch.
- ``evaluate(model, split)`` returns the metric on held-out data: ``split="val"`` is carved from the
  training data (for lrkit's own choices, e.g. the range test's ``confirm`` mode), ``split="test"``
  is never seen by any method (the oracle and the benchmark tables score on it).
- ``recipe`` fixes the optimizer family and its non-LR settings, batch size, number of steps and
  default schedule family; ``recipe.make_optimizer(params, lr)`` and ``recipe.make_schedule(lr)``
  build them, so ``lr`` is the only knob (the *peak* LR when the recipe's schedule has a warmup).
- optional ``with_fold(k, i) -> Task``: the task trained on every fold but ``i``, whose
  ``evaluate(model, "val")`` scores fold ``i`` (used by ``lrkit.search(cv_folds=k)``; without it,
  search deals the first epoch's batches into folds and scores the held-out training loss).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

from ..errors import (as_real, check_amp, check_choice, check_int, check_positive,
                      check_warmup)
from ..optim._registry import names as _optimizer_names
from ..schedules import FAMILIES as RECIPE_SCHEDULES

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from ..schedules import Schedule

__all__ = ["Recipe", "Task", "OPTIMIZERS", "RECIPE_SCHEDULES", "file_name"]


def file_name(text: str, limit: int = 100) -> str:
    """``text`` (a task's name or key) as one file-name component: characters other than
    letters, digits and ``-_.@`` become ``_``, cut to ``limit`` UTF-8 bytes. A user's task
    name went into paths as it was: "a/b c:é" made ``compare`` and ``bench oracle`` fail after
    all their runs, "../x" wrote the oracle cache outside it, 245 characters were "File name
    too long" for tune's run folder."""
    safe = "".join(c if c.isalnum() or c in "-_.@" else "_" for c in str(text)) or "task"
    data = safe.encode("utf-8")[:limit]
    return data.decode("utf-8", "ignore") or "task"


#: optimizer names a Recipe accepts (see :mod:`lrkit.optim`)
OPTIMIZERS = _optimizer_names()


@dataclass(frozen=True)
class Recipe:
    """The fixed training recipe of a task; only the learning rate varies.

    Args:
        optimizer: a name from :func:`lrkit.optim.names` (``"sgd"``, ``"adam"``, ``"adamw"``,
            ...), or any label when ``optimizer_factory`` is given.
        optimizer_kwargs: the optimizer's non-LR settings (momentum, weight_decay, betas...).
        batch_size: examples per optimizer step.
        steps: optimizer steps of one full training run.
        default_lr: the "textbook default" LR for this optimizer family (the naive baseline).
        schedule: the recipe's schedule family (:data:`lrkit.schedules.FAMILIES`); ``lr`` is
            its peak value (:func:`lrkit.schedules.family` builds it).
        warmup_steps: linear warmup length (see :func:`lrkit.schedules.family`).
        grad_clip: clip the global gradient norm to this value before every step
            (``torch.nn.utils.clip_grad_norm_``), or ``None``. Clipping bounds the step, so it
            moves the LR a run tolerates: the range test, confirm and tune clip as the recipe
            does.
        optimizer_factory: ``factory(params, lr) -> Optimizer`` replacing the named optimizer
            (``lrkit.tasks.from_torch`` uses it to rebuild a user's own optimizer).
        amp: mixed precision of every run (``False``, ``True``/``"fp16"``, ``"bf16"``; see
            :func:`lrkit.train.fit`): the range test, confirm, search and tune train under it
            as the user's loop does (float16 overflows at LRs float32 survives).
        accumulation_steps: micro-batches of ``batch_size`` per optimizer step, their losses
            averaged (a loop that calls ``backward`` k times before ``step``): every run of
            the task, the range test's included, steps on ``batch_size x accumulation_steps``
            examples as the user's loop does (the best LR moves with the batch an update sees).
            ``steps`` and every cost stay counted in optimizer steps.
    """

    optimizer: str
    batch_size: int
    steps: int
    default_lr: float
    optimizer_kwargs: Mapping[str, Any] = field(default_factory=dict)
    schedule: str = "constant"
    warmup_steps: int = 0
    grad_clip: float | None = None
    optimizer_factory: Callable[[Any, float], Any] | None = field(default=None, compare=False)
    amp: bool | str = False
    accumulation_steps: int = 1

    def __post_init__(self) -> None:
        if self.optimizer_factory is None:
            check_choice("optimizer", self.optimizer, OPTIMIZERS)
        elif not callable(self.optimizer_factory):
            raise TypeError(f"optimizer_factory must be callable(params, lr) -> Optimizer, got "
                            f"{self.optimizer_factory!r}")
        elif not isinstance(self.optimizer, str) or not self.optimizer:
            raise ValueError(f"optimizer must be a non-empty label, got {self.optimizer!r}")
        check_choice("schedule", self.schedule, RECIPE_SCHEDULES)
        check_int("batch_size", self.batch_size, minimum=1)
        check_int("steps", self.steps, minimum=1)
        check_warmup(self.warmup_steps, self.steps)
        check_positive("default_lr", self.default_lr)
        if self.grad_clip is not None:
            object.__setattr__(self, "grad_clip", check_positive("grad_clip", self.grad_clip))
        check_amp("amp", self.amp)
        check_int("accumulation_steps", self.accumulation_steps, minimum=1)
        object.__setattr__(self, "optimizer_kwargs", dict(self.optimizer_kwargs))

    def make_optimizer(self, params: Any, lr: float) -> "torch.optim.Optimizer":
        """The recipe's optimizer over ``params`` at learning rate ``lr``."""
        check_positive("lr", lr)
        if self.optimizer_factory is not None:
            return self.optimizer_factory(params, lr)
        from ..optim import make_optimizer

        return make_optimizer(self.optimizer, params, lr, **self.optimizer_kwargs)

    def warmup_for(self, steps: int) -> int:
        """The recipe's warmup scaled to a run of ``steps`` (a miniature of the full run keeps
        the warmup's share of it): ``round(warmup x steps / self.steps)``, at least 1 when the
        recipe has one, at most ``steps - 1``."""
        n = check_int("steps", steps, minimum=1)
        if self.warmup_steps <= 0:
            return 0
        return int(min(n - 1, max(1, round(self.warmup_steps * n / self.steps))))

    def make_schedule(self, lr: float, steps: int | None = None) -> "Schedule":
        """The recipe's schedule with peak ``lr`` over ``steps`` (default: ``self.steps``), its
        warmup scaled to that length (:meth:`warmup_for`): confirm's and search's short runs are
        miniatures of the full run, as tune's rungs are. (Until the twentieth round a short run
        kept the full run's warmup in steps, 30 of a 50-step charlm run; on seven held-out
        sets scaling it moved 21 confirm picks, 12 better and 7 worse:
        ``benchmarks/RESULTS.md``.)"""
        from .. import schedules

        check_positive("lr", lr)
        n = self.steps if steps is None else check_int("steps", steps, minimum=1)
        return schedules.family(self.schedule, lr, n, warmup_steps=self.warmup_for(n))


@dataclass(frozen=True)
class Task:
    """A built-in or user task (see the module docstring for the contract)."""

    name: str
    version: str
    description: str
    recipe: Recipe
    metric: str
    higher_is_better: bool
    build_model: Callable[[int], "torch.nn.Module"]
    batches: Callable[[int], Iterator[tuple]]
    loss: Callable[["torch.nn.Module", tuple], "torch.Tensor"]
    evaluate: Callable[["torch.nn.Module", str], float]
    #: examples in the training split (for "epochs" and range-test budget advice)
    train_size: int = 0
    #: exact smoothness constant L of the training objective, for convex tasks (safe LR = 2/L)
    smoothness: float | None = None
    #: value to score a diverged run with (e.g. chance accuracy, or +inf for a loss)
    worst: float = float("nan")
    #: ``evaluate(model, "test")`` scores the validation data (``from_torch`` without a
    #: ``test_loader``): reports then call that score "val", not a held-out "test"
    test_is_val: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.recipe, Recipe):
            raise TypeError(f"recipe must be a lrkit.tasks.Recipe, got {type(self.recipe).__name__}")
        for attr in ("build_model", "batches", "loss", "evaluate"):
            if not callable(getattr(self, attr)):
                raise TypeError(f"{attr} must be callable, got {getattr(self, attr)!r}")
        if not isinstance(self.test_is_val, bool):  # ("no" would read as True)
            raise TypeError(f"test_is_val must be a bool, got {self.test_is_val!r}")

    @property
    def test_label(self) -> str:
        """What the ``"test"`` split is called in reports: ``"val"`` when it is the validation
        data the LR was chosen on (:attr:`test_is_val`), else ``"test"``."""
        return "val" if self.test_is_val else "test"

    @property
    def key(self) -> str:
        """``name@version``: the cache key of anything measured on this task."""
        return f"{self.name}@{self.version}"

    def with_steps(self, steps: int, *, name: str | None = None) -> "Task":
        """The same task with a different horizon (a longer- or shorter-budget variant)."""
        check_int("steps", steps, minimum=1)
        recipe = dataclasses.replace(self.recipe, steps=steps)
        return dataclasses.replace(self, recipe=recipe, name=name or f"{self.name}-{steps}")

    def score(self, model: "torch.nn.Module", split: str) -> float:
        """``evaluate(model, split)`` as a float: a NumPy scalar or a one-element tensor counts,
        text ("0.9", which ``float()`` would parse) or many values are a TypeError naming the
        call. The caller sets the model's mode (see :func:`lrkit.train.evaluating`)."""
        return as_real(f"task.evaluate(model, {split!r})'s value", self.evaluate(model, split))

    def better(self, a: float, b: float) -> bool:
        """Whether metric ``a`` is strictly better than ``b`` (NaN is never better)."""
        if a != a:
            return False
        if b != b:
            return True
        return a > b if self.higher_is_better else a < b
