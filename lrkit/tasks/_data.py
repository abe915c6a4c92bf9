"""Shared helpers of the built-in tasks: cache directory, splits, batches, seeded models, scoring."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from .base import Recipe, Task

SPLITS = ("val", "test")


def sklearn_datasets(task: str):
    """``sklearn.datasets``, where the built-in ``task``'s data ships (a clear error naming the
    ``tasks`` extra when scikit-learn is not installed)."""
    from ..errors import require

    return require("sklearn.datasets", package="scikit-learn", extra="tasks",
                   needed_by=f"the built-in task {task!r}")


def cache_root() -> Path:
    """Where lrkit caches what it generates or measures: ``$LRKIT_CACHE`` (when not empty),
    else ``$XDG_CACHE_HOME/lrkit``, else ``~/.cache/lrkit``."""
    root = os.environ.get("LRKIT_CACHE")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = os.path.join(xdg, "lrkit") if xdg else os.path.join(Path.home(), ".cache", "lrkit")
    return Path(root)


def cache_dir() -> Path:
    """:func:`cache_root`, made on first use where it can be (a read-only one is not an error:
    what would be cached is computed again; its mkdir raised PermissionError)."""
    path = cache_root()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        pass
    return path


def check_split(split: str) -> str:
    """``split`` must be ``"val"`` or ``"test"``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    return split


def split_indices(n: int, *, test: int, val: int, seed: int = 0
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A fixed random partition of ``range(n)`` into (train, val, test) index arrays.

    ``val`` is carved from what is left after ``test``, so the three never overlap.
    """
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[test + val:]), np.sort(perm[test:test + val]), np.sort(perm[:test])


def shuffled_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int
                     ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Infinite ``(x, y)`` mini-batches: a fresh permutation each epoch from a generator seeded
    with ``seed`` (the last incomplete batch of an epoch is dropped, so every batch has
    ``batch_size`` examples). ``batch_size >= len(x)`` gives the whole set every step."""
    n = len(x)
    if batch_size >= n:
        while True:
            yield x, y
    g = torch.Generator().manual_seed(int(seed))
    while True:
        perm = torch.randperm(n, generator=g)
        for i in range(0, n - batch_size + 1, batch_size):
            idx = perm[i:i + batch_size]
            yield x[idx], y[idx]


def seeded(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    """``build()`` under ``torch.manual_seed(seed)``, leaving the global RNG state untouched."""
    from ..errors import check_int

    check_int("seed", seed, minimum=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    from ..train import evaluating  # lazily: the tasks load before the training loop

    with evaluating(model):
        yield


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


Splits = Callable[[], "dict[str, tuple[torch.Tensor, torch.Tensor]]"]


def standardised(x: torch.Tensor, train: np.ndarray) -> torch.Tensor:
    """``x`` standardised per column with the ``train`` rows' mean and population std, as
    float32 (the held-out rows never inform the scaling)."""
    x = x.to(torch.float64)
    mean, std = x[train].mean(0), x[train].std(0, unbiased=False)
    return ((x - mean) / std).float()


def train_batches(load: Splits, batch_size: int) -> Callable[[int], Iterator]:
    """``batches(seed)`` of a task whose ``load()["train"]`` is ``(x, y)``: shuffled mini-batches."""
    def batches(seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        x, y = load()["train"]
        return shuffled_batches(x, y, batch_size, seed)
    return batches


def split_evaluator(load: Splits, metric: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
                    ) -> Callable[[nn.Module, str], float]:
    """``evaluate(model, split)``: ``metric(model(x), y)`` on ``load()[split]`` (``"val"`` or
    ``"test"``), in eval mode without grad, on the model's device, scored in float32 on CPU."""
    def evaluate(model: nn.Module, split: str) -> float:
        x, y = load()[check_split(split)]
        with _eval_mode(model):
            return float(metric(model(x.to(_device(model))).float().cpu(), y))
    return evaluate


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, chunk: int = 1024) -> float:
    """Fraction of ``argmax model(x) == y``, computed in chunks, in eval mode and without grad."""
    dev = _device(model)
    correct = 0
    with _eval_mode(model):
        for i in range(0, len(x), chunk):
            out = model(x[i:i + chunk].to(dev))
            correct += int((out.argmax(-1).cpu() == y[i:i + chunk]).sum())
    return correct / len(x)


def next_token_cross_entropy(model: nn.Module, batch: tuple) -> torch.Tensor:
    """Mean cross-entropy of a sequence model's logits ``(B, T, V)`` against the next tokens
    ``y`` ``(B, T)``, over every position."""
    x, y = batch[0], batch[1]
    logits = model(x)
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def cross_entropy(model: nn.Module, batch: tuple) -> torch.Tensor:
    """Mean cross-entropy of ``model(x)`` against integer labels ``y``."""
    x, y = batch[0], batch[1]
    return nn.functional.cross_entropy(model(x), y)


def classification_task(
    *,
    name: str,
    version: str,
    description: str,
    recipe: "Recipe",
    data: Callable[[], dict[str, tuple[torch.Tensor, torch.Tensor]]],
    model: Callable[[], nn.Module],
    classes: int,
    scored_by: str = "accuracy",
) -> "Task":
    """A Task for ``model`` on ``data()["train" | "val" | "test"]``, trained on cross-entropy and
    scored by ``scored_by``: ``"accuracy"`` (higher is better; a diverged run scores chance,
    ``1 / classes``) or ``"cross_entropy"`` (the held-out log-loss in nats, lower is better; a
    diverged run scores ``inf``).

    ``data`` should be cached by the caller: the task reads it for every batch stream and
    evaluation (and once when built, for ``train_size``).
    """
    from ..errors import check_choice
    from .base import Task

    check_choice("scored_by", scored_by, ("accuracy", "cross_entropy"))
    if scored_by == "accuracy":
        def evaluate(m: nn.Module, split: str) -> float:
            x, y = data()[check_split(split)]
            return accuracy(m, x, y)
        higher, worst = True, 1.0 / classes
    else:
        evaluate = split_evaluator(data, nn.functional.cross_entropy)
        higher, worst = False, float("inf")
    return Task(
        name=name, version=version, description=description, recipe=recipe,
        metric=scored_by, higher_is_better=higher,
        build_model=lambda seed: seeded(model, seed),
        batches=train_batches(data, recipe.batch_size), loss=cross_entropy,
        evaluate=evaluate, train_size=len(data()["train"][0]), worst=worst,
    )
