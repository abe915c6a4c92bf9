"""The multiplicative hypergradient rule's beta (the largest relative LR change per step):
0.05 (the default, ``lrkit.optim.hd.MULTIPLICATIVE_BETA``) against 0.1 and 0.2. SGD-HD or Adam-HD
(multiplicative) started at x1/10, x1 and x10 of each task's base-optimizer best LR
(``bench_adaptive.py``'s families), 3 seeds, regret against the task's oracle.

    python benchmarks/adaptive_beta.py mnist5k,digits,diabetes,logreg
    python benchmarks/adaptive_beta.py charlm,digits-long,mnist1d

Needs the cached ``results/adaptive/<task>.json`` of ``bench_adaptive.py oracles``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_adaptive as BA  # noqa: E402

from lrkit import bench  # noqa: E402

BETAS = (0.05, 0.1, 0.2)
STARTS = (0.1, 1.0, 10.0)
#: base optimizer -> its HD version (Adam-HD takes decoupled decay under an AdamW recipe)
HD = (("sgd", "sgdhd"), ("adam", "adamhd"), ("adamw", "adamhd"))


def main(tasks: list[str]) -> None:
    data = BA._load()
    for task in tasks:
        entry, oracle = data[task], BA._task_oracle(task)
        for base, hd in HD:
            best = BA._base_best(task, entry, base)
            if best is None:
                continue
            for beta in BETAS:
                spec = f"{hd}:hypergrad=multiplicative:hypergrad_lr={beta}"
                row = []
                for k in STARTS:
                    runs = bench.optimizer_runs(task, spec, [best * k], seeds=(0, 1, 2),
                                                workers=1, progress=False)
                    m = float(np.mean([r["metric"] for r in runs]))
                    row.append(oracle.regret(m) if np.isfinite(m) else float("inf"))
                print(task, base, beta, " ".join(f"{100 * r:+.1f}%" for r in row), flush=True)


if __name__ == "__main__":
    main(sys.argv[1].split(","))
