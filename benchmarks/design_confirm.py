"""Design of the range test's confirm mode: how should a bounded budget of short runs, scored on
the task's ``"val"`` split, pick among LRs around the curve's suggestion?

(a) Collect (``results/confirm-runs.json``, skipped when present unless ``--recollect``): the val
    metric of short runs -- fractions ``FRACTIONS`` of the full horizon, the recipe's schedule
    rebuilt for the shorter horizon, exactly as ``find_lr(confirm=True)`` runs them -- at every
    LR of the oracle grid within 1.5 decades of a seed's range-test suggestion (the LR for the
    task's recipe, ``Suggestion.lr_for``), seeds 0..4.
(b) Simulate strategies offline. The range-test suggestion of each seed is lrkit's rule on
    ``results/curves.json`` (``design_rule.py`` collects it), snapped to the oracle grid; a
    strategy takes candidates on the grid around it, "trains" them at its horizons (reads the
    collected val metric of that seed), picks one, and is scored by the oracle's mean **test**
    metric at the pick (regret vs the oracle's best; within tolerance = regret <= 1%).
    Printed per strategy: mean and max regret over tasks, tasks within tolerance, and its cost
    (steps of the short runs, as a fraction of one full run; the 100-step range test comes on top).
    Leave-one-task-out: choose the strategy on 5 tasks, score the held-out one.

Usage: ``python benchmarks/design_confirm.py [--recollect] [--workers 2]``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from design_rule import RESULTS, SEEDS, load_curves, load_oracles  # noqa: E402

RUNS = RESULTS / "confirm-runs.json"
FRACTIONS = (1 / 9, 1 / 6, 1 / 4, 1 / 3, 1 / 2)
SPAN = 1.5  # decades around the suggestions


def _steps(full: int, frac: float) -> int:
    return max(1, int(round(frac * full)))


def suggestions(curves: dict, oracles: dict) -> dict:
    """task -> per seed: index of the oracle grid point nearest to lrkit's suggestion."""
    from lrkit import suggest as S
    from design_rule import recipe_schedules

    family = recipe_schedules(curves)
    out = {}
    for t, cs in curves.items():
        grid = np.log10(oracles[t]["grid"])
        idx = []
        for x, y in cs:
            lr = S.suggest(x, y).lr_for(family[t])
            idx.append(None if lr is None else int(np.argmin(np.abs(grid - math.log10(lr)))))
        out[t] = idx
    return out


def collect(curves: dict, oracles: dict, workers: int) -> dict:
    from lrkit import tasks
    from lrkit.bench import _map

    picks = suggestions(curves, oracles)
    out: dict = {}
    for t in curves:
        full = tasks.get(t).recipe.steps
        grid = oracles[t]["grid"]
        found = [i for i in picks[t] if i is not None]
        span = int(round(SPAN / 0.25))
        keep = sorted({j for i in found for j in range(i - span, i + span + 1)
                       if 0 <= j < len(grid)})
        jobs = [(t, grid[j], s, _steps(full, f), "val", None)
                for j in keep for s in SEEDS for f in FRACTIONS]
        res = _map(jobs, workers, f"confirm runs {t}", True)
        table = {}
        for job, r in zip(jobs, res):
            table[f"{job[1]!r}|{job[2]}|{job[3]}"] = r["metric"]
        out[t] = {"full": full, "table": table}
        RUNS.write_text(json.dumps(out))
    return out


class Sim:
    """Reads the collected val metric of (task, grid index, seed, fraction)."""

    def __init__(self, runs: dict, oracles: dict) -> None:
        self.runs, self.oracles = runs, oracles

    def val(self, t: str, j: int, seed: int, frac: float) -> float:
        o = self.oracles[t]
        full = self.runs[t]["full"]
        key = f"{o['grid'][j]!r}|{seed}|{_steps(full, frac)}"
        v = self.runs[t]["table"].get(key)
        if v is None:
            return -math.inf if o["higher_is_better"] else math.inf
        return float(v)

    def score_key(self, t: str, v: float) -> float:
        """Smaller is better."""
        if v != v:
            return math.inf
        return -v if self.oracles[t]["higher_is_better"] else v

    def regret(self, t: str, j: int) -> float:
        o = self.oracles[t]
        m = o["mean"][j]
        if m is None or not math.isfinite(m):
            return 1.0
        best = o["best_metric"]
        r = (best - m) / abs(best) if o["higher_is_better"] else (m - best) / abs(best)
        return float(min(max(r, 0.0), 1.0))


