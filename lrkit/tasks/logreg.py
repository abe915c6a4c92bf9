"""``logreg``: convex L2-regularised logistic regression on breast cancer, full-batch gradient descent.

Data: ``sklearn.datasets.load_breast_cancer`` (569 samples x 30 features, ships inside
scikit-learn), features standardised (zero mean, unit variance). All 569 samples are the training
set: this is an *optimisation* task, and its metric is the final training objective

    f(w, b) = (1/n) sum_i log(1 + exp(-s_i (w.x_i + b))) + (reg / 2) (|w|^2 + b^2),   s_i = +-1,

lower is better (the L2 term keeps the optimum well above 0). ``evaluate(model, split)`` accepts
``"val"`` and ``"test"`` and scores this same objective for both: there is no held-out data.

Smoothness: with X~ = [X, 1], the Hessian is X~^T D X~ / n + reg I with D = diag(s'(z_i)) <= 1/4 I,
and s'(0) = 1/4, so the smallest L with f L-smooth is exactly

    L = lambda_max(X~^T X~) / (4 n) + reg      (attained at w = b = 0),

stored in ``Task.smoothness``. Gradient descent with lr < 2/L decreases f at every step (descent
lemma, Nesterov 2004, Thm 2.1.14); the recipe is plain GD: SGD without momentum, batch = all data.
"""

from __future__ import annotations

import functools
from typing import Iterator

import torch
from torch import nn
from torch.nn import functional as F

from ._data import check_split, seeded
from .base import Recipe, Task

STEPS = 100
REG = 0.1


@functools.lru_cache(maxsize=1)
def load() -> tuple[torch.Tensor, torch.Tensor]:
    """Standardised features (float64, n x 30) and labels in {0., 1.} (float64)."""
    from ._data import sklearn_datasets

    d = sklearn_datasets("logreg").load_breast_cancer()
    x = torch.tensor(d.data, dtype=torch.float64)
    x = (x - x.mean(0)) / x.std(0, unbiased=False)
    return x, torch.tensor(d.target, dtype=torch.float64)


def smoothness(x: torch.Tensor, reg: float) -> float:
    """Exact L = lambda_max([X, 1]^T [X, 1]) / (4 n) + reg of the objective in the module doc."""
    import numpy as np

    xt = np.hstack([x.numpy(), np.ones((len(x), 1))])
    return float(np.linalg.eigvalsh(xt.T @ xt / (4 * len(xt)))[-1]) + reg


def objective(model: nn.Module, x: torch.Tensor, y: torch.Tensor, reg: float) -> torch.Tensor:
    """Mean logistic loss of ``model(x)`` plus ``reg / 2`` times the squared norm of all params."""
    data = F.binary_cross_entropy_with_logits(model(x).squeeze(-1), y)
    return data + 0.5 * reg * sum((p * p).sum() for p in model.parameters())


def _model() -> nn.Module:
    m = nn.Linear(30, 1).double()
    with torch.no_grad():  # start near w = 0 (where the curvature is largest), seed-dependent
        m.weight.normal_(0.0, 0.01)
        m.bias.normal_(0.0, 0.01)
    return m


def _batches(seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    x, y = load()
    while True:  # full batch: the same data every step, whatever the seed
        yield x, y


def make_task(steps: int = STEPS, *, name: str = "logreg", reg: float = REG) -> Task:
    """The ``logreg`` task (full-batch GD for ``steps`` steps)."""
    x, y = load()

    def evaluate(model: nn.Module, split: str) -> float:
        check_split(split)
        p = next(model.parameters())
        with torch.no_grad():
            return float(objective(model, x.to(p.device), y.to(p.device), reg))

    recipe = Recipe(optimizer="sgd", batch_size=len(x), steps=steps, default_lr=0.1,
                    schedule="constant")
    return Task(
        name=name, version="1",
        description=f"L2 logistic regression (reg {reg:g}) on breast cancer, full-batch GD, "
                    f"{steps} steps; training objective",
        recipe=recipe, metric="train_objective", higher_is_better=False,
        build_model=lambda seed: seeded(_model, seed), batches=_batches,
        loss=lambda m, b: objective(m, b[0], b[1], reg), evaluate=evaluate,
        train_size=len(x), smoothness=smoothness(x, reg), worst=float("inf"))
