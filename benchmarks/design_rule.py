"""Design and offline scoring of range-test suggestion rules.

(a) Collect range-test curves (``find_lr(task, seed=s)`` with its defaults, 1e-7..10 over 100
    iterations) for every built-in task and seeds 0..4 into ``results/curves.json`` (skipped when
    the file exists, unless ``--recollect``).
(b) Score every rule of :func:`lrkit.suggest.methods` offline: the rule's LR for the task's recipe
    (``Suggestion.lr_for``: lrkit's cosine peak on annealed recipes, the peers' plain number) gets an
    estimated metric by interpolating the oracle's mean metric (``results/oracle-<task>.json``)
    linearly in log10(LR) (edge value outside the grid; a non-finite mean counts as the worst),
    regret relative to the oracle's best (``(best - m)/|best|`` if higher is better, else
    ``(m - best)/|best|``; capped at 100%; "no suggestion" scores as the task's default LR would not
    be known, so it counts as 100%), and in-band (``lo <= lr <= hi`` with the oracle's ``band``).
    Printed per rule: mean regret over tasks (mean over seeds first), in-band count, and the
    seed spread (max/min LR over the seeds of a task, mean over tasks).
(c) Leave-one-task-out for lrkit's constant ``k`` (the divisor of the valley-floor centre; the
    bandwidth 0.4 and floor 1/3 were picked on all tasks):
    tune k on 5 tasks by grid search, score the held-out task with it.

Usage: ``python benchmarks/design_rule.py [--recollect]``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CURVES = RESULTS / "curves.json"
SEEDS = range(5)


def collect(path: Path = CURVES) -> dict:
    import torch

    import lrkit.tasks
    from lrkit.finder import find_lr

    torch.set_num_threads(1)
    out: dict = {}
    for name in [n for n in lrkit.tasks.names() if (RESULTS / f"oracle-{n}.json").exists()]:
        out[name] = []
        for s in SEEDS:
            r = find_lr(lrkit.tasks.get(name), seed=s)
            out[name].append({"seed": s, "lrs": list(map(float, r.lrs)),
                              "losses": [float(v) if math.isfinite(v) else None
                                         for v in r.losses]})
            print(f"collected {name} seed {s}: {len(r.lrs)} points, {r.stop_reason}",
                  file=sys.stderr)
    path.write_text(json.dumps(out))
    return out


def load_curves(path: Path = CURVES) -> dict:
    d = json.loads(path.read_text())
    return {k: [(np.array(c["lrs"]), np.array([np.nan if v is None else v for v in c["losses"]]))
                for c in v] for k, v in d.items()}


def load_oracles(names) -> dict:
    return {n: json.loads((RESULTS / f"oracle-{n}.json").read_text()) for n in names}


def regret(oracle: dict, lr: float | None) -> float:
    """Estimated regret of a constant LR from the oracle's mean metric (interpolated in log10)."""
    if lr is None or not math.isfinite(lr) or lr <= 0:
        return 1.0
    grid = np.log10(np.asarray(oracle["grid"], dtype=float))
    hib = bool(oracle["higher_is_better"])
    mean = np.array([np.nan if v is None else v for v in oracle["mean"]], dtype=float)
    worst = np.nanmin(mean) if hib else np.nanmax(mean)
    mean = np.where(np.isfinite(mean), mean, worst if hib else np.inf)
    best = float(oracle["best_metric"])
    x = math.log10(lr)
    if x <= grid[0]:
        m = mean[0]
    elif x >= grid[-1]:
        m = mean[-1]
    else:
        i = int(np.searchsorted(grid, x)) - 1
        t = (x - grid[i]) / (grid[i + 1] - grid[i])
        a, b = mean[i], mean[i + 1]
        m = a + t * (b - a) if np.isfinite(a) and np.isfinite(b) else (b if t > 0.5 else a)
    r = (best - m) / abs(best) if hib else (m - best) / abs(best)
    if not math.isfinite(r):
        return 1.0
    return float(min(max(r, 0.0), 1.0))