def strategy(sim: Sim, t: str, centre: int, seed: int, *, offsets: tuple[int, ...],
             rungs: tuple[float, ...], pick: str, tol: float = 0.01) -> tuple[int, float]:
    """One confirm strategy on one (task, seed): returns (picked grid index, cost fraction).

    Candidates ``centre + offsets`` (quarter decades); successive halving with eta = 3 over
    ``rungs`` (fractions of a full run; one rung = every candidate at that horizon); ``pick``:
    "best" (argmax of the last rung), "lowest" (lowest LR within ``tol`` of the last rung's best),
    "fit" (the maximum of a parabola in log-LR through the last rung's candidates, clipped to
    them, snapped to the grid; needs >= 3 candidates at the last rung, else "best").
    """
    n = len(sim.oracles[t]["grid"])
    if pick.startswith("walk"):
        return _walk(sim, t, centre, seed, offsets=offsets, frac=rungs[-1],
                     max_ext=int(pick[4:] or 0))
    alive = sorted({min(max(centre + o, 0), n - 1) for o in offsets})
    cost = 0.0
    last: list[tuple[int, float]] = []
    for k, f in enumerate(rungs):
        last = [(j, sim.val(t, j, seed, f)) for j in alive]
        cost += f * len(alive)
        if k == len(rungs) - 1:
            break
        keep = max(1, math.ceil(len(alive) / 3))
        alive = sorted(j for j, _ in sorted(last, key=lambda jv: sim.score_key(t, jv[1]))[:keep])
        if len(alive) == 1:
            break
    best_j, best_v = min(last, key=lambda jv: sim.score_key(t, jv[1]))
    if pick == "lowest":
        near = [j for j, v in last if math.isfinite(v)
                and abs(v - best_v) <= tol * max(abs(best_v), 1e-12)]
        return (min(near) if near else best_j), cost
    if pick == "fit" and len(last) >= 3:
        xs = np.array([j for j, _ in last], dtype=float)
        vs = np.array([-sim.score_key(t, v) for _, v in last])
        if np.all(np.isfinite(vs)):
            a, b, _ = np.polyfit(xs, vs, 2)
            if a < 0:
                x_star = float(np.clip(-b / (2 * a), xs.min(), xs.max()))
                return int(round(x_star)), cost
    return best_j, cost


def _walk(sim: Sim, t: str, centre: int, seed: int, *, offsets: tuple[int, ...], frac: float,
          max_ext: int) -> tuple[int, float]:
    """Every candidate at horizon ``frac``; while the best is at an edge of the tried set, try
    the next grid LR beyond that edge (at most ``max_ext`` times). Pick the best."""
    n = len(sim.oracles[t]["grid"])
    tried = {j: sim.val(t, j, seed, frac)
             for j in sorted({min(max(centre + o, 0), n - 1) for o in offsets})}
    for _ in range(max_ext):
        best = min(tried, key=lambda j: sim.score_key(t, tried[j]))
        nxt = best - 1 if best == min(tried) else best + 1 if best == max(tried) else None
        if nxt is None or not 0 <= nxt < n or nxt in tried:
            break
        tried[nxt] = sim.val(t, nxt, seed, frac)
    best = min(tried, key=lambda j: sim.score_key(t, tried[j]))
    return best, frac * len(tried)


def evaluate(sim: Sim, picks: dict, tasks_: list[str], **kw) -> dict:
    per = {}
    for t in tasks_:
        regs, costs = [], []
        for seed, c in zip(SEEDS, picks[t]):
            if c is None:
                regs.append(1.0)
                continue
            j, cost = strategy(sim, t, c, seed, **kw)
            regs.append(sim.regret(t, j))
            costs.append(cost)
        # regret of the mean metric ~ mean of the regrets (the oracle's metric is per LR)
        per[t] = (float(np.mean(regs)), float(np.mean(costs)) if costs else 0.0)
    regs = [v[0] for v in per.values()]
    return {"mean": float(np.mean(regs)), "max": float(np.max(regs)),
            "within": sum(r <= 0.01 + 1e-12 for r in regs),
            "cost": float(np.mean([v[1] for v in per.values()])), "per": per}


