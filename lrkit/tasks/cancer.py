"""``cancer-small``: a small-data binary classifier (Adam) scored by its held-out log-loss.

Data: ``sklearn.datasets.load_breast_cancer`` (569 tumours x 30 features of cell nuclei, ships
inside scikit-learn; no download; Street, Wolberg & Mangasarian 1993). Fixed split: 319 test,
100 val, 150 train. Features are standardised with the *training* split's mean and standard
deviation (population std).

Model: 30 -> 128 -> ReLU -> 128 -> ReLU -> 2 (~20,000 weights for 150 examples). Recipe: Adam
(betas 0.9, 0.999, no weight decay), batch 16, constant LR, ``STEPS`` optimizer steps (about 43
epochs). Metric: mean cross-entropy (nats) on the held-out split, lower is better (``worst = inf``
for a diverged run).

Why it is here: a third task whose best LR is set by generalisation (with diabetes and
digits-small), added *after* confirm mode's collapse rule was fitted on the other nine, so that it
checks the rule on a task the rule never saw. The network separates its 150 training examples
early; past that point a larger LR grows the logits and the held-out log-loss rises while the
training loss still falls.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from ._data import classification_task, split_indices, standardised
from .base import Recipe, Task

STEPS = 400
TEST, VAL = 319, 100


@functools.lru_cache(maxsize=1)
def load() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The fixed (train, val, test) split: float32 ``x`` (n, 30), int64 ``y`` (n,), the features
    standardised with the training split's statistics."""
    from ._data import sklearn_datasets

    d = sklearn_datasets("cancer-small").load_breast_cancer()
    y = torch.tensor(d.target, dtype=torch.int64)
    tr, va, te = split_indices(len(y), test=TEST, val=VAL, seed=0)
    xs = standardised(torch.tensor(d.data), tr)
    return {"train": (xs[tr], y[tr]), "val": (xs[va], y[va]), "test": (xs[te], y[te])}


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(30, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                         nn.Linear(128, 2))


def make_task(steps: int = STEPS, *, name: str = "cancer-small") -> Task:
    """The ``cancer-small`` task."""
    recipe = Recipe(optimizer="adam", batch_size=16, steps=steps, default_lr=1e-3,
                    optimizer_kwargs={}, schedule="constant")
    return classification_task(
        name=name, version="1",
        description=f"MLP 30-128-128-2 on 150 sklearn breast-cancer tumours, Adam, {steps} "
                    f"steps; test cross-entropy",
        recipe=recipe, data=load, model=_model, classes=2, scored_by="cross_entropy")
