"""A tiny, fast task for testing the harness: noisy linear regression trained by SGD.

Gradient descent on least squares diverges for lr > 2/L (L = largest eigenvalue of the input
second-moment matrix times 2), and is slow for small lr, so the LR clearly matters in ~40 steps.
"""

from __future__ import annotations

import torch

from lrkit.tasks.base import Recipe, Task


def _data(seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + seed)
    x = torch.randn(n, 4, generator=g) * torch.tensor([2.0, 1.0, 0.5, 0.25])
    y = x @ torch.tensor([1.0, -2.0, 3.0, 0.5]) + 0.05 * torch.randn(n, generator=g)
    return x, y


X, Y = _data(0, 256)
XT, YT = _data(1, 256)


def _batches(seed: int):
    g = torch.Generator().manual_seed(seed)
    while True:
        idx = torch.randperm(len(X), generator=g)
        for i in range(0, len(X), 32):
            j = idx[i:i + 32]
            yield X[j], Y[j]


def _evaluate(model: torch.nn.Module, split: str) -> float:
    if split not in ("val", "test"):
        raise ValueError(f"split must be 'val' or 'test', got {split!r}")
    x, y = (X[:64], Y[:64]) if split == "val" else (XT, YT)
    with torch.no_grad():
        return float(torch.nn.functional.mse_loss(model(x).squeeze(1), y))


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Linear(4, 1)


def make_task(steps: int = 40) -> Task:
    return Task(
        name="tiny", version="1", description="noisy linear regression, SGD, 40 steps",
        recipe=Recipe(optimizer="sgd", batch_size=32, steps=steps, default_lr=0.1),
        metric="mse", higher_is_better=False, build_model=_model, batches=_batches,
        loss=lambda m, b: torch.nn.functional.mse_loss(m(b[0]).squeeze(1), b[1]),
        evaluate=_evaluate, train_size=len(X), worst=float("inf"))


def dead_relu_regression(n: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """``(model, x, y)`` whose loss stays flat in a range test: an MLP 4-8-1 whose hidden
    ReLUs are dead (zero weights, bias -1) fitting a zero-mean linear target, ``y`` of shape
    ``(n, 1)``: no LR moves it, so the curve's rule abstains."""
    torch.manual_seed(0)
    x = torch.randn(n, 4)
    y = (x @ torch.tensor([1.0, -2.0, 0.5, 0.0]))[:, None]
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.fill_(-1.0)
    return model, x, y - y.mean()


def blobs(per_class: int, n_train: int, n_val: int = 50) -> tuple:
    """Two far-apart Gaussian blobs in 2-D (means +5 and -5), which any linear classifier
    separates: ``(model, optimizer, train_loader, val_batches, test_batches, accuracy)`` with a
    ``Linear(2, 2)`` under SGD (lr 0.1), a shuffling loader of the first ``n_train`` of the
    ``2 * per_class`` examples (batch 32), the next ``n_val`` as val, the rest as test, and
    ``accuracy(model, batches)`` as the count right over ``n_val``."""
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(per_class, 2, generator=g) + 5,
                   torch.randn(per_class, 2, generator=g) - 5])
    y = torch.cat([torch.zeros(per_class), torch.ones(per_class)]).long()
    perm = torch.randperm(2 * per_class, generator=g)
    x, y = x[perm], y[perm]
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[:n_train], y[:n_train]),
                                         batch_size=32, shuffle=True, generator=g)
    end = n_train + n_val

    def accuracy(m: torch.nn.Module, batches) -> float:
        return float(sum((m(a).argmax(1) == b).float().sum() for a, b in batches) / n_val)

    return (model, opt, loader, [(x[n_train:end], y[n_train:end])], [(x[end:], y[end:])],
            accuracy)


class CountingNet(torch.nn.Module):
    """An MLP ``n_in``-``hidden``-1 (``act`` between; no hidden layer when ``hidden`` is 0)
    with ``get_extra_state``: its training forwards counted (``calls``) and a vocabulary
    (``vocab``), a non-tensor entry in its state_dict."""

    def __init__(self, n_in: int, hidden: int = 0, act: type = torch.nn.ReLU) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = (torch.nn.Sequential(torch.nn.Linear(n_in, hidden), act(),
                                        torch.nn.Linear(hidden, 1)) if hidden
                    else torch.nn.Linear(n_in, 1))
        self.calls, self.vocab = 0, ["a", "b"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.calls += 1
        return self.net(x)

    def get_extra_state(self) -> dict:
        return {"calls": self.calls, "vocab": self.vocab}

    def set_extra_state(self, state: dict) -> None:
        self.calls, self.vocab = state["calls"], state["vocab"]


class OnceStream:
    """A re-iterable over a stream read once (a network or file stream; not an Iterator): its
    batches in the first epoch, then none."""

    def __init__(self, batches: list) -> None:
        self.it = iter(batches)

    def __iter__(self):
        return (b for b in self.it)
