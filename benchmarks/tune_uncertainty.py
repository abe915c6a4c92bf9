"""How often ``TuneResult.lr_range`` (the short runs' bracket of the best LR) holds the full-run
grid's best LR, on the held-out random tasks; with ``--confirm``, confirm mode's
(``find_lr(task, confirm=True).confirm["lr_range"]``, run here on the same tasks, seeds 0 and 1).

``heldout_random_tasks.py`` stores each tune run's ``lr_range`` beside the task's grid of full
runs (11 LRs half a decade apart, 2 seeds). A range holds the grid's best when ``low < best <
high`` (an open side holds anything); with ``--tol D`` each side is widened by ``D`` decades
(0.25: half the grid's spacing, its resolution).

    python benchmarks/tune_uncertainty.py results/heldout/random-{0,1,2}.json
    python benchmarks/tune_uncertainty.py --tol 0.25 results/heldout/cnn-{10,11,12}.json
    python benchmarks/tune_uncertainty.py --confirm results/heldout/random-{0,1,2}.json
    python benchmarks/tune_uncertainty.py --builtin results/tune.json

``--builtin`` reads ``bench_tune.py``'s runs on the built-in tasks and holds each range against
the oracle of the family tune chose (25 LRs a quarter decade apart, 5 seeds): the best constant
LR for a constant pick, the recipe oracle's for a pick of the recipe's own family; picks of
other families have no oracle and are left out.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from pathlib import Path

import numpy as np


def coverage(rows: list[dict], tol: float = 0.0) -> dict:
    """Counts of runs (``row["tune"]``) whose ``lr_range`` holds their task's grid best, by kind
    of range."""
    out = {k: [0, 0] for k in ("all", "two-sided", "lower only", "upper only", "open")}
    widths = []
    for r in rows:
        best = float(r["best_lr"])
        for t in r["tune"]:
            lo, hi = t.get("lr_range") or (None, None)
            inside = ((lo is None or lo / 10 ** tol < best)
                      and (hi is None or best < hi * 10 ** tol))
            kind = ("two-sided" if lo is not None and hi is not None else
                    "lower only" if lo is not None else "upper only" if hi is not None
                    else "open")
            if kind == "two-sided":
                widths.append(math.log10(hi / lo))
            for k in ("all", kind):
                out[k][0] += inside
                out[k][1] += 1
    out["median_width_decades"] = float(np.median(widths)) if widths else None
    return out


def confirm_rows(path: Path) -> list[dict]:
    """The rows of a held-out file with ``tune`` replaced by confirm mode's picks and ranges
    (the file's tasks drawn again as ``heldout_random_tasks.py`` drew them)."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import heldout_random_tasks as heldout

    from lrkit.finder import find_lr

    torch.set_num_threads(1)
    name = path.stem
    arch = "cnn" if name.startswith("cnn") else "seq" if name.startswith("seq") else "mlp"
    seed = int(name.split("-")[1])
    rng = random.Random(seed)
    rows = json.loads(path.read_text())
    out = []
    for i, row in enumerate(rows):
        cfg, task = heldout.draw(rng, 1000 * seed + i, arch)
        if cfg != row["cfg"]:
            raise SystemExit(f"{path}: row {i} is not the task drawn again")
        picks = []
        for s in (0, 1):
            c = find_lr(task, confirm=True, seed=s, progress=False).confirm
            picks.append({"lr": c["winner"], "lr_range": c["lr_range"]})
        out.append(dict(row, tune=picks))
        print(f"{name} {i:2d}: grid best {row['best_lr']:.3g}, confirm "
              + ", ".join(f"{p['lr']:.3g} in {p['lr_range']}" for p in picks), flush=True)
    return out


def builtin_rows(path: Path) -> list[dict]:
    """``bench_tune.py``'s rows as rows of this script (``best_lr``, and ``tune`` the runs whose
    family has an oracle)."""
    out = []
    for row in json.loads(path.read_text())["rows"]:
        oracle = json.loads((path.parent / f"oracle-{row['task']}.json").read_text())
        truth = {"constant": row["constant"]["best_lr"], row["recipe_schedule"]: oracle["best_lr"]}
        for fam, best in truth.items():
            runs = [r for r in row["runs"] if r["family"] == fam]
            if runs:
                out.append({"best_lr": best, "tune": runs})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--tol", type=float, default=0.0, help="widen each side by this many decades")
    p.add_argument("--confirm", action="store_true",
                   help="confirm mode's ranges (run here) instead of tune's (stored)")
    p.add_argument("--builtin", action="store_true",
                   help="the files are bench_tune.py's (results/tune.json): the built-in tasks")
    args = p.parse_args(argv)
    rows = [r for f in args.files for r in (confirm_rows(f) if args.confirm else
                                             builtin_rows(f) if args.builtin else
                                             json.loads(f.read_text()))]
    missing = sum("lr_range" not in t for r in rows for t in r["tune"])
    if missing:
        raise SystemExit(f"{missing} tune runs carry no lr_range: re-run heldout_random_tasks.py "
                         "with --truth on these files")
    c = coverage(rows, args.tol)
    for k in ("all", "two-sided", "lower only", "upper only", "open"):
        hit, n = c[k]
        print(f"{k:11s} {hit:4d} / {n:4d} hold the grid's best")
    if c["median_width_decades"] is not None:
        print(f"two-sided ranges: median width {c['median_width_decades']:.2f} decades")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
