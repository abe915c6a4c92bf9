"""``diabetes``: a small-data regression whose best LR is set by generalisation (SGD + momentum).

Data: ``sklearn.datasets.load_diabetes`` (442 patients x 10 baseline variables, ships inside
scikit-learn; no download); the target is disease progression one year later (Efron et al. 2004,
"Least angle regression"). Fixed split: 110 test, 66 val (from the rest), 266 train.
Features and target are standardised with the *training* split's mean and standard deviation
(population std), so a model that always predicts the training mean scores an MSE close to 1.

Model: 10 -> 64 -> ReLU -> 64 -> ReLU -> 1. Recipe: SGD, momentum 0.9, batch 32, constant LR,
``STEPS`` optimizer steps (about 72 epochs of the 266 training examples).
Metric: mean squared error on the standardised target of the held-out split, lower is better
(``worst = inf`` for a diverged run). The training loss is the same MSE on the mini-batch.

Why the LR is set by generalisation: 266 examples and ~5,000 weights let the MLP interpolate the
training set. Within the run the training MSE keeps falling as the LR grows (up to the edge of
stability), while the test MSE is lowest for the LR at which the run has fitted the signal but not
yet the noise (an LR that acts as early stopping, cf. Yao, Rosasco & Caponnetto 2007); that LR
sits far below where the training-loss range test points.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from ._data import seeded, split_evaluator, split_indices, standardised, train_batches
from .base import Recipe, Task

STEPS = 600
TEST, VAL = 110, 66


@functools.lru_cache(maxsize=1)
def load() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The fixed (train, val, test) split as float32 tensors ``x`` (n, 10) and ``y`` (n, 1),
    standardised with the training split's statistics."""
    from ._data import sklearn_datasets

    d = sklearn_datasets("diabetes").load_diabetes()
    tr, va, te = split_indices(len(d.target), test=TEST, val=VAL, seed=0)
    xs = standardised(torch.tensor(d.data), tr)
    ys = standardised(torch.tensor(d.target).unsqueeze(1), tr)
    return {"train": (xs[tr], ys[tr]), "val": (xs[va], ys[va]), "test": (xs[te], ys[te])}


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                         nn.Linear(64, 1))


def mse(model: nn.Module, batch: tuple) -> torch.Tensor:
    """Mean squared error of ``model(x)`` against the standardised target ``y``."""
    x, y = batch[0], batch[1]
    return nn.functional.mse_loss(model(x), y)


def make_task(steps: int = STEPS, *, name: str = "diabetes") -> Task:
    """The ``diabetes`` task."""
    recipe = Recipe(optimizer="sgd", batch_size=32, steps=steps, default_lr=0.1,
                    optimizer_kwargs={"momentum": 0.9}, schedule="constant")
    return Task(
        name=name, version="1",
        description=f"MLP 10-64-64-1 on sklearn diabetes (266 train), SGD momentum 0.9, "
                    f"{steps} steps; test MSE of the standardised target",
        recipe=recipe, metric="mse", higher_is_better=False,
        build_model=lambda seed: seeded(_model, seed),
        batches=train_batches(load, recipe.batch_size), loss=mse,
        evaluate=split_evaluator(load, nn.functional.mse_loss),
        train_size=len(load()["train"][0]), worst=float("inf"))
