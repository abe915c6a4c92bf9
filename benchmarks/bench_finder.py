"""Range-test benchmarks: overhead against plain training steps, and sensitivity to num_iter.

    python benchmarks/bench_finder.py [--tasks digits mnist5k charlm] [--repeats 3]

1. Overhead: wall time of ``lrkit.find_lr`` on a model (snapshot + sweep + restore + suggestion)
   against the same number of plain PyTorch training steps (a hand-written loop: zero_grad,
   loss, backward, step) on the same model and batches, measured in one run; the ratio is
   median(find_lr) / median(plain). Goal: <= 1.10. Split into the loop's extra time per step
   (callbacks, LR setting) and the one-off cost (snapshot, restore, every rule's suggestion),
   which dominates only where 100 steps take a few milliseconds.
2. num_iter: the suggestion of lrkit's rule and of the peers' rules at num_iter = 50, 100, 200,
   400 (seed 0), and the spread max/min across budgets (torch-lr-finder #68: an order of
   magnitude for the steepest-gradient rule).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

import torch

from lrkit import tasks
from lrkit.finder import find_lr
from lrkit.train import seed_everything

RULES = ("lrkit", "valley", "steepest", "lightning", "minimum")


def _plain(task, model, opt, batches, n: int) -> float:
    start = time.perf_counter()
    it = iter(batches)
    for _ in range(n):
        opt.zero_grad(set_to_none=True)
        loss = task.loss(model, next(it))
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def overhead(task_name: str, n: int = 100, repeats: int = 3
             ) -> tuple[float, float, float, float]:
    task = tasks.get(task_name)
    batches = list(itertools.islice(task.batches(0), n))  # same data for both, pre-drawn
    t_find, t_plain, t_loop = [], [], []
    for _ in range(repeats):
        seed_everything(0)
        model = task.build_model(0)
        opt = task.recipe.make_optimizer(model.parameters(), task.recipe.default_lr)
        t_plain.append(_plain(task, model, opt, batches, n))
        seed_everything(0)
        model = task.build_model(0)
        opt = task.recipe.make_optimizer(model.parameters(), task.recipe.default_lr)
        start = time.perf_counter()
        # end_lr kept below divergence so both sides train exactly n steps
        res = find_lr(model, opt, batches, step_fn=task.loss, num_iter=n,
                      start_lr=task.recipe.default_lr / 100, end_lr=task.recipe.default_lr)
        t_find.append(time.perf_counter() - start)
        t_loop.append(res.wall_time)  # the sweep's training loop alone
        assert res.stopped_at + 1 == n, (task_name, res.stop_reason, res.stopped_at)
    f, p = statistics.median(t_find), statistics.median(t_plain)
    return f, p, f / p, statistics.median(t_loop)


def num_iter_table(task_name: str, budgets=(50, 100, 200, 400), seed: int = 0) -> dict:
    task = tasks.get(task_name)
    out: dict[str, list[float | None]] = {r: [] for r in RULES}
    for n in budgets:
        res = find_lr(task, seed=seed, num_iter=n)
        for r in RULES:
            s = res.suggestions.get(r)
            out[r].append(None if s is None or s.lr is None else s.lr)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=["digits", "mnist5k", "mnist1d", "charlm"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--budgets", nargs="+", type=int, default=[50, 100, 200, 400])
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread")
    print("\n## Overhead: find_lr vs the same number of plain training steps (100)\n")
    print("| task | find_lr (s) | plain loop (s) | ratio | extra per step (us) | "
          "once: snapshot, restore, suggestions (ms) |")
    print("|---|---|---|---|---|---|")
    for name in args.tasks:
        f, p, r, loop = overhead(name, repeats=args.repeats)
        print(f"| {name} | {f:.3f} | {p:.3f} | {r:.3f} | {(loop - p) / 100 * 1e6:.0f} | "
              f"{(f - loop) * 1e3:.1f} |", flush=True)
    print(f"\n## Suggestion vs num_iter {args.budgets} (seed 0)\n")
    print("| task | rule | " + " | ".join(f"n={b}" for b in args.budgets) + " | spread max/min |")
    print("|---|---|" + "---|" * (len(args.budgets) + 1))
    for name in args.tasks:
        table = num_iter_table(name, tuple(args.budgets))
        for rule, lrs in table.items():
            vals = [v for v in lrs if v is not None]
            spread = f"{max(vals) / min(vals):.2f}x" if vals else "-"
            cells = " | ".join("none" if v is None else f"{v:.2g}" for v in lrs)
            print(f"| {name} | {rule} | {cells} | {spread} |", flush=True)


if __name__ == "__main__":
    main()
