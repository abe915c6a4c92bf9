"""``lrkit tune`` alone on ``user_optimizers.py``'s separable task, every torch optimizer, seeds 0-2.

The quick half of ``user_optimizers.py``: it skips the 23-LR grid (its best per optimizer is
read from ``BEST``, measured there: ``benchmarks/RESULTS.md``, twenty-first round) and runs only
``lrkit.tune``, printing each optimizer's picks, their test log-loss and the regret of their mean
against the grid's best, and writing them to ``--out`` (JSON). Compare two versions of lrkit by
running it from each checkout.

    python benchmarks/user_optimizers_tune.py --out results/user-optimizers-tune.json [Adam,...]

Used for the twenty-second round (the final run's LR cut on the monitor's ``lr_too_high``):
``results/user-optimizers-tune-before-lr-cut.json`` and ``results/user-optimizers-tune-lr-cut.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lrkit  # noqa: E402
from user_optimizers import OPTIMIZERS, make_task  # noqa: E402

#: the 23-LR x 3-seed grid's best mean test log-loss per optimizer (``user_optimizers.py``)
BEST = {"SGD": 0.0735, "SGD-momentum": 0.0816, "SGD-nesterov": 0.0799, "SGD-dampening": 0.0817,
        "ASGD": 0.0736, "Adam": 0.0763, "AdamW": 0.0814, "NAdam": 0.0731, "RAdam": 0.0768,
        "Adamax": 0.0789, "RMSprop": 0.0778, "Adagrad": 0.0728, "Adadelta": 0.0750}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="?", default=",".join(OPTIMIZERS),
                    help="comma-separated optimizers (default: all 13)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    out = {}
    for name in args.names.split(","):
        task = make_task(name)
        rows = []
        for seed in range(3):
            with tempfile.TemporaryDirectory() as d:
                t = lrkit.tune(task, out=d, progress=False, seed=seed)
            rows.append((t.lr, t.metric, t.family, [f["kind"] for f in t.findings]))
        regret = float(np.mean([r[1] for r in rows])) / BEST[name] - 1
        out[name] = {"rows": rows, "regret": regret}
        print(f"{name:14s} {100 * regret:+6.1f}%  "
              + ", ".join(f"{r[2]} {r[0]:.2g}: {r[1]:.4f}" for r in rows), flush=True)
    regrets = [v["regret"] for v in out.values()]
    print(f"mean {100 * np.mean(regrets):+.1f}%, median {100 * np.median(regrets):+.1f}%")
    args.out.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
