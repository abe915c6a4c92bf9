"""``lrkit`` tried the way a user would on **full-batch** training: one batch per step, the same
batch every step, so the loss has no batch noise and an epoch is one step.

Two set-ups, each through ``lrkit.from_torch`` and scored on a held-out test split:

- ``lsq``: linear least squares on scikit-learn's diabetes (10 standardised features, targets
  standardised), plain gradient descent, 100 steps. The Hessian of the mean squared error is
  ``2/n XᵀX``, so the answer is known exactly: GD diverges above ``2/λmax``.
- ``fit``: an MLP (1-64-64-1, tanh) fitting ``sin(3x)`` on 128 noisy points, Adam, 500 steps: a
  loss that falls by orders of magnitude.

Prints, per set-up, a full-run grid (3 seeds, quarter decades), then per seed the range test's
answer, confirm's, tune's and ``safe_lr``'s, each with its regret against the grid's best.

    python benchmarks/user_fullbatch.py [lsq,fit]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lrkit  # noqa: E402
from user_regression import grid_best, picks  # noqa: E402


def regret(v: float, best: float) -> str:
    return f"{100 * (v - best) / best:+.1f}%"


def lsq() -> tuple[lrkit.Task, float, list[float]]:
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    x = torch.tensor((x - x.mean(0)) / x.std(0), dtype=torch.float32)
    y = torch.tensor((y - y.mean()) / y.std(), dtype=torch.float32).unsqueeze(1)
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(y), generator=g)
    tr, va, te = idx[:300], idx[300:370], idx[370:]
    xb = torch.cat([x[tr], torch.ones(len(tr), 1)], 1)
    lam = torch.linalg.eigvalsh(2 / len(tr) * xb.T @ xb)
    torch.manual_seed(0)
    model = nn.Linear(10, 1)
    task = lrkit.from_torch(
        model, torch.optim.SGD(model.parameters(), lr=0.01),
        DataLoader(TensorDataset(x[tr], y[tr]), batch_size=300), F.mse_loss,
        val_loader=DataLoader(TensorDataset(x[va], y[va]), batch_size=300),
        test_loader=DataLoader(TensorDataset(x[te], y[te]), batch_size=300),
        steps=100, name="fullbatch-lsq")
    print(f"lsq: λmax {lam[-1]:.3f}, λmin {lam[0]:.4f}: GD diverges above 2/λmax = "
          f"{2 / lam[-1]:.3f}; 2/(λmax+λmin) = {2 / (lam[-1] + lam[0]):.3f}")
    return task, float(2 / lam[-1]), [10 ** (k / 8) for k in range(-24, 4)]


def fit() -> tuple[lrkit.Task, float, list[float]]:
    g = torch.Generator().manual_seed(0)

    def points(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.rand(n, 1, generator=g) * 4 - 2
        return x, torch.sin(3 * x) + 0.05 * torch.randn(n, 1, generator=g)

    (xt, yt), (xv, yv), (xe, ye) = points(128), points(256), points(256)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(),
                          nn.Linear(64, 1))
    task = lrkit.from_torch(
        model, torch.optim.Adam(model.parameters(), lr=1e-3),
        DataLoader(TensorDataset(xt, yt), batch_size=128), F.mse_loss,
        val_loader=DataLoader(TensorDataset(xv, yv), batch_size=256),
        test_loader=DataLoader(TensorDataset(xe, ye), batch_size=256),
        steps=500, name="fullbatch-fit")
    return task, float("nan"), [10 ** (k / 4) for k in range(-16, 1)]


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    names = argv[0].split(",") if argv else ["lsq", "fit"]
    for name in names:
        task, bound, grid = {"lsq": lsq, "fit": fit}[name]()
        best = grid_best(task, grid, name, ".3g")
        for seed in range(3):
            r, c, full, t = picks(task, seed)
            s = lrkit.safe_lr(task, seed=seed)
            print(f"  seed {seed}: range test {r.lr and f'{r.lr:.3g}'} ({r.suggestion.confidence},"
                  f" {r.suggestion.reason}); confirm {c.lr:.3g}, test {full:.4g} "
                  f"({regret(full, best)}); tune {t.family} at {t.lr:.3g}, test {t.metric:.4g} "
                  f"({regret(t.metric, best)}), findings {[f['kind'] for f in t.findings]}; "
                  f"safe_lr {s.lr:.3g} (exact bound {bound:.3g})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
