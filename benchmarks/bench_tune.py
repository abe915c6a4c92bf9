"""Benchmark of ``lrkit.tune`` on the built-in tasks: quality against oracle and peers, and cost.

    python benchmarks/bench_tune.py                      # every built-in task, 3 seeds
    python benchmarks/bench_tune.py --task digits --seeds 5

For each task and seed ``s`` (the oracle's seeds, so the final runs share their random numbers with
the oracle's): one ``tune(task, seed=s)`` with the defaults (budget 2 full runs, five schedules),
report and all. Compared with

- the **best constant-LR result**: the oracle's best mean metric for tasks whose recipe is
  constant; for annealed recipes (mnist1d, charrnn: cosine, charlm: warmup-cosine) a constant-LR
  grid of 5 LRs a quarter decade apart at and below the recipe oracle's best LR (9 for mnist1d,
  measured first), same seeds, measured here
  and cached in ``benchmarks/results/tune-constant-<task>.json``;
- the **oracle of the recipe's own schedule** (``benchmarks/results/oracle-<task>.json``):
  the regret, which may be negative when tune's schedule choice beats the recipe;
- the **peers' rules** (fastai's four, Lightning's, torch-lr-finder's): the mean metric of a full
  run at their suggestion, from ``benchmarks/results/methods.json``.

Writes ``benchmarks/results/tune.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lrkit import bench, schedules, tasks, train  # noqa: E402
from lrkit.tune import tune  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
#: the constant-LR grid around an annealed recipe's oracle best LR, in quarter decades (a
#: constant LR's best lies at or below an annealed schedule's best peak)
CONSTANT_GRID = (-4, -3, -2, -1, 0)
PEERS = ("fastai-minimum", "fastai-steep", "fastai-valley", "fastai-slide", "lightning",
         "torch-lr-finder")


def load_oracle(name: str) -> bench.Oracle | None:
    p = RESULTS / f"oracle-{name}.json"
    if not p.exists():
        return None
    return bench.Oracle.from_dict(json.loads(p.read_text()))


def constant_best(task, oracle: bench.Oracle, seeds: list[int],
                  offsets: tuple[int, ...] = CONSTANT_GRID) -> dict:
    """The best constant-LR mean metric: the oracle itself for constant recipes, else a 9-point
    quarter-decade constant grid around the recipe oracle's best LR (cached)."""
    if task.recipe.schedule == "constant":
        return {"source": "oracle", "best_lr": oracle.best_lr, "best": oracle.best_metric}
    path = RESULTS / f"tune-constant-{task.name}.json"
    if path.exists():
        d = json.loads(path.read_text())
        if d["seeds"] == seeds:
            return d
    grid = [oracle.best_lr * 10 ** (0.25 * k) for k in offsets]
    means = []
    for lr in grid:
        vals = []
        for s in seeds:
            r = train.run(task, schedules.family("constant", lr, task.recipe.steps), seed=s)
            vals.append(r.metric)
        means.append(statistics.fmean(vals) if all(math.isfinite(v) for v in vals)
                     else math.nan)
        print(f"  constant grid {task.name} lr {lr:.3g}: {means[-1]:.4g}", flush=True)
    sign = 1.0 if task.higher_is_better else -1.0
    i = max((j for j in range(len(grid)) if math.isfinite(means[j])),
            key=lambda j: sign * means[j])
    d = {"source": f"constant grid, {len(grid)} LRs x {len(seeds)} seeds", "seeds": seeds,
         "task": task.name,
         "grid": grid, "means": means, "best_lr": grid[i], "best": means[i],
         "at_edge": i in (0, len(grid) - 1)}
    path.write_text(json.dumps(d, indent=1))
    return d


