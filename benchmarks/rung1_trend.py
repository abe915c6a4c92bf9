"""Would the trend of tune's own rung-1 curves correct its horizon? (Measured, not shipped.)

``horizon_trend.py`` found the best LR along constant-LR runs, ``eta*(t)``, falling with
``t``, and its trend extrapolated to the full length halving the short runs' bias on digits
scored by log-loss. This tries the trend where tune has it: tune runs on held-out tasks with
its run folder kept; along the rung-1 runs of the winning family (3-5 LRs, each with 10-12
val evaluations) ``eta*(t)`` is the vertex of a parabola in log-LR through the best LR at each
evaluation; a line through ``log eta*(t)`` against ``log t`` over the last three quarters of
the rung, carried to the full run's length (the shift clipped to one decade), moves tune's
final LR. Each LR is scored by the task's stored grid (its means interpolated in log-LR; a
proxy: the grid ran the recipe's family, tune's may differ), against the grid's best.

    python benchmarks/rung1_trend.py --data digits --scored cross_entropy --scored accuracy
    python benchmarks/rung1_trend.py --data mnist1d --data wine --data cancer \
        --data diabetes --scored cross_entropy --scored mse
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import heldout_random_tasks as H  # noqa: E402

import lrkit  # noqa: E402


def rung1(job: tuple) -> dict:
    """Tune once (seed ``seed``), keeping the rung-1 runs of the winning family."""
    name, k, row, stored, seed = job
    torch.set_num_threads(1)
    cfg, task = H.task_at(k, row, "mlp")
    with tempfile.TemporaryDirectory() as out:
        res = lrkit.tune(task, out=out, progress=False, seed=seed)
        trials = json.loads((Path(out) / "3-halving.json").read_text())["trials"]
    runs = [{"lr": t["lr"], "val": t["val_curve"]} for t in trials
            if t["rung"] == 1 and t["family"] == res.family and not t.get("no_warmup")
            and t.get("val_curve")]
    return {"set": name, "row": row, "seed": seed, "cfg": cfg,
            "higher_is_better": task.higher_is_better, "steps": task.recipe.steps,
            "grid": stored["grid"], "means": stored["means"], "tune_lr": res.lr, "runs": runs}


def _vertex(x: np.ndarray, v: np.ndarray) -> float:
    i = int(v.argmin())
    if 0 < i < len(v) - 1:
        a, b, _ = np.polyfit(x[i - 1:i + 2], v[i - 1:i + 2], 2)
        if a > 0:
            return float(np.clip(-b / (2 * a), x[i - 1], x[i + 1]))
    return float(x[i])


def shift(row: dict) -> float | None:
    """The trend's move of the final LR, in decades (``None``: fewer than 3 LRs or 4 points)."""
    at: dict[int, dict[float, float]] = {}
    for r in row["runs"]:
        for step, v in r["val"]:
            at.setdefault(step, {})[r["lr"]] = float(str(v).replace("Infinity", "inf"))
    lrs = sorted({r["lr"] for r in row["runs"]})
    if len(lrs) < 3:
        return None
    sign = -1.0 if row["higher_is_better"] else 1.0
    ts, best = [], []
    for step in sorted(at):
        if len(at[step]) == len(lrs):
            v = np.array([sign * at[step][lr] for lr in lrs])
            ts.append(step)
            best.append(_vertex(np.log10(lrs), np.where(np.isfinite(v), v, 1e9)))
    ts_a, best_a = np.array(ts), np.array(best)
    keep = ts_a >= ts_a.max() / 4 if len(ts_a) else ts_a
    if keep.sum() < 4:
        return None
    slope = np.polyfit(np.log10(ts_a[keep]), best_a[keep], 1)[0]
    return float(np.clip(slope * np.log10(row["steps"] / ts_a.max()), -1.0, 1.0))


def regret(row: dict, lr: float) -> float:
    hib, means = row["higher_is_better"], np.array(row["means"], dtype=float)
    worst = 0.0 if hib else np.nanmax(np.where(np.isfinite(means), means, np.nan)) * 10
    m = np.interp(np.log10(lr), np.log10(row["grid"]), np.where(np.isfinite(means), means,
                                                                worst))
    best = np.nanmax(means) if hib else np.nanmin(np.where(np.isfinite(means), means, np.nan))
    return float(((best - m) if hib else (m - best)) / abs(best))


def table(rows: list[dict]) -> str:
    out = ["| data (metric) | runs | tune: median regret / within 5% | with the trend | trend's "
           "move (median, decades) | runs better / worse by > 0.5% |", "|---|---|---|---|---|---|"]
    for key in sorted({(r["cfg"]["data"], r["cfg"]["scored"]) for r in rows}):
        g = [(r, shift(r)) for r in rows if (r["cfg"]["data"], r["cfg"]["scored"]) == key]
        g = [(r, s) for r, s in g if s is not None]
        if not g:
            continue
        before = np.array([regret(r, r["tune_lr"]) for r, _ in g])
        after = np.array([regret(r, r["tune_lr"] * 10 ** s) for r, s in g])
        out.append(f"| {key[0]} ({key[1]}) | {len(g)} | {100 * np.median(before):+.1f}% / "
                   f"{np.sum(before <= 0.05)} | {100 * np.median(after):+.1f}% / "
                   f"{np.sum(after <= 0.05)} | {np.median([s for _, s in g]):+.2f} | "
                   f"{np.sum(after < before - 0.005)} / {np.sum(after > before + 0.005)} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", action="append", required=True)
    p.add_argument("--scored", action="append", required=True)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help="keep the rung-1 curves (JSON)")
    a = p.parse_args(argv)
    jobs = [job + (s,) for job in H.stored("0,1,2,3,4,5", lambda c: c["data"] in a.data
                                               and c["scored"] in a.scored) for s in (0, 1)]
    print(table(H.pooled(rung1, jobs, a.workers, a.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
