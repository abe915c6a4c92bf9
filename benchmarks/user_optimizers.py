"""``lrkit`` tried the way a user would with every optimizer torch ships, on one small task.

The task: 800 training points in 10 dimensions, three classes set by a random linear map
(``argmax(x @ w)``), an MLP 10-64-3, batch 32, 300 steps, constant LR, through
``lrkit.from_torch``; 200 points validate, 200 test, and the metric is the test cross-entropy
(lower is better). Each optimizer keeps its torch defaults but the LR (and the settings named).

Prints, per optimizer, the full-run grid's best (3 seeds, quarter decades), the lowest grid LR
that diverged on any seed, ``safe_lr``'s bound at the start, then the range test's, confirm's and
tune's picks for seeds 0-2 with the regret of their mean test metric against the grid's best
(each pick's full run on its own seed; tune's schedule chosen too), and tune's monitor findings.

    python benchmarks/user_optimizers.py [SGD,Adam,...]

Found with it (twenty-first round): ``safe_lr`` had no rule for NAdam, RAdam, Adamax or ASGD
(tune's report said "no stability rule here").
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lrkit  # noqa: E402

OPTIMIZERS = {
    "SGD": lambda p: torch.optim.SGD(p, lr=0.01),
    "SGD-momentum": lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9),
    "SGD-nesterov": lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9, nesterov=True),
    "SGD-dampening": lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9, dampening=0.5),
    "ASGD": lambda p: torch.optim.ASGD(p, lr=0.01),
    "Adam": lambda p: torch.optim.Adam(p, lr=1e-3),
    "AdamW": lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.1),
    "NAdam": lambda p: torch.optim.NAdam(p, lr=2e-3),
    "RAdam": lambda p: torch.optim.RAdam(p, lr=1e-3),
    "Adamax": lambda p: torch.optim.Adamax(p, lr=2e-3),
    "RMSprop": lambda p: torch.optim.RMSprop(p, lr=0.01),
    "Adagrad": lambda p: torch.optim.Adagrad(p, lr=0.01),
    "Adadelta": lambda p: torch.optim.Adadelta(p, lr=1.0),
}
GRID = [10 ** (k / 4) for k in range(-16, 7)]  # 1e-4 .. 31.6


def make_task(name: str) -> lrkit.Task:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1200, 10, generator=g)
    y = (x @ torch.randn(10, 3, generator=g)).argmax(1)

    def loader(sl: slice, bs: int, shuffle: bool) -> DataLoader:
        return DataLoader(TensorDataset(x[sl], y[sl]), batch_size=bs, shuffle=shuffle,
                          generator=torch.Generator().manual_seed(0))

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 3))
    return lrkit.from_torch(model, OPTIMIZERS[name](model.parameters()),
                            loader(slice(0, 800), 32, True), F.cross_entropy,
                            val_loader=loader(slice(800, 1000), 200, False),
                            test_loader=loader(slice(1000, 1200), 200, False),
                            steps=300, name=name)


def regret(v: float, best: float) -> str:
    return f"{100 * (v - best) / best:+.1f}%"


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    names = argv[0].split(",") if argv else list(OPTIMIZERS)
    print("| optimizer | grid best (test loss) | diverges from | safe_lr | range test, seeds 0-2 "
          "| confirm | tune | tune's findings |")
    print("|---|---|---|---|---|---|---|---|")
    for name in names:
        task = make_task(name)
        runs = [[lrkit.train.run(task, lr, seed=s, eval_split="test") for s in range(3)]
                for lr in GRID]
        means = [float(np.mean([r.metric for r in rs])) for rs in runs]
        b = int(np.nanargmin(means))
        best = means[b]
        diverged = [lr for lr, rs in zip(GRID, runs) if any(r.diverged for r in rs)]
        picks = {"range test": [], "confirm": [], "tune": []}
        findings: set[str] = set()
        for seed in range(3):
            r = lrkit.find_lr(task, seed=seed, progress=False)
            c = lrkit.find_lr(task, seed=seed, progress=False, confirm=True)
            with tempfile.TemporaryDirectory() as out:
                t = lrkit.tune(task, out=out, progress=False, seed=seed)
            for key, lr in (("range test", r.lr), ("confirm", c.lr)):
                m = lrkit.train.run(task, lr, seed=seed, eval_split="test").metric if lr else None
                picks[key].append((lr, m))
            picks["tune"].append((t.lr, t.metric, t.family))
            findings |= {f["kind"] for f in t.findings}
        try:
            safe = f"{lrkit.safe_lr(task, seed=0).lr:.3g}"
        except TypeError:
            safe = "no rule"
        div = f"{min(diverged):.3g}" if diverged else "none"
        cells = []
        for key, rows in picks.items():
            lrs = "/".join(f"{p[0]:.2g}" if p[0] else "none" for p in rows)
            scored = [p[1] for p in rows if p[1] is not None]
            cells.append(f"{lrs} ({regret(float(np.mean(scored)), best)})" if scored else lrs)
        print(f"| {name} | {GRID[b]:.3g} ({best:.4f}) | {div} | {safe} | " + " | ".join(cells)
              + f" | {', '.join(sorted(findings)) or 'none'} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
