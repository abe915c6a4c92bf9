"""``lrkit`` tried the way a user would on an unsupervised model: an autoencoder.

scikit-learn's digits (1,797 8x8 images, pixels scaled to [0, 1]; 1,200 train, 300 val, 297
test), an MLP autoencoder 64-32-8-32-64 (ReLU, sigmoid output), MSE reconstruction loss, batch
64, 500 steps, through ``lrkit.from_torch`` with Adam (the user's LR 1e-3) or SGD momentum 0.9
(0.1). Prints a full-run grid (3 seeds, quarter decades, test MSE), then per seed the range
test's answer and tune's decision with its regret against the grid's best
(``user_regression.grid_and_tune``).

    python benchmarks/user_autoencoder.py adam      # or sgd
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
from user_regression import grid_and_tune  # noqa: E402


def _reconstruction(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(out, target)


def main(argv: list[str]) -> int:
    from sklearn.datasets import load_digits

    opt_name = argv[0] if argv else "adam"
    if opt_name not in ("adam", "sgd"):
        raise SystemExit("usage: user_autoencoder.py adam|sgd")
    torch.set_num_threads(1)
    x = torch.tensor(load_digits().data, dtype=torch.float32) / 16.0
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x = x[perm]
    tr, va, te = x[:1200], x[1200:1500], x[1500:]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8), nn.ReLU(),
                          nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 64), nn.Sigmoid())
    opt = (torch.optim.Adam(model.parameters(), lr=1e-3) if opt_name == "adam"
           else torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    dl = DataLoader(TensorDataset(tr, tr), batch_size=64, shuffle=True,
                    generator=torch.Generator().manual_seed(0))
    task = lrkit.from_torch(model, opt, dl, _reconstruction, val_loader=[(va, va)],
                            test_loader=[(te, te)], steps=500, name=f"digits-ae-{opt_name}")
    centre = -8 if opt_name == "adam" else 2
    grid_and_tune(task, [10 ** ((centre + k) / 4) for k in range(-6, 7)],
                  f"digits autoencoder {opt_name}", peers=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
