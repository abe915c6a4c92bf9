"""``lrkit tune`` and ``find_lr`` tried the way a user would on a pretrained model fine-tuned.

An MLP 64-128-128-10 is trained on the digits task's training split (Adam, 400 steps, fixed
seed), then fine-tuned on 200 of those images blurred and noised (a domain shift; val and test
are the digits val and test splits under the same shift), wrapped as a Task with the user's
optimizer: SGD momentum 0.9 at 0.1 or AdamW at 1e-3, cosine, 150 steps, test cross-entropy.
Prints a full-run grid (3 seeds, quarter decades), then per seed the range test's answer, the
peers' and tune's decision with its regret against the grid's best.

    python benchmarks/user_finetune.py sgd      # or adamw
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lrkit.tasks import digits
from lrkit.tasks._data import cross_entropy, seeded, shuffled_batches
from lrkit.tasks.base import Recipe, Task


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                         nn.Linear(128, 10))


def make_task(optimizer: str) -> Task:
    d = digits.load()
    (xtr, ytr), (xva, yva), (xte, yte) = d["train"], d["val"], d["test"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(12345)
        pre = _model()
        opt = torch.optim.Adam(pre.parameters(), lr=1e-3)
        it = shuffled_batches(xtr, ytr, 32, 0)
        for _ in range(400):
            x, y = next(it)
            opt.zero_grad()
            nn.functional.cross_entropy(pre(x), y).backward()
            opt.step()
    state = {k: v.clone() for k, v in pre.state_dict().items()}
    g = torch.Generator().manual_seed(5)
    kernel = torch.tensor([[0.05, 0.1, 0.05], [0.1, 0.4, 0.1], [0.05, 0.1, 0.05]]).reshape(
        1, 1, 3, 3)

    def shift(x: torch.Tensor) -> torch.Tensor:
        out = nn.functional.conv2d(x.reshape(-1, 1, 8, 8), kernel, padding=1).reshape(-1, 64)
        return (out * 1.6 + 0.15 * torch.randn(out.shape, generator=g)).clamp(0, 1)

    idx = np.random.default_rng(3).permutation(len(xtr))[:200]
    data = {"train": (shift(xtr[idx]), ytr[idx]), "val": (shift(xva), yva),
            "test": (shift(xte), yte)}

    def build() -> nn.Module:
        m = _model()
        m.load_state_dict(state)
        return m

    def evaluate(m: nn.Module, split: str) -> float:
        x, y = data[split]
        was = m.training
        m.eval()
        with torch.no_grad():
            out = nn.functional.cross_entropy(m(x), y).item()
        m.train(was)
        return out

    kwargs = {"momentum": 0.9} if optimizer == "sgd" else {"weight_decay": 0.01}
    recipe = Recipe(optimizer=optimizer, batch_size=16, steps=150,
                    default_lr=0.1 if optimizer == "sgd" else 1e-3, optimizer_kwargs=kwargs,
                    schedule="cosine")
    return Task(name=f"finetune-{optimizer}", version="1", description="digits MLP fine-tuned",
                recipe=recipe, metric="cross_entropy", higher_is_better=False,
                build_model=lambda s: seeded(build, s),
                batches=lambda s: shuffled_batches(*data["train"], 16, s), loss=cross_entropy,
                evaluate=evaluate, train_size=200, worst=float("inf"))


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from user_regression import grid_and_tune

    torch.set_num_threads(1)
    name = argv[0] if argv else "sgd"
    grid_and_tune(make_task(name), [10 ** (k / 4) for k in range(-24, 1)], name, peers=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
