"""``lrkit`` tried the way a user would on a noisy regression of their own, and with clipping.

(a) ``friedman``: scikit-learn's ``make_friedman1`` (generated locally: 700 points, 10 features,
    noise 1.0; 400 train, 100 val, 200 test), an MLP 10-64-64-1, MSE on the standardised
    target, 300 steps of batch 32, with SGD momentum 0.9 (the user's LR 0.01) or Adam (1e-3),
    through ``lrkit.from_torch``. Prints a full-run grid (3 seeds, quarter decades), then per seed
    the range test's answer and tune's decision with its regret against the grid's best.
(b) ``clip``: a linear-target regression (MLP 20-64-1, tanh, SGD momentum 0.9, 384 examples,
    300 steps), unclipped and with ``grad_clip=0.5``: the full-run grid (2 seeds) and the range
    test's suggestion, each way.

(c) ``raw``: scikit-learn's diabetes with its target *not* standardised (25-346, MSE ~27,000 at
    the start; a user who forgot to scale it), standardised inputs, an MLP 10-64-64-1, 300
    train / 70 val / 72 test, 300 steps of batch 32, Adam (1e-3) or SGD momentum 0.9 (1e-4):
    the full-run grid and tune, as (a), then confirm per seed; ``--compare-rescale``
    runs tune and confirm on seeds 0-5 with confirm's and tune's time rescaling
    (``finder.overfit_step``) on and off.

    python benchmarks/user_regression.py friedman sgd     # or adam
    python benchmarks/user_regression.py clip
    python benchmarks/user_regression.py raw adam         # or sgd; add --compare-rescale
"""

from __future__ import annotations

import sys
import tempfile

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import lrkit
from lrkit import train


def _mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(out.squeeze(1), target)


def friedman(opt_name: str) -> None:
    from sklearn.datasets import make_friedman1

    x, y = make_friedman1(n_samples=700, noise=1.0, random_state=0)
    x = torch.tensor(x, dtype=torch.float32)
    y = torch.tensor(y, dtype=torch.float32)
    y = (y - y[:400].mean()) / y[:400].std()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                          nn.Linear(64, 1))
    opt = (torch.optim.Adam(model.parameters(), lr=1e-3) if opt_name == "adam"
           else torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9))
    dl = DataLoader(TensorDataset(x[:400], y[:400]), batch_size=32, shuffle=True,
                    generator=torch.Generator().manual_seed(0))
    task = lrkit.from_torch(model, opt, dl, _mse, val_loader=[(x[400:500], y[400:500])],
                            test_loader=[(x[500:], y[500:])], steps=300,
                            name=f"friedman-{opt_name}")
    grid_and_tune(task, [10 ** (k / 4) for k in range(-16, 1)], f"friedman {opt_name}")


def grid_means(task, grid: list[float], seeds: int = 3) -> list[float]:
    """The mean test metric of full runs at each LR of ``grid`` over seeds 0..``seeds``-1."""
    return [float(np.mean([train.run(task, lr, seed=s, eval_split="test").metric
                           for s in range(seeds)])) for lr in grid]


def grid_best(task, grid: list[float], label: str, fmt: str = ".3f") -> float:
    """Print the grid's mean test metric at each LR (:func:`grid_means`, 3 seeds) and return
    the best (lowest). Shared with ``user_sparse.py`` and ``user_fullbatch.py``."""
    means = grid_means(task, grid)
    b = int(np.nanargmin(means))
    print(f"{label}: grid best {grid[b]:.3g} ({means[b]:.4f}); "
          + " ".join(f"{lr:.2g}:{m:{fmt}}" for lr, m in zip(grid, means)), flush=True)
    return float(means[b])


def picks(task, seed: int) -> tuple:
    """``(range test, confirm, confirm's full-run test metric, tune)`` of one seed."""
    r = lrkit.find_lr(task, seed=seed, progress=False)
    c = lrkit.find_lr(task, seed=seed, progress=False, confirm=True)
    full = train.run(task, c.lr, seed=seed, eval_split="test").metric
    with tempfile.TemporaryDirectory() as out:
        t = lrkit.tune(task, out=out, progress=False, seed=seed)
    return r, c, full, t