def peers(name: str) -> dict:
    """Each peer rule's mean metric on ``name`` from ``methods.json`` or, for a task measured on
    its own (a held-out task), ``methods-<name>.json``."""
    results = []
    for p in (RESULTS / "methods.json", RESULTS / f"methods-{name}.json"):
        if p.exists():
            results += json.loads(p.read_text())["results"]
    out = {}
    for r in results:
        if r["task"] == name and r["method"] in PEERS:
            ms = [m for m in r["metrics"]]
            out[r["method"]] = statistics.fmean(ms)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", action="append", default=None)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", default=str(RESULTS / "tune.json"))
    ap.add_argument("--constant-grid", default=",".join(map(str, CONSTANT_GRID)),
                    help="constant-LR grid for annealed recipes: quarter-decade offsets from "
                         "the recipe oracle's best LR")
    args = ap.parse_args()
    torch.set_num_threads(1)
    names = args.task or tasks.names()
    seeds = list(range(args.seeds))
    rows = []
    start = time.perf_counter()
    for name in names:
        task = tasks.get(name)
        oracle = load_oracle(name)
        runs = []
        for s in seeds:
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp:
                res = tune(task, seed=s, out=Path(tmp) / "run", progress=False)
            wall = time.perf_counter() - t0
            final = next(st for st in res.stages if st.name == "final run")
            runs.append({"seed": s, "family": res.family, "lr": res.lr, "metric": res.metric,
                         "cost_steps": res.cost_steps, "cost_runs": res.cost_runs,
                         "stages": {st.name: st.cost_steps for st in res.stages},
                         "findings": [f["kind"] for f in res.findings], "wall": wall,
                         "metric_at_end": final.outcome.get("metric_at_end"),
                         "checkpoint_step": final.outcome.get("best_val_checkpoint_step"),
                         "lr_range": list(res.lr_range)})
            print(f"{name} seed {s}: {res.family} {res.lr:.3g} -> {res.metric:.4g}, "
                  f"{res.cost_runs:.2f} runs, {wall:.0f} s", flush=True)
        mean = statistics.fmean(r["metric"] for r in runs)
        row = {"task": name, "metric_name": task.metric, "higher_is_better": task.higher_is_better,
               "steps": task.recipe.steps, "recipe_schedule": task.recipe.schedule,
               "runs": runs, "mean": mean,
               "se": statistics.stdev([r["metric"] for r in runs]) / math.sqrt(len(runs))
               if len(runs) > 1 else 0.0,
               "cost_runs_max": max(r["cost_runs"] for r in runs)}
        if oracle is not None:
            const = constant_best(task, oracle, seeds,
                                  tuple(int(k) for k in args.constant_grid.split(",")))
            row["constant"] = const
            row["tol"] = oracle.tol
            row["regret_vs_constant"] = bench.regret(mean, const["best"],
                                                     higher_is_better=task.higher_is_better)
            row["within_tol_of_constant"] = row["regret_vs_constant"] <= oracle.tol
            row["oracle_best"] = oracle.best_metric
            row["regret_vs_recipe_oracle"] = oracle.regret(mean)
        p = peers(name)
        if p:
            sign = 1.0 if task.higher_is_better else -1.0
            best_peer = max(p, key=lambda k: sign * p[k])
            row["peers"] = p
            row["best_peer"] = best_peer
            row["beats_every_peer"] = all(sign * (mean - v) > 0 for v in p.values())
        rows.append(row)
        save(Path(args.out), row, seeds)
    total = time.perf_counter() - start
    print(table(json.loads(Path(args.out).read_text())["rows"]))
    print(f"total {total:.0f} s; wrote {args.out}")
    return 0


def save(path: Path, row: dict, seeds: list[int]) -> None:
    """Merge one task's row into ``path`` (rows of other tasks are kept)."""
    data = json.loads(path.read_text()) if path.exists() else {"rows": []}
    rows = [r for r in data["rows"] if r["task"] != row["task"]] + [row]
    order = tasks.names()
    rows.sort(key=lambda r: order.index(r["task"]) if r["task"] in order else len(order))
    data.update(machine=bench.machine(), python=platform.python_version(),
                torch=torch.__version__, seeds=seeds, rows=rows,
                date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    path.write_text(json.dumps(data, indent=1))


def table(rows: list[dict]) -> str:
    lines = ["| task | metric | tune (mean ± se) | schedules chosen | best constant LR result | "
             "regret vs constant (tol) | recipe oracle | regret vs recipe oracle | best peer "
             "rule (its full run) | beats every peer | cost (max, full runs) | range / confirm / "
             "final share |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        fams = ", ".join(f"{x['family']} {x['lr']:.2g}" for x in r["runs"])
        st = r["runs"][0]["stages"]
        tot = sum(st.values())
        share = " / ".join(f"{v / tot:.0%}" for k, v in st.items() if v)
        c = r.get("constant", {})
        peer = (f"{r['best_peer']} {r['peers'][r['best_peer']]:.4g}" if "best_peer" in r
                else "—")
        lines.append(
            f"| {r['task']} | {r['metric_name']} | {r['mean']:.4g} ± {r['se']:.2g} | {fams} | "
            f"{c.get('best', float('nan')):.4g} (lr {c.get('best_lr', float('nan')):.2g}) | "
            f"{r.get('regret_vs_constant', float('nan')):+.1%} "
            f"({'yes' if r.get('within_tol_of_constant') else 'NO'}, {r.get('tol', 0):.0%}) | "
            f"{r.get('oracle_best', float('nan')):.4g} | "
            f"{r.get('regret_vs_recipe_oracle', float('nan')):+.1%} | {peer} | "
            f"{'yes' if r.get('beats_every_peer') else ('—' if 'best_peer' not in r else 'NO')}"
            f" | {r['cost_runs_max']:.2f} | {share} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
