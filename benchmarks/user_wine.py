"""Confirm mode tried the way a user would: their own tiny model, DataLoaders, no Task.

scikit-learn's wine data (178 wines, 13 features): 60 training and 58 validation wines, an MLP
13-128-128-3, batch 8, a 300-step run. ``find_lr(model, opt, train_loader, loss_fn,
val_loader=val, confirm=True, steps=300)``, then the truth: full 300-step runs (3 seeds) on a
half-decade LR grid and at both suggestions, scored by the validation loss (the same split confirm
scores its short runs on, which favours confirm).

    python benchmarks/user_wine.py adam
    python benchmarks/user_wine.py sgd      # SGD, momentum 0.9
"""

from __future__ import annotations

import functools
import itertools
import sys
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lrkit

STEPS = 300


def data() -> tuple[DataLoader, DataLoader]:
    from sklearn.datasets import load_wine

    d = load_wine()
    x = torch.tensor(d.data, dtype=torch.float32)
    y = torch.tensor(d.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    tr, va = perm[:60], perm[60:120]
    x = (x - x[tr].mean(0)) / x[tr].std(0)
    train = DataLoader(TensorDataset(x[tr], y[tr]), batch_size=8, shuffle=True,
                       generator=torch.Generator().manual_seed(1))
    return train, DataLoader(TensorDataset(x[va], y[va]), batch_size=64)


def model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(13, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                         nn.Linear(128, 3))


def full_run(make_opt, lr: float, train: DataLoader, val: DataLoader, seed: int) -> float:
    m = model(seed)
    opt = make_opt(m.parameters(), lr=lr)
    batches = itertools.cycle(train)
    for _ in range(STEPS):
        xb, yb = next(batches)
        opt.zero_grad()
        nn.functional.cross_entropy(m(xb), yb).backward()
        opt.step()
    m.eval()
    with torch.no_grad():
        total = sum(nn.functional.cross_entropy(m(a), b, reduction="sum") for a, b in val)
    return float(total) / len(val.dataset)


def main(kind: str) -> None:
    torch.set_num_threads(1)
    if kind == "sgd":
        make_opt, grid = functools.partial(torch.optim.SGD, momentum=0.9), [1e-3, 3e-3, 1e-2,
                                                                          3e-2, 0.1]
    else:
        make_opt, grid = torch.optim.Adam, [3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2]
    train, val = data()
    m = model(0)
    t0 = time.perf_counter()
    res = lrkit.find_lr(m, make_opt(m.parameters(), lr=1e-3), train, nn.functional.cross_entropy,
                        val_loader=val, confirm=True, steps=STEPS, progress=False)
    curve = res.suggestions["lrkit"].lr
    print(f"{kind}: curve rule {curve:.3g}, confirm {res.lr:.3g} "
          f"({time.perf_counter() - t0:.1f} s); {res.suggestion.reason}")

    def score(lr: float) -> float:
        return sum(full_run(make_opt, lr, train, val, s) for s in range(3)) / 3

    truth = {lr: score(lr) for lr in grid}
    best = min(truth, key=truth.get)
    for lr, v in truth.items():
        print(f"  full runs at {lr:g}: val loss {v:.4f}")
    for name, lr in (("curve rule", curve), ("confirm", res.lr)):
        v = score(lr)
        print(f"  {name} at {lr:.3g}: {v:.4f} ({v / truth[best] - 1:+.0%} vs the grid's best "
              f"{best:g})")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "adam")
