"""``lrkit`` tried the way a user would on a class no rule was designed on: a bag-of-words
classifier with a **sparse** embedding (``nn.EmbeddingBag(sparse=True)``), under the optimizers
that take sparse gradients (SGD, SGD with momentum, Adagrad).

Data that ships with Python: the lines of ``user_textcls.py`` (four standard-library modules;
tell which file a line comes from), split into words (``\\w+``) hashed into 4,096 buckets, at
most 16 per line; 2,400 lines to train, 800 to validate, 1,600 to test. The model: a mean
``EmbeddingBag`` of width 32 and a linear head; batch 32, 300 steps, constant LR, through
``lrkit.from_torch``; the metric is the test cross-entropy (lower is better).

Found with it (twentieth round): PyTorch's ``clip_grad_norm_`` and vector norm have no sparse
kernel, so ``fit(grad_clip=...)`` and every monitored run (tune's final run) raised
``NotImplementedError``; ``safe_lr`` raised "reshape is not implemented for sparse tensors",
and had no rule for Adagrad.

Prints, per optimizer, a full-run grid (3 seeds, quarter decades), then per seed the range test's
answer, confirm's and tune's, each with its regret against the grid's best.

    python benchmarks/user_sparse.py [sgd,sgdm,adagrad]
"""

from __future__ import annotations

import re
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
from user_textcls import FILES, data  # noqa: E402

BUCKETS, WORDS = 4096, 16
OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1),
    "sgdm": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
    "adagrad": lambda p: torch.optim.Adagrad(p, lr=0.01),
}


def bags() -> tuple[torch.Tensor, torch.Tensor]:
    """Each line as up to WORDS hashed word ids (``zlib.crc32``, stable across runs; 0 pads)."""
    import zlib

    x, y = data()
    out = torch.zeros(len(y), WORDS, dtype=torch.long)
    for i, row in enumerate(x.tolist()):
        text = bytes(b - 1 for b in row if b > 0).decode("utf-8", "replace")
        ids = [1 + zlib.crc32(w.encode()) % (BUCKETS - 1) for w in re.findall(r"\w+", text)]
        out[i, :len(ids[:WORDS])] = torch.tensor(ids[:WORDS], dtype=torch.long)
    return out, y


class Bag(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.EmbeddingBag(BUCKETS, 32, mode="mean", sparse=True, padding_idx=0)
        self.head = nn.Linear(32, len(FILES))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.emb(ids))


def regret(v: float, best: float) -> str:
    return f"{100 * (v - best) / best:+.1f}%"


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    x, y = bags()
    tr, va, te = slice(0, 2400), slice(2400, 3200), slice(3200, None)
    names = argv[0].split(",") if argv else list(OPTIMIZERS)
    for name in names:
        torch.manual_seed(0)
        model = Bag()
        task = lrkit.from_torch(
            model, OPTIMIZERS[name](model.parameters()),
            DataLoader(TensorDataset(x[tr], y[tr]), batch_size=32, shuffle=True,
                       generator=torch.Generator().manual_seed(0)),
            F.cross_entropy,
            val_loader=DataLoader(TensorDataset(x[va], y[va]), batch_size=400),
            test_loader=DataLoader(TensorDataset(x[te], y[te]), batch_size=400),
            steps=300, name=f"sparse-{name}")
        grid = [10 ** (k / 4) for k in range(-12, 9)]  # 1e-3 .. 100
        best = grid_best(task, grid, name)
        for seed in range(3):
            r, c, full, t = picks(task, seed)
            print(f"  seed {seed}: range test {r.lr and f'{r.lr:.3g}'} ({r.suggestion.confidence});"
                  f" confirm {c.lr:.3g}, test {full:.4f} ({regret(full, best)}); tune "
                  f"{t.family} at {t.lr:.3g}, test {t.metric:.4f} ({regret(t.metric, best)}), "
                  f"findings {[f['kind'] for f in t.findings]}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
