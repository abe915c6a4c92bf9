"""``lrkit tune`` tried the way a user would on a very short run: their own tiny classifier.

scikit-learn's iris data (150 flowers, 4 features; or wine, breast cancer, digits): 40 training,
30 validation and the rest as test examples, an MLP inputs-32-classes, SGD with momentum 0.9, batch 8, a run of 60 (or 80) steps, wrapped with
``lrkit.from_torch``. Prints tune's decision and test loss next to the truth: full runs
(3 seeds) on a half-decade LR grid, scored on the test split.

    python benchmarks/user_tiny_tune.py 60 [iris|wine|cancer|digits|synthetic]
    python benchmarks/user_tiny_tune.py 80 iris
    python benchmarks/user_tiny_tune.py 60 iris --seeds 3 [--range-test 30]   # tune alone
    python benchmarks/user_tiny_tune.py 300 --checkpoints 5   # final run: checkpoint vs end
"""

from __future__ import annotations

import sys
import tempfile

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lrkit
from lrkit import train


DATASETS = ("iris", "wine", "cancer", "digits", "synthetic")


def task(steps: int, name: str = "iris"):
    from sklearn import datasets

    if name == "synthetic":  # 150 points, 5 Gaussian features, a linear 2-class boundary
        x = torch.randn(150, 5, generator=torch.Generator().manual_seed(0))
        y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    else:
        d = {"iris": datasets.load_iris, "wine": datasets.load_wine,
             "cancer": datasets.load_breast_cancer, "digits": datasets.load_digits}[name]()
        x = torch.tensor(d.data, dtype=torch.float32)
        y = torch.tensor(d.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    tr, va, te = perm[:40], perm[40:70], perm[70:]
    std = x[tr].std(0)
    x = (x - x[tr].mean(0)) / torch.where(std > 1e-6, std, torch.ones_like(std))
    loader = DataLoader(TensorDataset(x[tr], y[tr]), batch_size=8, shuffle=True,
                        generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(x.shape[1], 32), nn.ReLU(), nn.Linear(32, int(y.max()) + 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return lrkit.from_torch(model, opt, loader, nn.CrossEntropyLoss(),
                            val_loader=DataLoader(TensorDataset(x[va], y[va]), batch_size=64),
                            test_loader=DataLoader(TensorDataset(x[te], y[te]), batch_size=128),
                            steps=steps, name=f"{name}-tiny")


def seeds(steps: int, name: str, n: int, range_test: int | None) -> None:
    """tune's test loss over seeds 0..n-1 (and their median); ``range_test`` forces the range
    test's length (what tune did before it gave a short run's whole allowance to it)."""
    import lrkit.tune as T

    if range_test is not None:
        T._range_iters = lambda full, budget: range_test
    losses = []
    for seed in range(n):
        with tempfile.TemporaryDirectory() as out:
            losses.append(lrkit.tune(task(steps, name), out=out, progress=False,
                                     seed=seed).metric)
    print(f"{name}, {steps} steps, range test {range_test or 'default'}: test loss "
          f"{[round(v, 3) for v in losses]}, median {np.median(losses):.3f}")


def checkpoints(steps: int, n: int) -> None:
    """On every data set, seeds 0..n-1: whether tune's final run kept its best-validation
    checkpoint, and the test loss of that checkpoint against the run's end (30 validation
    examples: the winner's curse of early stopping on a tiny split)."""
    kept = helped = 0
    for name in DATASETS:
        for seed in range(n):
            with tempfile.TemporaryDirectory() as out:
                r = lrkit.tune(task(steps, name), out=out, progress=False, seed=seed)
            final = next(st for st in r.stages if st.name == "final run").outcome
            step = final.get("best_val_checkpoint_step")
            end = final.get("metric_at_end")
            if step is not None:
                kept += 1
                helped += r.metric < end
            print(f"{name:9s} seed {seed}: {r.family:8s} {r.lr:.3g}  test at end {end:.4f}  "
                  + (f"checkpoint step {step}: {r.metric:.4f}" if step is not None else
                     "no checkpoint"), flush=True)
    print(f"checkpoint kept in {kept} of {len(DATASETS) * n} runs; better on test in {helped}")


def main(argv: list[str]) -> int:
    if "--checkpoints" in argv:  # user_tiny_tune.py 300 --checkpoints 5
        checkpoints(int(argv[0]), int(argv[argv.index("--checkpoints") + 1]))
        return 0
    if "--seeds" in argv:  # user_tiny_tune.py 60 iris --seeds 3 [--range-test 30]
        i = argv.index("--seeds")
        rt = int(argv[argv.index("--range-test") + 1]) if "--range-test" in argv else None
        seeds(int(argv[0]), argv[1], int(argv[i + 1]), rt)
        return 0
    steps = int(argv[0]) if argv else 60
    name = argv[1] if len(argv) > 1 else "iris"
    t = task(steps, name)
    print(f"{name}, 40 training examples, SGD momentum 0.9, {steps} steps; test loss (3 seeds):")
    grid = [0.003, 0.01, 0.03, 0.1, 0.3, 1.0]
    for lr in grid:
        vals = [train.run(t, lr, seed=s, eval_split="test").metric for s in range(3)]
        print(f"  lr {lr:6.3f}: {np.mean(vals):.3f}")
    with tempfile.TemporaryDirectory() as out:
        r = lrkit.tune(t, out=out, progress=False)
    print(f"tune: {r.family} at {r.lr:.3g}, test loss {r.metric:.3f}, {r.cost_steps} steps "
          f"({r.cost_steps / steps:.2f} runs)")
    print(r.explanation)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