def strategies() -> dict[str, dict]:
    out = {}
    for shift, width, rungs, pick in itertools.product(
            (0, 1, 2), (1, 2, 3), ((1 / 9, 1 / 3), (1 / 6, 1 / 2), (1 / 6,), (1 / 4,), (1 / 3,),
                                   (1 / 9, 1 / 3, 1 / 2)),
            ("best", "lowest", "fit", "walk2", "walk4")):
        if pick.startswith("walk") and len(rungs) > 1:
            continue
        offsets = tuple(range(shift - width, shift + width + 1))
        name = f"shift{shift:+d} w{width} rungs{'/'.join(f'{r:.2f}' for r in rungs)} {pick}"
        out[name] = {"offsets": offsets, "rungs": rungs, "pick": pick}
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recollect", action="store_true")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args(argv)
    curves = load_curves()
    oracles = load_oracles(curves)
    runs = (collect(curves, oracles, args.workers) if args.recollect or not RUNS.exists()
            else json.loads(RUNS.read_text()))
    # the runs were collected on the tasks of their day; curves.json has gained tasks since
    curves = {t: c for t, c in curves.items() if t in runs}
    sim = Sim(runs, oracles)
    picks = suggestions(curves, oracles)
    tasks_ = list(curves)
    base = {t: [sim.regret(t, c) if c is not None else 1.0 for c in picks[t]] for t in tasks_}
    print("range test alone (lrkit rule snapped to the grid): mean regret "
          f"{np.mean([np.mean(v) for v in base.values()]) * 100:.2f}%  "
          + "  ".join(f"{t} {np.mean(v) * 100:.1f}%" for t, v in base.items()))
    rows = {name: evaluate(sim, picks, tasks_, **kw) for name, kw in strategies().items()}
    order = sorted(rows, key=lambda n: (-rows[n]["within"], rows[n]["mean"]))
    print("\ncheapest strategies with every task within tolerance, by cost then max regret:")
    ok = sorted((n for n in rows if rows[n]["within"] == len(tasks_)),
                key=lambda n: (round(rows[n]["cost"], 2), rows[n]["max"]))
    for name in ok[:12]:
        r = rows[name]
        print(f"  {name:<44} cost {r['cost']:.2f}  mean {r['mean'] * 100:.2f}%  "
              f"max {r['max'] * 100:.2f}%")
    print(f"\n{'strategy':<44}{'mean':>7}{'max':>7}{'ok':>4}{'cost':>6}  per task (regret %)")
    for name in order[:args.top]:
        r = rows[name]
        cells = " ".join(f"{r['per'][t][0] * 100:5.1f}" for t in tasks_)
        print(f"{name:<44}{r['mean'] * 100:6.2f}%{r['max'] * 100:6.1f}%{r['within']:>4}"
              f"{r['cost']:6.2f}  {cells}")
    print("\nleave-one-task-out (strategy chosen on the other tasks: most within tol, then mean "
          "regret, then cost):")
    lo = []
    for t in tasks_:
        rest = [u for u in tasks_ if u != t]

        def key(name: str) -> tuple:
            sub = [rows[name]["per"][u][0] for u in rest]
            return (-sum(r <= 0.01 + 1e-12 for r in sub), float(np.mean(sub)),
                    rows[name]["cost"])

        best = min(rows, key=key)
        r = rows[best]["per"][t][0]
        lo.append(r)
        print(f"  held out {t:<12} {best:<44} regret {r * 100:5.2f}%")
    print(f"  LOTO mean regret {np.mean(lo) * 100:.2f}%, within tol {sum(r <= 0.01 for r in lo)}"
          f"/{len(lo)}")


if __name__ == "__main__":
    main()
