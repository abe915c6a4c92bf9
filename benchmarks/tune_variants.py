"""``lrkit tune`` on variants of the built-in tasks that no rule was designed on.

Each variant keeps a built-in task's data and model and changes what a user changes first: the
optimizer and the schedule. For each, an oracle grid of the variant's own recipe (13 LRs a
quarter decade apart, 3 seeds, extended while the best sits at an edge) and ``tune(task,
seed=s)`` with the defaults for seeds 0-2; tune's regret is against the oracle's best mean.

    python benchmarks/tune_variants.py                   # all five (~7 min on 2 cores)
    python benchmarks/tune_variants.py digits-sgd-step   # one

Writes ``benchmarks/results/tune-variants.json`` (oracles cached under
``benchmarks/results/variants/``).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lrkit import bench, tasks  # noqa: E402
from lrkit.tune import tune  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"

#: variant -> (built-in task, optimizer, default LR, optimizer kwargs, schedule, steps or None,
#: batch size or None)
VARIANTS = {
    "digits-sgd-step": ("digits", "sgd", 0.1, {"momentum": 0.9, "nesterov": True}, "step", None,
                        None),
    "mnist1d-adamw": ("mnist1d", "adamw", 1e-3, {"weight_decay": 0.01}, "cosine", 600, None),
    "charrnn-adam": ("charrnn", "adam", 1e-3, {}, "constant", None, None),
    "mnist5k-adam-cos": ("mnist5k", "adam", 1e-3, {}, "cosine", None, None),
    # large batch: 512 of digits' ~1,300 training images, so the range test's curve is smooth
    # and every step is close to a full-batch step
    "digits-bs512": ("digits", "sgd", 0.1, {"momentum": 0.9}, "constant", 150, 512),
}


def variant(name: str) -> tasks.Task:
    base, opt, lr, kwargs, schedule, steps, batch = VARIANTS[name]
    t = tasks.get(base)
    recipe = dataclasses.replace(t.recipe, optimizer=opt, default_lr=lr, optimizer_kwargs=kwargs,
                                 schedule=schedule, steps=steps or t.recipe.steps,
                                 batch_size=batch or t.recipe.batch_size)
    return dataclasses.replace(t, name=name, recipe=recipe,
                               description=f"{t.name}'s data and model, {opt} + {schedule}"
                               + (f", batch {batch}" if batch else ""))


# module-level factories, so that the oracle's worker processes can rebuild each variant
def digits_sgd_step() -> tasks.Task:
    return variant("digits-sgd-step")


def mnist1d_adamw() -> tasks.Task:
    return variant("mnist1d-adamw")


def charrnn_adam() -> tasks.Task:
    return variant("charrnn-adam")


def mnist5k_adam_cos() -> tasks.Task:
    return variant("mnist5k-adam-cos")


def digits_bs512() -> tasks.Task:
    return variant("digits-bs512")


def measure(name: str) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    o = bench.oracle(f"tune_variants:{name.replace('-', '_')}", points=13, step_decades=0.25,
                     seeds=(0, 1, 2), workers=2, cache_dir=RESULTS / "variants", progress=False)
    task = variant(name)
    runs = []
    for s in (0, 1, 2):
        with tempfile.TemporaryDirectory() as d:
            r = tune(task, seed=s, out=Path(d) / "run", progress=False)
        runs.append({"seed": s, "family": r.family, "lr": r.lr, "metric": r.metric,
                     "cost_runs": r.cost_runs})
        print(f"{name} seed {s}: {r.family} {r.lr:.3g} -> {r.metric:.4g}, "
              f"{r.cost_runs:.2f} runs", flush=True)
    mean = statistics.fmean(r["metric"] for r in runs)
    sign = -1.0 if task.higher_is_better else 1.0
    regret = sign * (mean - o.best_metric) / abs(o.best_metric)
    return {"variant": name, "description": task.description, "steps": task.recipe.steps,
            "oracle": {"best_lr": o.best_lr, "best": o.best_metric, "band": list(o.band),
                       "grid": list(o.grid), "mean": list(o.mean)},
            "tune": runs, "tune_mean": mean, "regret": regret,
            "within_tol": regret <= o.tol}


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    names = argv or list(VARIANTS)
    out = RESULTS / "tune-variants.json"
    old = json.loads(out.read_text()) if out.exists() else {}
    for n in names:
        old[n] = measure(n)
    out.write_text(json.dumps(old, indent=1))
    print("| variant | oracle best (lr) | tune mean | regret | within 1% | tune's picks |")
    print("|---|---|---|---|---|---|")
    for n, r in old.items():
        picks = ", ".join(f"{t['family']} {t['lr']:.2g}" for t in r["tune"])
        print(f"| {n} | {r['oracle']['best']:.4g} ({r['oracle']['best_lr']:.2g}) | "
              f"{r['tune_mean']:.4g} | {100 * r['regret']:+.1f}% | "
              f"{'yes' if r['within_tol'] else 'no'} | {picks} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
