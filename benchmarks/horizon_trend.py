"""How far does the best LR of a short run lie from a full run's, and does its trend tell?

For the digits MLPs of the held-out sets (scored by test log-loss or accuracy), constant-LR
runs at the grid points within three of the stored best (seeds 0-1, the recipe's optimizer,
no schedule) are scored on val and test at 16 points of the run (geometric, 2% to 100% of the
steps). At each point the best LR (the vertex of a parabola in log-LR through the best grid
point and its neighbours) is ``eta*(t)``. Compared with the test's best at the full length:

- ``short``: val's ``eta*`` at 12% of the steps (tune's rung 1 at a budget of 2 runs);
- ``extrap``: a line through val's ``log eta*(t)`` against ``log t`` over 3-12% of the steps,
  extrapolated to the full length (clipped to the LRs tried);
- ``extrap_half``: half that slope (a damped extrapolation);
- ``full_val``: val's ``eta*`` at the full length (a full grid chosen on val).

    python benchmarks/horizon_trend.py --workers 2     # about 5 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import heldout_random_tasks as H  # noqa: E402

from lrkit import train  # noqa: E402

SHORT = 0.12


def curves(job: tuple) -> dict:
    """Val and test metrics along constant-LR runs at the grid points near the best."""
    name, seed, row, stored = job
    torch.set_num_threads(1)
    cfg, task = H.task_at(seed, row, "mlp")
    grid, b = stored["grid"], stored["grid"].index(stored["best_lr"])
    n = task.recipe.steps
    at = sorted({int(round(n * f)) for f in np.geomspace(0.02, 1, 16)})
    res = {}
    for lr in grid[max(0, b - 3):b + 4]:
        per = []
        for s in (0, 1):
            train.seed_everything(s)
            model = task.build_model(s)
            opt = task.recipe.make_optimizer(model.parameters(), lr)
            batches, step, dead, val, test = task.batches(s), 0, False, [], []
            model.train()
            for t in at:
                while step < t and not dead:
                    opt.zero_grad()
                    loss = task.loss(model, next(batches))
                    dead = not torch.isfinite(loss) or loss.item() > 50
                    if not dead:
                        loss.backward()
                        opt.step()
                        step += 1
                if dead:
                    val.append(np.inf)
                    test.append(np.inf)
                    continue
                model.eval()
                with torch.no_grad():
                    val.append(task.score(model, "val"))
                    test.append(task.score(model, "test"))
                model.train()
            per.append((val, test))
        res[lr] = (np.mean([p[0] for p in per], 0).tolist(),
                   np.mean([p[1] for p in per], 0).tolist())
    return {"set": name, "row": row, "cfg": cfg, "at": at, "steps": n,
            "higher_is_better": task.higher_is_better, "lrs": list(res),
            "val": [res[lr][0] for lr in res], "test": [res[lr][1] for lr in res]}


def best_log_lr(lrs: list[float], values: np.ndarray, higher_is_better: bool) -> float:
    v = np.where(np.isfinite(values), values * (-1.0 if higher_is_better else 1.0), 1e9)
    i, x = int(v.argmin()), np.log10(lrs)
    if 0 < i < len(v) - 1 and max(v[i - 1], v[i + 1]) < 1e8:
        a, b, _ = np.polyfit(x[i - 1:i + 2], v[i - 1:i + 2], 2)
        if a > 0:
            return float(np.clip(-b / (2 * a), x[i - 1], x[i + 1]))
    return float(x[i])


def errors(row: dict) -> dict[str, float]:
    """Each rule's ``log10(pick / test's best at the full length)``."""
    lrs, at, n, hib = row["lrs"], np.array(row["at"]), row["steps"], row["higher_is_better"]
    val, test = np.array(row["val"]), np.array(row["test"])
    true = best_log_lr(lrs, test[:, -1], hib)
    idx = [j for j, t in enumerate(at) if t <= SHORT * n * 1.01]
    ts = at[idx]
    best_t = np.array([best_log_lr(lrs, val[:, j], hib) for j in idx])
    short = best_t[-1]
    ext = ext_half = short
    sel = ts >= SHORT * n / 4
    if sel.sum() >= 2:
        slope, icpt = np.polyfit(np.log10(ts[sel]), best_t[sel], 1)
        lo, hi = np.log10(lrs[0]), np.log10(lrs[-1])
        ext = float(np.clip(icpt + slope * np.log10(n), lo, hi))
        ext_half = float(np.clip(short + 0.5 * slope * np.log10(n / ts[-1]), lo, hi))
    full = best_log_lr(lrs, val[:, -1], hib)
    return {"short": short - true, "extrap": ext - true, "extrap_half": ext_half - true,
            "full_val": full - true}


def table(rows: list[dict]) -> str:
    out = ["| metric scored | rule | tasks | bias (median, decades) | median error | within "
           "0.25 decades | above / below by > 0.25 |", "|---|---|---|---|---|---|---|"]
    for metric in ("cross_entropy", "accuracy"):
        errs = [errors(r) for r in rows if r["cfg"]["scored"] == metric]
        for rule in ("short", "extrap", "extrap_half", "full_val"):
            e = np.array([x[rule] for x in errs])
            out.append(f"| {metric} | {rule} | {len(e)} | {np.median(e):+.2f} | "
                       f"{np.median(abs(e)):.2f} | {np.mean(abs(e) <= 0.25):.0%} | "
                       f"{np.sum(e > 0.25)} / {np.sum(e < -0.25)} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sets", default="0,1,2,3,4,5")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="keep the curves (JSON)")
    a = p.parse_args(argv)
    jobs = H.stored(a.sets, lambda c: c["data"] == "digits"
                    and c["scored"] in ("cross_entropy", "accuracy"))
    print(table(H.pooled(curves, jobs, a.workers, a.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
