"""``digits-noisy``: an MLP on handwritten digits whose labels are 40% wrong (SGD + momentum).

Data: ``sklearn.datasets.load_digits`` (1,797 8x8 images, ships inside scikit-learn; no download),
pixels scaled to [0, 1], the ``digits`` task's fixed split (1,293 train, 144 val, 360 test). Each
training and validation label is replaced, with probability ``NOISE`` (0.4), by a class drawn
uniformly at random (symmetric label noise, as in Arpit et al. 2017, *A Closer Look at
Memorization in Deep Networks*; fixed draws). The test labels are the true ones: the metric is
what the model learned of the digits, not of the noise (on noisy test labels the accuracy would be
``0.6 x clean + 0.04``, the same ranking with more noise). Model: 64 -> 256 -> ReLU -> 256 -> ReLU
-> 10. Recipe: SGD, momentum 0.9, batch 32, constant LR, ``STEPS`` optimizer steps (~15 epochs).
Metric: test accuracy, higher is better.

Why the LR is set by generalisation: the network learns the clean pattern first and memorises the
wrong labels later (Arpit et al.); how far it gets into memorisation within the run depends on the
LR. A short run at any LR ends before memorisation starts, so it favours LRs well above the full
run's best; the validation split, noisy too, shows the memorisation only in a long run. The class
of data where the labels, not the amount of data, limit what can be learned.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from . import digits
from ._data import classification_task
from .base import Recipe, Task

STEPS = 600
NOISE = 0.4


@functools.lru_cache(maxsize=1)
def load() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The fixed split, train and val labels noised (fixed draws), test labels true."""
    x, y, (tr, va, te) = digits.images()
    g = torch.Generator().manual_seed(2)
    flip = torch.rand(len(y), generator=g) < NOISE
    noisy = torch.where(flip, torch.randint(0, 10, (len(y),), generator=g), y)
    return {"train": (x[tr], noisy[tr]), "val": (x[va], noisy[va]), "test": (x[te], y[te])}


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                         nn.Linear(256, 10))


def make_task(steps: int = STEPS, *, name: str = "digits-noisy") -> Task:
    """The ``digits-noisy`` task."""
    recipe = Recipe(optimizer="sgd", batch_size=32, steps=steps, default_lr=0.1,
                    optimizer_kwargs={"momentum": 0.9}, schedule="constant")
    return classification_task(
        name=name, version="1",
        description=f"MLP 64-256-256-10 on sklearn digits with 40% of the train/val labels "
                    f"random, SGD momentum 0.9, {steps} steps; clean test accuracy",
        recipe=recipe, data=load, model=_model, classes=10)
