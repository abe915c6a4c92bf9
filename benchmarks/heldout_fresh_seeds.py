"""Tune's held-out regret without the grid's winner's curse: both sides re-run on fresh seeds.

``heldout_random_tasks.py`` scores tune (seeds 0-1) against the best mean of a grid of full
runs on the *same* seeds 0-1. That best is the minimum over 11 noisy means, so it is biased
towards the luck of those seeds (the winner's curse), and the bias is largest where the noise
between seeds is large against the differences between LRs: a test log-loss on a few hundred
examples. Here the grid's best LR, chosen on seeds 0-1 as before, and tune are both run again
on seeds the grid never saw (default 2-3, paired: the same initial weights and batches for
both), so neither side is scored on the data that chose it:

    regret = (tune on seeds 2-3) against (a full run at the grid's best LR on seeds 2-3)

and the grid's best on seeds 0-1 against the same LR on seeds 2-3 measures the curse itself.
Each task's paired differences give its noise: a task is *within noise* when the mean paired
gap is at most twice its standard error (two seeds: half their difference), an honest if
coarse reading. Nothing here is fitted.

    python benchmarks/heldout_fresh_seeds.py results/heldout/random-{0,1,2,3,4,5}.json \
        results/heldout/cnn-1{0,1,2,3,4,5}.json --scored cross_entropy --workers 15 \
        --out results/heldout/fresh-seeds-ce.json
    python benchmarks/heldout_fresh_seeds.py --summary results/heldout/fresh-seeds-ce.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import heldout_random_tasks as H  # noqa: E402

import lrkit  # noqa: E402
from lrkit import bench, train  # noqa: E402


def _set_of(path: Path) -> tuple[int, str]:
    """``random-3.json`` -> (3, "mlp"), ``cnn-13.json`` -> (13, "cnn"), ``seq-20`` -> (20, "seq")."""
    m = re.fullmatch(r"(random|cnn|seq)-(\d+)\.json", path.name)
    if m is None:
        raise SystemExit(f"{path}: expected a set file named random-N.json, cnn-N.json or "
                         "seq-N.json (the set's seed names its tasks)")
    return int(m.group(2)), {"random": "mlp", "cnn": "cnn", "seq": "seq"}[m.group(1)]


def measure(job: tuple) -> dict:
    """One task: the grid's best LR and tune, each on the fresh seeds."""
    name, seed, arch, row, stored, seeds = job
    torch.set_num_threads(1)
    cfg, task = H.task_at(seed, row, arch)
    if cfg != stored["cfg"]:
        raise RuntimeError(f"{name} row {row}: the drawn task is not the stored one")
    start = time.perf_counter()
    grid = [train.run(task, stored["best_lr"], seed=s, eval_split="test").metric for s in seeds]
    tunes = []
    for s in seeds:
        with tempfile.TemporaryDirectory() as out:
            t = lrkit.tune(task, out=out, progress=False, seed=s)
        tunes.append({"family": t.family, "lr": t.lr, "metric": t.metric,
                      "cost_runs": t.cost_runs})
    return {"set": name, "row": row, "cfg": cfg, "higher_is_better": task.higher_is_better,
            "seeds": list(seeds), "best_lr": stored["best_lr"], "best_stored": stored["best"],
            "regret_stored": stored["regret"], "grid_fresh": grid, "tune": tunes,
            "grid_mean": bench._mean_or_worst(task, grid),
            "tune_mean": bench._mean_or_worst(task, [t["metric"] for t in tunes]),
            "wall": time.perf_counter() - start}


