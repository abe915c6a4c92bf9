"""``digits-small``: an over-parameterised MLP on 300 handwritten digits (Adam), scored by test loss.

Data: ``sklearn.datasets.load_digits`` (1,797 8x8 images, ships inside scikit-learn; no download),
pixels scaled to [0, 1]. Fixed split: 500 test, 100 val (from the rest), and the first 300 of the
remaining 1,197 images (in a fixed random order) as the training set; the other 897 images are not
used. Model: 64 -> 256 -> ReLU -> 256 -> ReLU -> 10 (~85,000 weights for 300 examples).
Recipe: Adam (betas 0.9, 0.999, no weight decay), batch 32, constant LR, ``STEPS`` optimizer steps
(about 42 epochs). Metric: mean cross-entropy (nats) on the held-out split, lower is better
(``worst = inf`` for a diverged run).

Why the LR is set by generalisation: the network memorises its 300 examples within the run at any
LR from ~3e-4 up; past that, a larger LR drives the training loss further towards zero and grows
the logits, so the held-out cross-entropy *rises* while the training loss still falls. The best LR
for the test loss is therefore the one that has just fitted the training set, well below where the
training-loss range test points (the held-out accuracy is flat over a decade there: the loss, not
the accuracy, is what the LR decides).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn

from ._data import classification_task, split_indices
from .base import Recipe, Task

STEPS = 400
TRAIN, VAL, TEST = 300, 100, 500


@functools.lru_cache(maxsize=1)
def load() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The fixed (train, val, test) split as float32 (n, 64) / int64 (n,) tensors."""
    from ._data import sklearn_datasets

    d = sklearn_datasets("digits-small").load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    rest, va, te = split_indices(len(x), test=TEST, val=VAL, seed=0)
    tr = np.sort(np.random.default_rng(1).permutation(rest)[:TRAIN])
    return {"train": (x[tr], y[tr]), "val": (x[va], y[va]), "test": (x[te], y[te])}


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                         nn.Linear(256, 10))


def make_task(steps: int = STEPS, *, name: str = "digits-small") -> Task:
    """The ``digits-small`` task."""
    recipe = Recipe(optimizer="adam", batch_size=32, steps=steps, default_lr=1e-3,
                    optimizer_kwargs={}, schedule="constant")
    return classification_task(
        name=name, version="1",
        description=f"MLP 64-256-256-10 on 300 sklearn digits, Adam, {steps} steps; "
                    f"test cross-entropy",
        recipe=recipe, data=load, model=_model, classes=10, scored_by="cross_entropy")
