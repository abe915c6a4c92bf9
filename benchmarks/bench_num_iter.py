"""How the suggestion moves with ``num_iter`` (issue: at most 1.5x over 50..400 steps).

For every built-in task and seeds 0..2: lrkit's default range test (interleaved repeats of a
100-step sweep; one corrected sweep below 100) at num_iter = 50, 100, 200, 400, and each peer's
rule on its own single sweep of num_iter steps (``interleave=False``: what fastai,
torch-lr-finder and Lightning do). Spread = max/min of a rule's LR over the four budgets
(seed by seed; reported: seed 0, and the mean and max over the seeds). A rule that returns no LR
at some budget is marked.

Usage: ``python benchmarks/bench_num_iter.py [--tasks ...] [--seeds 3] [--out PATH]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lrkit.tasks  # noqa: E402
from lrkit.finder import find_lr  # noqa: E402

BUDGETS = (50, 100, 200, 400)
PEERS = ("minimum", "valley", "steepest", "lightning")


def spreads(task_name: str, seed: int) -> dict[str, list]:
    task = lrkit.tasks.get(task_name)
    out: dict[str, list] = {"lrkit": [], **{p: [] for p in PEERS}}
    for n in BUDGETS:
        out["lrkit"].append(find_lr(task, seed=seed, num_iter=n).lr)
        single = find_lr(task, seed=seed, num_iter=n, interleave=False)
        for p in PEERS:
            out[p].append(single.suggestions[p].lr)
    return out


def spread(lrs: list) -> float:
    if any(v is None for v in lrs):
        return float("inf")
    return max(lrs) / min(lrs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=lrkit.tasks.names())
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "num_iter.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    raw: dict = {}
    t0 = time.time()
    for name in args.tasks:
        raw[name] = [spreads(name, s) for s in range(args.seeds)]
        print(f"{name}: done ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    Path(args.out).write_text(json.dumps(raw, indent=1))
    rules = ["lrkit", *PEERS]
    print(f"Spread max/min of the suggestion over num_iter {BUDGETS}; seed 0 / mean over "
          f"{args.seeds} seeds / max over seeds (inf: no LR at some budget)\n")
    print("| task | " + " | ".join(rules) + " |")
    print("|---|" + "---|" * len(rules))
    for name, per_seed in raw.items():
        cells = []
        for r in rules:
            sp = [spread(d[r]) for d in per_seed]
            cells.append(f"{sp[0]:.2f} / {np.mean(sp):.2f} / {max(sp):.2f}")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
