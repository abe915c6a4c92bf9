"""The floor of choosing an LR on the validation split, for built-in tasks.

Tune, confirm mode and search see only the ``"val"`` split; the oracle scores on ``"test"``.
This takes each task's oracle grid (the recipe's schedule, the oracle's seeds), scores the
full runs within ``--reach`` points of the oracle's best on ``"val"``, and reports the LR val
ranks first (the lower on a tie) and that LR's test regret against the oracle's best. Where
it exceeds the oracle's tolerance, no choice made on val (a full grid of full runs included)
meets the tolerance: the two splits disagree.

    python benchmarks/val_floor.py cancer-small digits-small diabetes [--reach 4]
"""

from __future__ import annotations

import argparse

import torch

from lrkit import bench, tasks


def floor(name: str, reach: int = 4) -> dict:
    """Val's pick among the oracle grid's LRs near its best, and its test regret."""
    orc = bench.oracle(name, progress=False)
    b = orc.best_index
    ks = list(range(max(0, b - reach), min(len(orc.grid), b + reach + 1)))
    pick, val = bench.val_choice(tasks.get(name), [orc.grid[k] for k in ks], orc.seeds)
    kv = ks[pick]
    return {"task": name, "seeds": list(orc.seeds), "tol": orc.tol,
            "grid": [orc.grid[k] for k in ks], "val": val,
            "test": [orc.mean[k] for k in ks], "best_lr": orc.grid[b],
            "val_lr": orc.grid[kv],
            "regret": bench.regret(orc.mean[kv], orc.mean[b],
                                   higher_is_better=orc.higher_is_better)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tasks", nargs="+")
    p.add_argument("--reach", type=int, default=4)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    print("| task | oracle's best LR (test) | val's pick | its test regret | tolerance | "
          "LR: val / test means |")
    print("|---|---|---|---|---|---|")
    for name in args.tasks:
        r = floor(name, args.reach)
        rows = ", ".join(f"{lr:.3g}: {v:.4g} / {t:.4g}"
                         for lr, v, t in zip(r["grid"], r["val"], r["test"]))
        print(f"| {name} | {r['best_lr']:.3g} | {r['val_lr']:.3g} | {100 * r['regret']:+.1f}% | "
              f"{100 * r['tol']:g}% | {rows} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
