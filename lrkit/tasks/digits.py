"""``digits`` / ``digits-long``: an MLP on scikit-learn's 8x8 handwritten digits (SGD + momentum).

Data: ``sklearn.datasets.load_digits`` (1,797 images, ships inside scikit-learn; no download).
Fixed split: 360 test, 144 val (from the rest), 1,293 train. Pixels scaled to [0, 1].
Model: 64 -> 128 -> ReLU -> 10. Recipe: SGD, momentum 0.9, batch 32, constant LR.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from ._data import classification_task, split_indices
from .base import Recipe, Task

STEPS = 300
LONG_FACTOR = 8


@functools.lru_cache(maxsize=1)
def images() -> tuple[torch.Tensor, torch.Tensor, tuple]:
    """All 1,797 images (float32, pixels in [0, 1]) and labels (int64), and the fixed
    ``(train, val, test)`` index split (``digits-noisy`` draws its noise over the same order)."""
    from ._data import sklearn_datasets

    d = sklearn_datasets("digits").load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    return x, y, split_indices(len(x), test=360, val=144, seed=0)


@functools.lru_cache(maxsize=1)
def load() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The fixed (train, val, test) split of scikit-learn's digits as float32 / int64 tensors."""
    x, y, (tr, va, te) = images()
    return {"train": (x[tr], y[tr]), "val": (x[va], y[va]), "test": (x[te], y[te])}


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def make_task(steps: int = STEPS, *, name: str = "digits") -> Task:
    """The ``digits`` task (``steps`` optimizer steps of batch 32, ~7 epochs at the default)."""
    recipe = Recipe(optimizer="sgd", batch_size=32, steps=steps, default_lr=0.1,
                    optimizer_kwargs={"momentum": 0.9}, schedule="constant")
    return classification_task(
        name=name, version="1",
        description=f"MLP 64-128-10 on sklearn digits (8x8), SGD momentum 0.9, {steps} steps",
        recipe=recipe, data=load, model=_model, classes=10)


def make_long_task() -> Task:
    """``digits-long``: the same data, model and recipe with 8x the steps (a longer horizon)."""
    return make_task(STEPS * LONG_FACTOR, name="digits-long")
