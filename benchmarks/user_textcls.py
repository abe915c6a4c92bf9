"""``lrkit`` tried the way a user would on a class no rule was designed on: a small transformer
classifier under AdamW with warmup and cosine decay.

Data that ships with Python: lines of four standard-library modules (``argparse``, ``typing``,
``inspect``, ``difflib``; stripped, at least 20 characters), the task being to tell which file a
line comes from. Bytes as tokens (first 48), 1,200 lines per class drawn at random: 2,400 for
training, 800 for validation, 1,600 for test. The model: byte embedding (48) plus a learned
position embedding, two pre-LN ``TransformerEncoderLayer`` (4 heads, feed-forward 96, dropout
0.1), mean pooling over the real tokens, a linear head; AdamW (the user's LR 1e-3, weight decay
0.01), batch 32, 300 steps, cosine with a 30-step warmup, through ``lrkit.from_torch``. The
metric is the test cross-entropy (lower is better). Prints a full-run grid (3 seeds, quarter
decades) and per seed the range test's answer and tune's decision with its regret against the
grid's best (``user_regression.grid_and_tune``).

    python benchmarks/user_textcls.py
"""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lrkit  # noqa: E402
from user_regression import grid_and_tune  # noqa: E402

FILES = ("argparse.py", "typing.py", "inspect.py", "difflib.py")
PER_CLASS, LENGTH = 1200, 48


def data() -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (0 = padding, bytes shifted by 1) and labels, shuffled with a fixed seed."""
    std = sysconfig.get_paths()["stdlib"]
    g = torch.Generator().manual_seed(0)
    xs, ys = [], []
    for label, name in enumerate(FILES):
        with open(os.path.join(std, name), encoding="utf-8") as f:
            lines = [s.strip() for s in f if len(s.strip()) >= 20]
        pick = torch.randperm(len(lines), generator=g)[:PER_CLASS]
        for i in pick.tolist():
            raw = lines[i].encode("utf-8")[:LENGTH]
            ids = [b + 1 for b in raw] + [0] * (LENGTH - len(raw))
            xs.append(ids)
            ys.append(label)
    x, y = torch.tensor(xs), torch.tensor(ys)
    order = torch.randperm(len(y), generator=g)
    return x[order], y[order]


class LineClassifier(nn.Module):
    def __init__(self, d: int = 48, classes: int = len(FILES)) -> None:
        super().__init__()
        self.tok = nn.Embedding(257, d, padding_idx=0)
        self.pos = nn.Parameter(torch.zeros(1, LENGTH, d))
        layer = nn.TransformerEncoderLayer(d, 4, 96, dropout=0.1, batch_first=True,
                                           norm_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(d, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pad = ids == 0
        h = self.enc(self.tok(ids) + self.pos, src_key_padding_mask=pad)
        keep = (~pad).unsqueeze(-1).float()
        return self.head((h * keep).sum(1) / keep.sum(1).clamp(min=1.0))


def main() -> int:
    torch.set_num_threads(1)
    x, y = data()
    tr, va = slice(0, 2400), slice(2400, 3200)
    te = slice(3200, None)
    torch.manual_seed(0)
    model = LineClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    train_dl = DataLoader(TensorDataset(x[tr], y[tr]), batch_size=32, shuffle=True,
                          generator=torch.Generator().manual_seed(0))
    task = lrkit.from_torch(model, opt, train_dl, F.cross_entropy,
                            val_loader=DataLoader(TensorDataset(x[va], y[va]), batch_size=400),
                            test_loader=DataLoader(TensorDataset(x[te], y[te]), batch_size=400),
                            steps=300, schedule="cosine", warmup_steps=30, name="textcls")
    grid = [10 ** (k / 4) for k in range(-14, -3)]  # 3.2e-4 .. 0.1
    grid_and_tune(task, grid, "textcls adamw warmup-cosine", peers=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