def measure_resplit(job: tuple) -> dict:
    """One task on another val/test partition of its held-out examples (``H.RESPLIT``): the
    grid's points within ``REACH`` of the stored best, re-scored on the new test split (the
    same trained models: the train split does not move), and tune, which now chooses on the
    new val split; seeds 0-1 as stored."""
    name, seed, arch, row, stored, resplit = job
    torch.set_num_threads(1)
    H.RESPLIT = resplit
    cfg, task = H.task_at(seed, row, arch)
    if cfg != stored["cfg"]:
        raise RuntimeError(f"{name} row {row}: the drawn task is not the stored one")
    start = time.perf_counter()
    grid = stored["grid"]
    b = grid.index(stored["best_lr"])
    ks = range(max(0, b - REACH), min(len(grid), b + REACH + 1))
    means = {grid[k]: bench._mean_or_worst(task, [train.run(task, grid[k], seed=s,
                                                            eval_split="test").metric
                                                  for s in (0, 1)]) for k in ks}
    sign = 1.0 if task.higher_is_better else -1.0
    best_lr = max(means, key=lambda lr: sign * means[lr])
    tunes = []
    for s in (0, 1):
        with tempfile.TemporaryDirectory() as out:
            t = lrkit.tune(task, out=out, progress=False, seed=s)
        tunes.append({"family": t.family, "lr": t.lr, "metric": t.metric})
    tm = bench._mean_or_worst(task, [t["metric"] for t in tunes])
    return {"set": name, "row": row, "cfg": cfg, "resplit": resplit,
            "higher_is_better": task.higher_is_better, "means": means, "best_lr": best_lr,
            "best": means[best_lr], "best_at_edge": best_lr in (grid[ks[0]], grid[ks[-1]]),
            "stored_best_lr": stored["best_lr"], "regret_stored": stored["regret"],
            "stored_tune_lrs": [t["lr"] for t in stored["tune"]], "tune": tunes, "tune_mean": tm,
            "regret": bench.regret(tm, means[best_lr], higher_is_better=task.higher_is_better),
            "wall": time.perf_counter() - start}


def _decades(lrs: list[float], best: float) -> float:
    """How far the geometric mean of ``lrs`` lies above ``best``, in decades."""
    return float(np.mean(np.log10(lrs)) - np.log10(best))


REACH = 2  # grid points each side of the stored best re-scored on a new partition


def resplit_summary(rows: list[dict]) -> str:
    """Per data set and partition: tune's regret, and where its LR lies against the best."""
    out = ["| data (metric) | partition | tasks | tune: median regret / within 5% | tune's LR "
           "above / below the partition's best by > 0.25 decades |", "|---|---|---|---|---|"]
    keys = sorted({(r["cfg"]["data"], r["cfg"]["scored"]) for r in rows})
    for data, metric in keys:
        g = [r for r in rows if (r["cfg"]["data"], r["cfg"]["scored"]) == (data, metric)]
        tasks = sorted({(r["set"], r["row"]) for r in g})
        first = [next(r for r in g if (r["set"], r["row"]) == t) for t in tasks]
        stored = [r["regret_stored"] for r in first]
        side = [_decades(r["stored_tune_lrs"], r["stored_best_lr"]) for r in first]
        out.append(f"| {data} ({metric}) | the measured one | {len(tasks)} | "
                   f"{100 * statistics.median(stored):+.1f}% / {sum(x <= 0.05 for x in stored)}"
                   f" | {sum(x > 0.25 for x in side)} / {sum(x < -0.25 for x in side)} |")
        for k in sorted({r["resplit"] for r in g}):
            gk = [r for r in g if r["resplit"] == k]
            reg = [r["regret"] for r in gk]
            side = [_decades([t["lr"] for t in r["tune"]], r["best_lr"]) for r in gk]
            out.append(f"| | {k} | {len(gk)} | {100 * statistics.median(reg):+.1f}% / "
                       f"{sum(x <= 0.05 for x in reg)} | {sum(x > 0.25 for x in side)} / "
                       f"{sum(x < -0.25 for x in side)} |")
    return "\n".join(out)


def _worse(row: dict) -> list[float]:
    """Tune's paired gap per seed, positive when tune is worse (the metric's own units)."""
    sign = -1.0 if row["higher_is_better"] else 1.0
    return [sign * (t["metric"] - g) for t, g in zip(row["tune"], row["grid_fresh"])]


def scores(row: dict) -> dict:
    hib, tune, grid = row["higher_is_better"], row["tune_mean"], row["grid_mean"]
    gaps = _worse(row)
    mean = float(np.mean(gaps))
    se = float(np.std(gaps, ddof=1) / np.sqrt(len(gaps))) if len(gaps) > 1 else float("inf")
    return {"regret_fresh": bench.regret(tune, grid, higher_is_better=hib),
            "curse": bench.regret(row["best_stored"], grid, higher_is_better=not hib),
            "gap": mean, "se": se, "within_noise": bool(mean <= 2 * se)}