def grid_and_tune(task, grid: list[float], label: str, peers: bool = False) -> None:
    """Full runs on ``grid`` (3 seeds, test split, lower is better), then per seed the range
    test's answer (and the peers' rules) and tune's decision with its regret against the grid's
    best. Shared with ``user_finetune.py``."""
    best = grid_best(task, grid, label)
    for seed in range(3):
        r = lrkit.find_lr(task, seed=seed, progress=False)
        if peers:
            print(f"  seed {seed} peers: "
                  + str({k: (f"{v.lr:.2g}" if v.lr else None) for k, v in r.suggestions.items()}))
        with tempfile.TemporaryDirectory() as out:
            t = lrkit.tune(task, out=out, progress=False, seed=seed)
        print(f"  seed {seed}: range test {r.lr and f'{r.lr:.3g}'} ({r.suggestion.confidence}); "
              f"tune {t.family} at {t.lr:.3g}, test {t.metric:.4f} "
              f"({100 * (t.metric - best) / best:+.1f}%), {t.cost_runs:.2f} runs")


def clip() -> None:
    torch.manual_seed(0)
    x = torch.randn(512, 20)
    y = (x @ torch.randn(20, 1)).squeeze(1) + 0.3 * torch.randn(512)

    def setup():
        torch.manual_seed(0)
        m = nn.Sequential(nn.Linear(20, 64), nn.Tanh(), nn.Linear(64, 1))
        o = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
        dl = DataLoader(TensorDataset(x[:384], y[:384]), batch_size=32, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
        return m, o, dl

    grid = [10 ** (k / 4) for k in range(-12, 5)]
    for c in (None, 0.5):
        m, o, dl = setup()
        task = lrkit.from_torch(m, o, dl, _mse, val_loader=[(x[384:], y[384:])], steps=300,
                                grad_clip=c)
        means = grid_means(task, grid, seeds=2)
        sugg = []
        for s in range(3):
            m, o, dl = setup()
            sugg.append(lrkit.find_lr(m, o, dl, _mse, grad_clip=c, seed=s).lr)
        print(f"grad_clip {c}: grid " + " ".join(f"{lr:.2g}:{v:.3f}" for lr, v in
                                                  zip(grid, means)))
        print(f"  range test, seeds 0-2: {[round(v, 4) for v in sugg]}")


def raw(opt_name: str, compare_rescale: bool) -> None:
    from sklearn.datasets import load_diabetes

    import lrkit.finder

    x, y = load_diabetes(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32)
    y = torch.tensor(y, dtype=torch.float32)  # left in its own units, as the user had it
    x = (x - x[:300].mean(0)) / x[:300].std(0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                          nn.Linear(64, 1))
    opt = (torch.optim.Adam(model.parameters(), lr=1e-3) if opt_name == "adam"
           else torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9))
    dl = DataLoader(TensorDataset(x[:300], y[:300]), batch_size=32, shuffle=True,
                    generator=torch.Generator().manual_seed(0))
    task = lrkit.from_torch(model, opt, dl, _mse, val_loader=[(x[300:370], y[300:370])],
                            test_loader=[(x[370:], y[370:])], steps=300,
                            name=f"rawdiab-{opt_name}")
    grid = [10 ** (k / 4) for k in (range(-28, -4) if opt_name == "sgd" else range(-16, 4))]
    if not compare_rescale:
        grid_and_tune(task, grid, f"raw diabetes {opt_name}")
        for seed in range(3):
            r = lrkit.find_lr(task, seed=seed, confirm=True)
            print(f"  seed {seed}: confirm {r.lr:.3g}; {r.suggestion.reason}")
        return
    best = float(np.nanmin(grid_means(task, grid)))
    shipped = lrkit.finder.overfit_step
    for label, rule in (("on", shipped), ("off", lambda *a, **k: None)):
        lrkit.finder.overfit_step = rule
        regrets = []
        for seed in range(6):
            with tempfile.TemporaryDirectory() as out:
                t = lrkit.tune(task, out=out, progress=False, seed=seed)
            r = lrkit.find_lr(task, seed=seed, confirm=True)
            c = train.run(task, lrkit.schedules.family("constant", r.lr, 300), seed=seed,
                          eval_split="test").metric
            regrets.append(((t.metric - best) / best, (c - best) / best))
            print(f"  rescaling {label}, seed {seed}: tune {t.family} {t.lr:.3g} "
                  f"{regrets[-1][0]:+.1%}; confirm {r.lr:.3g} {regrets[-1][1]:+.1%}", flush=True)
        a = np.array(regrets)
        print(f"rescaling {label}: tune median {np.median(a[:, 0]):+.1%} mean {a[:, 0].mean():+.1%}"
              f"; confirm median {np.median(a[:, 1]):+.1%} mean {a[:, 1].mean():+.1%}")
    lrkit.finder.overfit_step = shipped


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    if argv and argv[0] == "clip":
        clip()
    elif argv and argv[0] == "raw":
        raw(argv[1] if len(argv) > 1 and not argv[1].startswith("-") else "adam",
            "--compare-rescale" in argv)
    else:
        friedman(argv[1] if len(argv) > 1 else "sgd")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
