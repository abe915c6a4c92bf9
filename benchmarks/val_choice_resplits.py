"""Is a choice made on validation biased on the held-out log-loss tasks? Random re-partitions.

Tune picks LRs above the full-run grid's best on the held-out tasks scored by test log-loss
(``heldout_fresh_seeds.py --resplit``: on digits 26-33 above against 7-8 below, on every
partition tried). Two causes are possible: the val split itself (a heavy-tailed mean over 299
examples: the argmin of noisy estimates favours the noisiest, most confident model), or tune's
short runs (a horizon too short to see a high LR's overconfidence). This separates them with
full runs, no short ones: each task's grid points within two of its best are trained once per
seed (seeds 0-1), their per-example test log-losses are taken on the pooled held-out examples
(val and test together), and for many random partitions of that pool the LR a full grid would
pick on val is compared with the one test ranks first. A val choice that is unbiased picks
above test's as often as below; ``--z`` adds the variance penalty ``mean + z x SE`` (an upper
confidence bound over the val examples) that would undo a noisy-winner bias.

    python benchmarks/val_choice_resplits.py --sets 0,1,2,3,4,5 --workers 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import heldout_random_tasks as H  # noqa: E402

from lrkit import train  # noqa: E402


def per_example(job: tuple) -> dict:
    """Per-example log-losses on val + test of full runs at the grid points near the best."""
    name, seed, arch, row, stored = job
    torch.set_num_threads(1)
    cfg, task = H.task_at(seed, row, arch)
    if cfg != stored["cfg"]:
        raise RuntimeError(f"{name} row {row}: the drawn task is not the stored one")
    d = H._data(cfg["data"])
    x = torch.cat([d["val"][0], d["test"][0]])
    y = torch.cat([d["val"][1], d["test"][1]])
    grid, b = stored["grid"], stored["grid"].index(stored["best_lr"])
    lrs = grid[max(0, b - 2):b + 3]
    short = max(1, round(SHORT * task.recipe.steps))
    return {"set": name, "row": row, "n_val": len(d["val"][0]), "lrs": lrs,
            "losses": np.array([_losses(task, lr, task.recipe.steps, x, y) for lr in lrs]),
            "short": np.array([_losses(task, lr, short, x, y) for lr in lrs])}


SHORT = 0.12  # a short run's share of the full run: tune's rung 1 at a budget of 2 runs


def _losses(task, lr: float, steps: int, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Per-example log-losses on ``x`` after ``steps`` of the recipe (its schedule rebuilt for
    that horizon) at ``lr``, the mean over seeds 0-1 (inf where a run diverged)."""
    per = []
    for s in (0, 1):
        train.seed_everything(s)
        model = task.build_model(s)
        opt = task.recipe.make_optimizer(model.parameters(), lr)
        sched = train._fit_momentum(task.recipe.make_schedule(lr, steps), opt)
        out = train.fit(model, opt, task.batches(s), num_steps=steps, step_fn=task.loss,
                        schedule=sched, grad_clip=task.recipe.grad_clip,
                        callbacks=[train.DivergenceStop(4.0, relative_to="initial", beta=0.9)])
        model.eval()
        with torch.no_grad():
            per.append(np.full(len(y), np.inf) if out.diverged else
                       F.cross_entropy(model(x), y, reduction="none").numpy())
    return np.mean(per, axis=0)


def compare(rows: list[dict], zs: list[float], partitions: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    rules = [(z, False) for z in zs] + [(0.0, True)]
    tally = {k: {"above": 0, "below": 0, "same": 0, "regret": []} for k in rules}
    for r in rows:
        ok = np.isfinite(r["losses"]).all(1)
        L, S = r["losses"][ok], np.where(np.isfinite(r["short"][ok]), r["short"][ok], 1e9)
        nv = r["n_val"]
        for _ in range(partitions):
            p = rng.permutation(L.shape[1])
            test = L[:, p[nv:]].mean(1)
            best = int(test.argmin())
            for z, short in rules:
                val = (S if short else L)[:, p[:nv]]
                pick = int((val.mean(1) + z * val.std(1, ddof=1) / np.sqrt(nv)).argmin())
                t = tally[(z, short)]
                t["above" if pick > best else "below" if pick < best else "same"] += 1
                t["regret"].append(test[pick] / test[best] - 1)
    out = [f"{len(rows)} tasks x {partitions} random partitions of their held-out examples",
           "", "| val's choice | above test's best LR | below | the same | test regret: median "
           "/ mean / within 5% |", "|---|---|---|---|---|"]
    for z, short in rules:
        t, reg = tally[(z, short)], np.array(tally[(z, short)]["regret"])
        rule = ("val mean" if z == 0 else f"val mean + {z:g} SE") + (
            f" of short runs ({SHORT:g} of the steps)" if short else " of full runs")
        out.append(f"| {rule} | {t['above']} | {t['below']} | {t['same']} | "
                   f"{100 * np.median(reg):+.1f}% / {100 * reg.mean():+.1f}% / "
                   f"{100 * np.mean(reg <= 0.05):.0f}% |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sets", default="0,1,2,3,4,5", help="MLP set seeds (random-N.json)")
    p.add_argument("--data", default="digits")
    p.add_argument("--partitions", type=int, default=300)
    p.add_argument("--z", default="0,0.5,1,2")
    p.add_argument("--workers", type=int, default=1)
    a = p.parse_args(argv)
    jobs = [(name, k, "mlp", row, st) for name, k, row, st in H.stored(
        a.sets, lambda c: c["scored"] == "cross_entropy" and c["data"] == a.data)]
    print(f"{len(jobs)} tasks ({a.data}, scored by test log-loss)", flush=True)
    rows = H.pooled(per_example, jobs, a.workers)
    print(compare(rows, [float(z) for z in a.z.split(",")], a.partitions))
    return 0


if __name__ == "__main__":
    sys.exit(main())