def in_band(oracle: dict, lr: float | None) -> bool:
    if lr is None:
        return False
    lo, hi = oracle["band"]
    return lo <= lr <= hi


def score(picks: dict, oracles: dict) -> dict:
    """picks: task -> list of LRs (per seed). Returns mean regret, in-band count, spread."""
    regs, nb, spreads, per = [], 0, [], {}
    for t, lrs in picks.items():
        r = [regret(oracles[t], lr) for lr in lrs]
        regs.append(float(np.mean(r)))
        nb += sum(in_band(oracles[t], lr) for lr in lrs)
        ok = [lr for lr in lrs if lr is not None]
        spreads.append(max(ok) / min(ok) if len(ok) >= 2 else float("nan"))
        per[t] = (float(np.mean(r)), float(np.exp(np.mean(np.log(ok)))) if ok else None)
    return {"regret": float(np.mean(regs)), "in_band": nb, "n": sum(len(v) for v in picks.values()),
            "spread": float(np.nanmean(spreads)), "per_task": per}


def recipe_schedules(names) -> dict:
    """task -> its recipe's schedule family (the LR a rule hands over is the one for it)."""
    import lrkit.tasks

    return {n: lrkit.tasks.get(n).recipe.schedule for n in names}


def table(rows: dict, oracles: dict) -> None:
    tasks = list(oracles)
    head = f"{'rule':<12}{'regret':>8}{'in band':>9}{'spread':>8}  " + "  ".join(
        f"{t[:10]:>16}" for t in tasks)
    print(head)
    for name, sc in rows.items():
        cells = "  ".join(
            f"{sc['per_task'][t][0] * 100:6.1f}% @{sc['per_task'][t][1] or float('nan'):7.2g}"
            for t in tasks)
        print(f"{name:<12}{sc['regret'] * 100:7.1f}%{sc['in_band']:>5}/{sc['n']:<3}"
              f"{sc['spread']:8.2f}  {cells}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recollect", action="store_true")
    args = ap.parse_args(argv)
    if args.recollect or not CURVES.exists():
        collect()
    from lrkit import suggest as S

    curves = load_curves()
    oracles = load_oracles(curves)
    family = recipe_schedules(curves)
    rows = {}
    for m in S.methods():
        # the LR for the task's recipe: lrkit's cosine peak on annealed recipes, the peers' number
        rows[m] = score({t: [S.suggest(x, y, m).lr_for(family[t]) for x, y in cs]
                         for t, cs in curves.items()}, oracles)
    print("Offline score (regret from the oracle's mean metric; 5 seeds x %d tasks)" % len(curves))
    table(rows, oracles)

    # leave-one-task-out for lrkit's one tuned constant k
    ks = np.round(10 ** np.arange(0.0, 1.51, 0.05), 3)
    cache = {k: {t: [S.lrkit_rule(x, y, k=k).lr_for(family[t]) for x, y in cs]
                 for t, cs in curves.items()} for k in ks}
    print("\nlrkit k sweep (all tasks):")
    for k in ks:
        sc = score(cache[k], oracles)
        print(f"  k={k:6.3f} regret {sc['regret'] * 100:5.1f}%  in band {sc['in_band']}/{sc['n']}")
    print("\nleave-one-task-out (k tuned on the other tasks by mean regret):")
    lo_regs, lo_band = [], 0
    for t in curves:
        rest = [u for u in curves if u != t]
        def fit(k):
            return score({u: cache[k][u] for u in rest}, {u: oracles[u] for u in rest})["regret"]
        kbest = min(ks, key=fit)
        sc = score({t: cache[kbest][t]}, {t: oracles[t]})
        lo_regs.append(sc["regret"])
        lo_band += sc["in_band"]
        print(f"  held out {t:<12} k*={kbest:6.3f}  regret {sc['regret'] * 100:5.1f}%  "
              f"in band {sc['in_band']}/5")
    print(f"  LOTO mean regret {np.mean(lo_regs) * 100:.1f}%, in band {lo_band}/"
          f"{5 * len(curves)}")


if __name__ == "__main__":
    main()
