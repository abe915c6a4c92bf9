"""The noise floor of the regret: what a method scores when it picks (almost) the oracle's best.

    python benchmarks/noise_floor.py [--tasks digits mnist5k ...] [--workers 2]

For each task, full runs (the oracle's seeds, test split) at the oracle's best LR moved by
``10^(+-0.05)`` (12% either way, a fifth of the grid's spacing): with common random numbers a pick
of exactly the best grid LR reproduces the oracle's runs (regret 0), while any other LR draws fresh
run-to-run noise. The regrets printed here are the smallest a method can be expected to show
on that task; a method's regret below them is not distinguishable from the oracle's best.
Reads the oracles in ``results/oracle-<task>.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from lrkit import tasks
from lrkit.bench import _map, regret

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=tasks.names())
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    print("| task | oracle best LR | best metric | regret at best x 10^-0.05 | "
          "regret at best x 10^+0.05 |")
    print("|---|---|---|---|---|")
    for name in args.tasks:
        o = json.loads((RESULTS / f"oracle-{name}.json").read_text())
        lrs = [o["best_lr"] * 10**-0.05, o["best_lr"] * 10**0.05]
        jobs = [(name, lr, s, None, "test", None) for lr in lrs for s in o["seeds"]]
        res = _map(jobs, args.workers, f"noise floor {name}", False)
        cells = []
        for lr in lrs:
            m = [r["metric"] for r in res if r["lr"] == lr]
            reg = regret(float(np.mean(m)), o["best_metric"],
                         higher_is_better=o["higher_is_better"])
            cells.append(f"{100 * reg:+.1f}%")
        print(f"| {name} | {o['best_lr']:.3g} | {o['best_metric']:.4g} | {cells[0]} | "
              f"{cells[1]} |", flush=True)


if __name__ == "__main__":
    main()
