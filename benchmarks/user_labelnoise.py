"""``lrkit tune`` tried the way a user would on a class no rule was designed on: noisy labels.

scikit-learn's digits (1,797 images): 1,000 training and 300 validation images whose labels are
replaced by a uniformly random class with probability ``noise`` (the symmetric label noise of
Arpit et al. 2017, *A Closer Look at Memorization in Deep Networks*), and 497 clean test images.
An MLP 64-256-256-10, SGD with momentum 0.9, batch 32, a constant LR, scored by accuracy, wrapped
with ``lrkit.from_torch``. A network first learns the clean pattern and later memorises the noise,
so the best LR and the best stopping point are set by generalisation, not by the training loss.

Prints the truth (full runs on a quarter-decade LR grid, 3 seeds, test accuracy) and tune's
decision for seeds 0-2 with its regret against the grid's best.

    python benchmarks/user_labelnoise.py [--noise 0.4] [--steps 600] [--batch 32] [--budget 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lrkit
from lrkit import train


def accuracy(model: nn.Module, loader) -> float:
    hit = n = 0
    for x, y in loader:
        hit += int((model(x).argmax(1) == y).sum())
        n += len(y)
    return hit / n


def task(noise: float, steps: int, batch: int) -> lrkit.Task:
    from sklearn import datasets

    d = datasets.load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(x), generator=g)
    tr, va, te = perm[:1000], perm[1000:1300], perm[1300:]
    noisy = y.clone()
    flip = torch.rand(len(y), generator=g) < noise
    noisy[flip] = torch.randint(0, 10, (int(flip.sum()),), generator=g)
    mean, std = x[tr].mean(0), x[tr].std(0).clamp_min(1e-3)
    x = (x - mean) / std
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                          nn.Linear(256, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return lrkit.from_torch(
        model, opt,
        DataLoader(TensorDataset(x[tr], noisy[tr]), batch_size=batch, shuffle=True,
                   generator=torch.Generator().manual_seed(1)),
        nn.CrossEntropyLoss(),
        val_loader=DataLoader(TensorDataset(x[va], noisy[va]), batch_size=500),
        test_loader=DataLoader(TensorDataset(x[te], y[te]), batch_size=500),
        metric_fn=accuracy, higher_is_better=True, steps=steps,
        name=f"digits-noise{int(100 * noise)}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--noise", type=float, default=0.4)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--budget", type=float, default=None, help="tune's budget (default 2 runs)")
    a = p.parse_args()
    torch.set_num_threads(1)
    t = task(a.noise, a.steps, a.batch)
    seeds = range(a.seeds)
    print(f"{t.name}: {a.steps} steps, batch {a.batch}; test accuracy (clean), "
          f"{a.seeds} seeds per LR:")
    best = (0.0, None)
    for k in range(-16, 3):  # 10^-4 .. 10^0.5, quarter decades
        lr = 10 ** (0.25 * k)
        vals = [train.run(t, lr, seed=s, eval_split="test").metric for s in seeds]
        m = statistics.fmean(vals)
        best = max(best, (m, lr), key=lambda b: b[0])
        print(f"  lr {lr:7.4f}: {m:.4f}  {[round(v, 3) for v in vals]}", flush=True)
    print(f"best constant LR {best[1]:.3g}: {best[0]:.4f}")
    metrics = []
    for s in seeds:
        with tempfile.TemporaryDirectory() as out:
            r = lrkit.tune(t, out=out, progress=False, seed=s, budget=a.budget)
        final = next(st for st in r.stages if st.name == "final run").outcome
        metrics.append(r.metric)
        print(f"tune seed {s}: {r.family} at {r.lr:.3g} -> {r.metric:.4f} (end "
              f"{final['metric_at_end']:.4f}, checkpoint {final['best_val_checkpoint_step']}), "
              f"{r.cost_steps / a.steps:.2f} runs", flush=True)
    m = statistics.fmean(metrics)
    print(f"tune mean {m:.4f}; regret {100 * (best[0] - m) / best[0]:+.1f}% against the best "
          "constant LR")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
