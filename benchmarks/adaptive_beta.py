"""The multiplicative hypergradient rule's beta (the largest relative LR change per step):
0.05 (the default, ``lrkit.optim.hd.MULTIPLICATIVE_BETA``) against 0.1 and 0.2. SGD-HD or Adam-HD
(multiplicative) started at x1/10, x1 and x10 of each task's base-optimizer best LR
(``bench_adaptive.py``'s families), 3 seeds, regret against the task's oracle.

    python benchmarks/adaptive_beta.py mnist5k,digits,diabetes,logreg
    python benchmarks/adaptive_beta.py charlm,digits-long,mnist1d

Needs the cached ``results/adaptive/<task>.json`` of ``bench_adaptive.py oracles``.
"""

import sys
sys.path.insert(0, "benchmarks")
import numpy as np
import bench_adaptive as BA
from lrkit import bench
data = BA._load()
tasks = sys.argv[1].split(",")
out = {}
for task in tasks:
    entry = data[task]
    o = BA._task_oracle(task)
    for base, spec0 in (("sgd", "sgdhd"), ("adam", "adamhd"), ("adamw", "adamhd")):
        best = BA._base_best(task, entry, base)
        if best is None:
            continue
        for beta in (0.05, 0.1, 0.2):
            spec = f"{spec0}:hypergrad=multiplicative:hypergrad_lr={beta}"
            row = []
            for k in (0.1, 1.0, 10.0):
                runs = bench.optimizer_runs(task, spec, [best * k], seeds=(0, 1, 2), workers=1, progress=False)
                m = float(np.mean([r["metric"] for r in runs]))
                row.append(o.regret(m) if np.isfinite(m) else float("inf"))
            print(task, base, beta, " ".join(f"{100*r:+.1f}%" for r in row), flush=True)