def summary(rows: list[dict]) -> str:
    out = ["| metric scored | tasks | stored: median regret / within 5% | fresh seeds: median "
           "regret / within 5% | within the paired noise | tune better | the grid's best LR "
           "on fresh seeds, worse than on its own by (median) |", "|---|---|---|---|---|---|---|"]
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["cfg"]["scored"], []).append(r)
    for metric in sorted(by) + ["all"]:
        g = rows if metric == "all" else by[metric]
        sc = [scores(r) for r in g]
        st = [r["regret_stored"] for r in g]
        fr = [s["regret_fresh"] for s in sc]
        out.append(
            f"| {metric} | {len(g)} | {100 * statistics.median(st):+.1f}% / "
            f"{sum(x <= 0.05 for x in st)} | {100 * statistics.median(fr):+.1f}% / "
            f"{sum(x <= 0.05 for x in fr)} | {sum(s['within_noise'] for s in sc)} | "
            f"{sum(s['gap'] < 0 for s in sc)} | "
            f"{100 * statistics.median(s['curse'] for s in sc):+.1f}% |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sets", nargs="*", type=Path, help="stored set files (random-N.json, cnn-N.json)")
    p.add_argument("--scored", action="append", default=None,
                   help="only tasks scored by this metric (repeatable)")
    p.add_argument("--seeds", default="2,3")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--limit", type=int, default=None, help="only the first N tasks (a trial)")
    p.add_argument("--data", action="append", default=None,
                   help="only tasks on this data set (repeatable: digits, wine, cancer, ...)")
    p.add_argument("--resplit", default=None,
                   help="comma-separated partition seeds: re-partition each task's held-out "
                        "examples into val and test, tune and re-score the grid there "
                        "(scikit-learn data only: mnist1d's split is the package's)")
    p.add_argument("--summary", type=Path, nargs="*", default=None,
                   help="print the table of stored result files and stop")
    a = p.parse_args(argv)
    if a.summary:
        rows = [r for f in a.summary for r in json.loads(f.read_text())]
        print(resplit_summary(rows) if "resplit" in rows[0] else summary(rows))
        return 0
    if not a.sets or a.out is None:
        p.error("give the set files and --out (or --summary FILES)")
    seeds = tuple(int(s) for s in a.seeds.split(","))
    jobs = []
    for path in a.sets:
        seed, arch = _set_of(path)
        for row, stored in enumerate(json.loads(path.read_text())):
            if ((a.scored is None or stored["cfg"]["scored"] in a.scored)
                    and (a.data is None or stored["cfg"]["data"] in a.data)):
                if a.resplit is None:
                    jobs.append((path.stem, seed, arch, row, stored, seeds))
                else:
                    jobs += [(path.stem, seed, arch, row, stored, int(k))
                             for k in a.resplit.split(",")]
    # the log-loss tasks first, conv nets first among them: the slowest and most wanted first
    jobs.sort(key=lambda j: (j[4]["cfg"]["scored"] != "cross_entropy", j[2] != "cnn"))
    jobs = jobs[:a.limit]
    print(f"{len(jobs)} tasks, seeds {seeds}, {a.workers} worker(s)", flush=True)
    rows = []
    with mp.get_context("fork").Pool(a.workers) as pool:
        for r in pool.imap_unordered(measure if a.resplit is None else measure_resplit, jobs):
            rows.append(r)
            if a.resplit is None:
                s = scores(r)
                print(f"{r['set']:>10} row {r['row']:>2} {r['cfg']['scored']:>13}: stored "
                      f"{100 * r['regret_stored']:+7.1f}%  fresh "
                      f"{100 * s['regret_fresh']:+7.1f}%  gap {s['gap']:+.4f} ± {s['se']:.4f}"
                      f"  ({r['wall']:.0f} s)", flush=True)
            else:
                print(f"{r['set']:>10} row {r['row']:>2} {r['cfg']['data']:>7} partition "
                      f"{r['resplit']}: stored {100 * r['regret_stored']:+7.1f}%  here "
                      f"{100 * r['regret']:+7.1f}%  ({r['wall']:.0f} s)", flush=True)
            a.out.write_text(json.dumps(sorted(rows, key=lambda r: (r["set"], r["row"],
                                                                    r.get("resplit", 0))),
                                        separators=(",", ":")))
    print(summary(rows) if a.resplit is None else resplit_summary(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
